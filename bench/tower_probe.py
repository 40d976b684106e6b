#!/usr/bin/env python3
"""Does the ShapesWorld vision tower keep each object's attributes in its place?

Linear probes on a frozen CLIP tower (the folder stage0_clip.yaml writes, read with a plain
PyTorch forward of CLIPVisionModel written here from HF's modeling_clip): for every hidden layer,
the mean of each grid cell's 3x3 patches predicts that cell's colour, kind and size (or "empty").
Trained on 80% of the first 6000 training scenes, scored on the rest, over all cells and over the
occupied ones. High scores at the layer the connector reads (feature_layer) mean the features are
bound to place, and what the LLM makes of them is the question (bench/binding_toy.py,
bench/connector_probe.py).

  python3 bench/tower_probe.py runs/demo-*/encoder/final data/shapes
"""
import json
import re
import struct
import sys

import numpy as np
import torch
from PIL import Image

CELLS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
         "bottom right"]
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # CLIP's
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
ATTRIBUTES = (("colour", 1), ("kind", 2), ("size", 0))


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header, out = json.loads(raw[8:8 + n]), {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: {info['dtype']} (this probe reads F32)"
        begin, end = info["data_offsets"]
        out[name] = torch.from_numpy(
            np.frombuffer(raw[8 + n + begin:8 + n + end], dtype=np.float32).reshape(info["shape"]).copy())
    return out


class Tower:
    """CLIPVisionModel's forward over the tensors named prefix + "vision_model." in W."""

    def __init__(self, W, config, prefix=""):
        self.W, self.config, self.P = W, config, prefix + "vision_model."

    def layer_norm(self, x, name):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.W[name + ".weight"],
                                              self.W[name + ".bias"],
                                              self.config.get("layer_norm_eps", 1e-5))

    def linear(self, x, name):
        return x @ self.W[name + ".weight"].T + self.W[name + ".bias"]

    def hidden_states(self, pixels):
        W, P, config = self.W, self.P, self.config
        x = torch.nn.functional.conv2d(pixels, W[P + "embeddings.patch_embedding.weight"],
                                       stride=config["patch_size"]).flatten(2).transpose(1, 2)
        B, heads = x.size(0), config["num_attention_heads"]
        cls = W[P + "embeddings.class_embedding"].expand(B, 1, -1)
        x = self.layer_norm(torch.cat([cls, x], 1) + W[P + "embeddings.position_embedding.weight"],
                            P + "pre_layrnorm")
        out = [x]
        for i in range(config["num_hidden_layers"]):
            name = P + f"encoder.layers.{i}."
            h = self.layer_norm(x, name + "layer_norm1")
            T, C = h.shape[1], h.shape[2]
            q, k, v = (self.linear(h, name + "self_attn." + p).view(B, T, heads, -1).transpose(1, 2)
                       for p in ("q_proj", "k_proj", "v_proj"))
            a = torch.softmax(q @ k.transpose(-1, -2) / (C // heads) ** 0.5, -1) @ v
            x = x + self.linear(a.transpose(1, 2).reshape(B, T, C), name + "self_attn.out_proj")
            h = self.linear(self.layer_norm(x, name + "layer_norm2"), name + "mlp.fc1")
            x = x + self.linear(h * torch.sigmoid(1.702 * h), name + "mlp.fc2")  # quick_gelu
            out.append(x)
        return out


def cells_of(caption):
    """Per cell (size, colour, kind) or None, from a caption "a large red circle at the top, ..."."""
    out = [None] * 9
    for m in re.finditer(r"a (small|large) (\w+) (\w+) (?:at the ([a-z ]+?)|in the center)(?=,| and|\.)",
                         caption):
        out[CELLS.index(m.group(4) or "center")] = (m.group(1), m.group(2), m.group(3))
    return out


def scenes(data, count, batch=200):
    """(pixels normalised as CLIP's, cells) of the first `count` training scenes, in batches."""
    records = json.load(open(data + "/captions_train.json"))[:count]
    for i in range(0, len(records), batch):
        part = records[i:i + batch]
        pixels = torch.stack([torch.from_numpy(np.asarray(
            Image.open(data + "/images/" + r["image"]).convert("RGB"), dtype=np.float32) / 255)
            .permute(2, 0, 1) for r in part])
        yield (pixels - MEAN) / STD, [cells_of(r["conversations"][1]["value"]) for r in part]


def labels_of(cells, index):
    """Class ids (scenes, 9) of one attribute, "empty" included, and the class names."""
    values = [["empty" if c is None else c[index] for c in row] for row in cells]
    names = sorted({v for row in values for v in row})
    return torch.tensor([[names.index(v) for v in row] for row in values]), names


def probe(X, y, split, steps=300):
    """Held-out predictions of a linear probe trained on the first `split` rows."""
    mu, sd = X[:split].mean(0), X[:split].std(0) + 1e-6
    X = (X - mu) / sd
    layer = torch.nn.Linear(X.size(1), int(y.max()) + 1)
    opt = torch.optim.Adam(layer.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer(X[:split]), y[:split]).backward()
        opt.step()
    with torch.no_grad():
        return layer(X[split:]).argmax(1)


def main():
    torch.set_num_threads(2)
    folder, data = sys.argv[1], sys.argv[2]
    config = json.load(open(folder + "/config.json"))
    tower = Tower(read_safetensors(folder + "/model.safetensors"), config.get("vision_config", config))
    side = tower.config["image_size"] // tower.config["patch_size"]
    per_cell = side // 3
    features, cells = [], []
    with torch.no_grad():
        for pixels, part in scenes(data, 6000):
            layers = []
            for h in tower.hidden_states(pixels):
                grid = h[:, 1:].reshape(-1, 3, per_cell, 3, per_cell, h.size(-1))
                layers.append(grid.mean((2, 4)).reshape(-1, 9, h.size(-1)))
            features.append(torch.stack(layers))
            cells += part
    features = torch.cat(features, 1)  # layers, scenes, 9, C
    N = features.size(1)
    split = int(N * 0.8) * 9
    for attribute, index in ATTRIBUTES:
        y, names = labels_of(cells, index)
        y = y.flatten()
        scores = []
        for layer in range(features.size(0)):
            right = probe(features[layer].reshape(N * 9, -1), y, split) == y[split:]
            occupied = y[split:] != names.index("empty")
            scores.append(f"layer {layer} {right.float().mean():.3f} (occupied {right[occupied].float().mean():.3f})")
        print(f"{attribute:6s} " + " | ".join(scores))


if __name__ == "__main__":
    main()
