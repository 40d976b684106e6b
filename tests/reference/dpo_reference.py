"""Reference vectors for mllm's DPO loss (tests/train/test_dpo.cpp).

An independent implementation of TRL's published DPO formulas, written from TRL's
DPOTrainer (trl/trainer/dpo_trainer.py: `dpo_loss` for loss_type sigmoid / hinge / ipo and
`concatenated_forward`'s log-probability of the response tokens, summed, or averaged per token for
ipo) and the DPO paper (Rafailov et al. 2023, eq. 7). Run with Debian's torch:

    /usr/bin/python3 tests/reference/dpo_reference.py   # writes tests/fixtures/dpo/vectors.json
"""
import json
import os

import torch
import torch.nn.functional as F


def response_logps(logits, labels, average):
    # Position t predicts labels[t+1]; -100 labels carry no loss.
    logits = logits[:, :-1, :].double()
    labels = labels[:, 1:].clone()
    mask = labels != -100
    labels[~mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    total = (per_token * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def dpo(pc, pr, rc, rr, beta, loss_type, label_smoothing):
    h = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    chosen = beta * (pc - rc)
    rejected = beta * (pr - rr)
    return {
        "loss": losses.mean().item(),
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": (chosen > rejected).double().mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "logps/chosen": pc.mean().item(),
        "logps/rejected": pr.mean().item(),
    }


def main():
    g = torch.Generator().manual_seed(7)
    B, T, V = 4, 9, 11
    cases = []
    for loss_type, beta, eps in [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("hinge", 0.1, 0.0),
                                 ("hinge", 2.0, 0.0), ("ipo", 0.1, 0.0), ("ipo", 0.5, 0.0)]:
        # Rows 0..B-1 chosen, B..2B-1 rejected, as one concatenated forward gives them.
        policy = torch.randn(2 * B, T, V, generator=g, dtype=torch.float64) * 2
        ref = torch.randn(2 * B, T, V, generator=g, dtype=torch.float64) * 2
        labels = torch.randint(0, V, (2 * B, T), generator=g)
        for row in range(2 * B):  # a prompt of varying length, then right padding
            prompt = 2 + row % 3
            labels[row, :prompt] = -100
            labels[row, T - (row % 2):] = -100
        average = loss_type == "ipo"
        pl = response_logps(policy, labels, average)
        rl = response_logps(ref, labels, average)
        out = dpo(pl[:B], pl[B:], rl[:B], rl[B:], beta, loss_type, eps)
        cases.append({
            "loss_type": loss_type, "beta": beta, "label_smoothing": eps, "B": B, "T": T, "V": V,
            "policy_logits": policy.flatten().tolist(), "ref_logits": ref.flatten().tolist(),
            "labels": labels.flatten().tolist(),
            "policy_logps": pl.tolist(), "ref_logps": rl.tolist(), "expected": out,
        })
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "fixtures", "dpo", "vectors.json")
    with open(path, "w") as f:
        json.dump({"generator": "tests/reference/dpo_reference.py", "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
