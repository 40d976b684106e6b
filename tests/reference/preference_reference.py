"""Reference vectors for mllm's reference-free preference stages, orpo and simpo
(tests/train/test_preference.cpp).

An independent implementation of the formulas of TRL v0.21.0, written from
trl/trainer/orpo_trainer.py (ORPOTrainer.odds_ratio_loss, concatenated_forward: the chosen NLL over
the whole chosen sequence where the attention mask is 1, get_batch_logps with average_log_prob,
get_batch_loss_metrics: loss = nll - mean(beta * log sigmoid(log_odds))) and
trl/trainer/cpo_trainer.py (CPOTrainer.cpo_loss with loss_type "simpo", concatenated_forward: the
chosen NLL over the chosen labels, average_log_prob for simpo, get_batch_loss_metrics: loss =
mean(losses) + cpo_alpha * nll), and the papers (Hong et al. 2024, eqs. 4-7; Meng et al. 2024,
eq. 6). One adaptation for a multimodal model, which mllm makes too: image placeholder positions
are not text, so the ORPO sequence NLL leaves them out, as transformers' LLaVA labels them -100.
Run with Debian's torch:

    /usr/bin/python3 tests/reference/preference_reference.py   # writes tests/fixtures/preference/vectors.json
"""
import json
import os

import torch
import torch.nn.functional as F

IMAGE_ID = 3


def batch_logps(logits, labels, average):
    # Position t predicts labels[t+1]; -100 labels carry no loss.
    logits = logits[:, :-1, :]
    labels = labels[:, 1:].clone()
    mask = labels != -100
    labels[~mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    total = (per_token * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def mean_nll(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1, :].reshape(-1, V), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def rewards(beta, c, r):
    cr, rr = beta * c, beta * r
    return {
        "rewards/chosen": cr.mean().item(),
        "rewards/rejected": rr.mean().item(),
        "rewards/accuracies": (cr > rr).double().mean().item(),
        "rewards/margins": (cr - rr).mean().item(),
        "logps/chosen": c.mean().item(),
        "logps/rejected": r.mean().item(),
    }


def orpo(logits, labels, input_ids, attention, P, beta):
    logps = batch_logps(logits, labels, True)
    c, r = logps[:P], logps[P:]
    seq = torch.where(attention == 1, input_ids, torch.full_like(input_ids, -100))
    seq[input_ids == IMAGE_ID] = -100
    nll = mean_nll(logits[:P], seq[:P])
    log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
    ratio = F.logsigmoid(log_odds)
    out = rewards(beta, c, r)
    out.update({"loss": (nll - (beta * ratio).mean()).item(), "nll_loss": nll.item(),
                "log_odds_ratio": ratio.mean().item(), "log_odds_chosen": log_odds.mean().item()})
    return out, logps, nll.item()


def simpo(logits, labels, P, beta, gamma, cpo_alpha, label_smoothing):
    logps = batch_logps(logits, labels, True)
    c, r = logps[:P], logps[P:]
    z = (c - r) - gamma / beta
    losses = (-F.logsigmoid(beta * z) * (1 - label_smoothing)
              - F.logsigmoid(-beta * z) * label_smoothing)
    out = rewards(beta, c, r)
    loss = losses.mean()
    nll = mean_nll(logits[:P], labels[:P])
    if cpo_alpha > 0:
        loss = loss + cpo_alpha * nll
        out["nll_loss"] = nll.item()
    out["loss"] = loss.item()
    return out, logps, nll.item()


def main():
    g = torch.Generator().manual_seed(11)
    P, T, V = 4, 10, 13
    cases = []
    settings = [("orpo", {"beta": 0.1}), ("orpo", {"beta": 0.5}),
                ("simpo", {"beta": 2.0, "gamma": 1.0, "cpo_alpha": 0.0, "label_smoothing": 0.0}),
                ("simpo", {"beta": 2.5, "gamma": 1.375, "cpo_alpha": 0.5, "label_smoothing": 0.1}),
                ("simpo", {"beta": 0.1, "gamma": 0.5, "cpo_alpha": 1.0, "label_smoothing": 0.0})]
    for stage, cfg in settings:
        logits = torch.randn(2 * P, T, V, generator=g, dtype=torch.float64) * 2
        input_ids = torch.randint(4, V, (2 * P, T), generator=g)
        attention = torch.ones(2 * P, T, dtype=torch.long)
        labels = input_ids.clone()
        for row in range(2 * P):  # [BOS][image x2][prompt], the reply, then right padding
            prompt = 4 + row % 3
            pad = row % 3
            input_ids[row, 1:3] = IMAGE_ID
            labels[row, :prompt] = -100
            if pad:
                input_ids[row, T - pad:] = 0
                labels[row, T - pad:] = -100
                attention[row, T - pad:] = 0
        if stage == "orpo":
            expected, logps, nll = orpo(logits, labels, input_ids, attention, P, cfg["beta"])
        else:
            expected, logps, nll = simpo(logits, labels, P, cfg["beta"], cfg["gamma"],
                                         cfg["cpo_alpha"], cfg["label_smoothing"])
        cases.append({"stage": stage, "config": cfg, "P": P, "T": T, "V": V,
                      "image_token_id": IMAGE_ID, "logits": logits.flatten().tolist(),
                      "input_ids": input_ids.flatten().tolist(),
                      "attention_mask": attention.flatten().tolist(),
                      "labels": labels.flatten().tolist(), "logps": logps.tolist(), "nll": nll,
                      "expected": expected})
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "fixtures", "preference", "vectors.json")
    with open(path, "w") as f:
        json.dump({"generator": "tests/reference/preference_reference.py", "trl": "v0.21.0",
                   "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
