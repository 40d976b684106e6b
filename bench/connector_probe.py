#!/usr/bin/env python3
"""Do the resampler's 9 tokens keep each ShapesWorld cell's object bound, one cell per token?

bench/tower_probe.py finds each cell's colour, size and kind in the tower's features at the layer
the connector reads. This reads a stage's final/ folder (stage 1 or 2 of scripts/demo: the tower,
and the resampler of configs/shapes/stage1_pretrain.yaml as src/models/connectors/resampler.cpp
computes it, written again here in plain PyTorch) and reports, on held-out scenes:

- where each query looks: its attention mass (mean over heads) on each cell's patches;
- linear probes for each cell's colour / kind / size (or empty) from that cell's own token, and
  from all 9 tokens together. Own-token scores near the tower's mean the tokens are per-cell and
  bound; all-token scores far above own-token scores mean the information is there but spread.

  python3 bench/connector_probe.py runs/demo-*/stage1/final data/shapes

Measured 2026-12-06 on stage 1 of configs/shapes/stage1_pretrain.yaml (the 9-query resampler
reading every patch): the queries do not keep to cells — two of them look at the top-left
corner, three spread over the whole image, none at the centre — and a cell's colour / kind / size
is read from its own token at 0.44 / 0.34 / 0.51 and from all 9 tokens at 0.81 / 0.74 / 0.86,
where the tower's cell features give 0.99 / 0.86 / 0.98: the connector mixes the cells' objects.
"""
import json
import sys

import torch

from tower_probe import ATTRIBUTES, Tower, labels_of, probe, read_safetensors, scenes


def sincos_2d(coords, dim):
    """(G*G, dim), row-major over cells: [0, dim/2) the column, [dim/2, dim) the row, each half
    [sin(pos w_i), cos(pos w_i)], w_i = 10000^(-i / (dim/4)) (as the resampler's table)."""
    quarter, G = dim // 4, coords.numel()
    freq = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)

    def encode(pos):
        angle = pos[:, None] * freq[None]
        return torch.cat([angle.sin(), angle.cos()], 1)

    rows = coords[:, None].expand(G, G).reshape(-1)
    cols = coords[None, :].expand(G, G).reshape(-1)
    return torch.cat([encode(cols), encode(rows)], 1).float()


def resampler(W, c, features, patch_side):
    """(tokens (N,Q,C), attention (N,heads,Q,P)) of multi_modal_projector.* over (N,P,Cv)."""
    p = "multi_modal_projector."
    query = W[p + "query"]
    Q, H = query.shape
    heads, D = c["heads"], H // c["heads"]
    side = int(round(Q ** 0.5))

    def ln(x, name):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], W[p + name + ".weight"],
                                              W[p + name + ".bias"], 1e-6)

    def lin(x, name):
        return x @ W[p + name + ".weight"].T + W.get(p + name + ".bias", 0)

    x = features @ W[p + "kv_proj.weight"].T if p + "kv_proj.weight" in W else features
    x = ln(x, "ln_kv")
    query_pos = sincos_2d(torch.arange(side, dtype=torch.float64), H)
    patch = (torch.arange(patch_side, dtype=torch.float64) + 0.5) * (side / patch_side) - 0.5
    keys = x + sincos_2d(patch, H)
    values = keys if c.get("value_positions") else x
    q = (ln(query, "ln_q") + query_pos)[None].expand(x.size(0), -1, -1)
    N, P = x.shape[:2]
    q = lin(q, "attn.q_proj").view(N, Q, heads, D).transpose(1, 2)
    k = lin(keys, "attn.k_proj").view(N, P, heads, D).transpose(1, 2)
    v = lin(values, "attn.v_proj").view(N, P, heads, D).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / D ** 0.5
    if c.get("window", 0) > 0:  # each query only within `window` query cells of its own
        query_coords = torch.arange(side, dtype=torch.float64)
        near = (query_coords[:, None] - patch[None]).abs() <= c["window"] + 1e-9  # (Gq, Gp)
        allowed = (near[:, None, :, None] & near[None, :, None, :]).reshape(Q, P)
        scores = scores.masked_fill(~allowed, float("-inf"))
    a = torch.softmax(scores, -1)
    y = lin((a @ v).transpose(1, 2).reshape(N, Q, H), "attn.out_proj")
    return ln(y, "ln_post") @ W[p + "proj.weight"].T, a


def main():
    torch.set_num_threads(2)
    folder, data = sys.argv[1], sys.argv[2]
    config = json.load(open(folder + "/config.json"))
    connector = config["mllm_connector"]
    assert connector["type"] == "resampler", connector["type"]
    W = read_safetensors(folder + "/model.safetensors")
    tower = Tower(W, config["vision_config"], "vision_tower.")
    side = tower.config["image_size"] // tower.config["patch_size"]
    per_cell = side // 3
    layer = config.get("vision_feature_layer", -2)
    tokens, cells, mass = [], [], torch.zeros(9, 9)
    with torch.no_grad():
        for pixels, part in scenes(data, 6000):
            features = tower.hidden_states(pixels)[layer][:, 1:]
            t, a = resampler(W, connector, features, side)
            tokens.append(t)
            cells += part
            # attention mass of each query on each cell: (N,heads,Q,9x9) -> (Q, 3,3 cells)
            grid = a.mean(1).reshape(a.size(0), a.size(2), 3, per_cell, 3, per_cell)
            mass += grid.sum((3, 5)).reshape(a.size(0), a.size(2), 9).sum(0)
    tokens = torch.cat(tokens)  # N, Q, C
    N, Q = tokens.shape[:2]
    mass /= N
    print("attention mass of each query (rows) on each cell (columns), mean over scenes and heads:")
    for q in range(Q):
        print(f"  query {q}: " + " ".join(f"{m:.2f}" for m in mass[q]))
    split = int(N * 0.8)
    for attribute, index in ATTRIBUTES:
        y, names = labels_of(cells, index)  # (N, 9)
        empty = names.index("empty")
        own, every = [], []
        for cell in range(9):
            target = y[:, cell]
            occupied = target[split:] != empty
            for X, out in ((tokens[:, cell], own), (tokens.reshape(N, -1), every)):
                right = probe(X, target, split) == target[split:]
                out.append(right[occupied].float().mean().item())
        print(f"{attribute:6s} occupied cells, from own token: "
              + " ".join(f"{s:.2f}" for s in own) + f" (mean {sum(own) / 9:.3f})")
        print(f"{'':6s} occupied cells, from all 9 tokens: "
              + " ".join(f"{s:.2f}" for s in every) + f" (mean {sum(every) / 9:.3f})")


if __name__ == "__main__":
    main()
