#!/usr/bin/env python3
"""How fast does ShapesWorld's tiny LLM learn to bind? A self-contained PyTorch experiment.

A question about one of several objects ("what color is the star?") needs a lookup: find the object
the question names, read another of its attributes. scripts/demo's stage 2 answers such questions
well with one object in the scene and near chance with two or three (configs/shapes/
stage2_instruct.yaml), although linear probes show the tower's patch features keep each cell's
colour, kind and size. This script trains a decoder of the stage-0 LLM's size (4 layers, 128 wide,
4 heads, RoPE, SwiGLU, answer-only loss) on ShapesWorld-style scenes and questions, from either

  --scene words  the scene written out ("top left : small blue star , ..."), as stage 0 reads it;
  --scene bound  one position per object whose input is the sum of its attributes' word
                 embeddings, as a connector's token per grid cell carries the image;
  --scene grid   the same for all nine cells in order, an empty cell its cell's words alone, as
                 the resampler's nine tokens stand for the image;
  --own-embeddings  the bound or grid positions from a table of their own: the question's "star"
                 and the star in the scene no longer share a vector, as a word and a connector's
                 output do not,

and prints held-out accuracy of the first answer token by question type and object count (n1, n2,
n3), so the moment the lookup is learnt shows as n2 and n3 leaving 0.5 and 0.33.
--pretrain-words N first trains N steps on the words format at lr 3e-3 (stage 0's recipe) and then
switches to the main run, to see what stage 0's question records leave behind.

  python3 bench/binding_toy.py --scene bound --steps 3000 --lr 1e-3
"""
import argparse
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--scene", choices=["words", "bound", "grid"], default="bound")
p.add_argument("--own-embeddings", action="store_true",
               help="bound and grid scenes from an embedding table of their own, not the words'")
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--questions", type=int, default=1, help="questions per training record")
p.add_argument("--pretrain-words", type=int, default=0)
p.add_argument("--threads", type=int, default=2)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
random.seed(0)

COLOURS = "red green blue yellow orange purple white".split()
KINDS = "circle square triangle diamond star".split()
SIZES = ["small", "large"]
CELLS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
         "bottom right"]
HIDDEN, LAYERS, HEADS, INTERMEDIATE, BATCH = 128, 4, 4, 352, 32


def sample_scene():
    """1-3 objects (cell, colour, kind, size) in distinct cells, (colour, kind) unique."""
    objects = []
    for cell in sorted(random.sample(range(9), random.randint(1, 3))):
        while True:
            o = (cell, random.randrange(7), random.randrange(5), random.randrange(2))
            if all((o[1], o[2]) != (q[1], q[2]) for q in objects):
                break
        objects.append(o)
    return objects


def ask(objects):
    """(type, question, first answer word), the references unique as the generator makes them."""
    o = random.choice(objects)
    kind_count = sum(q[2] == o[2] for q in objects)
    kind_size_count = sum(q[2] == o[2] and q[3] == o[3] for q in objects)
    kind = random.choice(["color", "shape", "size", "position"])
    if kind == "color" and (kind_count == 1 or kind_size_count == 1):
        ref = KINDS[o[2]] if kind_count == 1 else f"{SIZES[o[3]]} {KINDS[o[2]]}"
        return "color", f"what color is the {ref} ?", COLOURS[o[1]]
    if kind == "shape" and sum(q[1] == o[1] for q in objects) == 1:
        return "shape", f"what shape is the {COLOURS[o[1]]} object ?", KINDS[o[2]]
    if kind == "position":
        return "position", f"where is the {COLOURS[o[1]]} {KINDS[o[2]]} ?", CELLS[o[0]].split()[0]
    return "size", f"what size is the {COLOURS[o[1]]} {KINDS[o[2]]} ?", SIZES[o[3]]


WORDS = sorted(set(" ".join(CELLS + SIZES + COLOURS + KINDS).split())
               | set(": , ? what color is the shape object size where answer".split()))
VOCAB = {w: i + 1 for i, w in enumerate(WORDS)}  # 0: padding, a zero embedding
SLOTS = 5  # word ids summed into one input position (a bound object uses 4-5)


OWN = len(VOCAB) if args.own_embeddings else 0  # id offset of the scene's own table


def make_record(scene_format, questions):
    """(positions, labels, [(answer position, type, objects)]): a position is a tuple of word ids."""
    objects = sample_scene()
    if scene_format == "bound":
        positions = [tuple(OWN + VOCAB[w] for w in f"{CELLS[o[0]]} {SIZES[o[3]]} {COLOURS[o[1]]} "
                           f"{KINDS[o[2]]}".split()) for o in objects]
    elif scene_format == "grid":
        by_cell = {o[0]: o for o in objects}
        positions = [tuple(OWN + VOCAB[w] for w in (CELLS[c] + (
            f" {SIZES[by_cell[c][3]]} {COLOURS[by_cell[c][1]]} {KINDS[by_cell[c][2]]}"
            if c in by_cell else "")).split()) for c in range(9)]
    else:
        text = " , ".join(f"{CELLS[o[0]]} : {SIZES[o[3]]} {COLOURS[o[1]]} {KINDS[o[2]]}"
                          for o in objects)
        positions = [(VOCAB[w],) for w in text.split()]
    labels = [-100] * len(positions)
    answers = []
    for _ in range(questions):
        qtype, question, answer = ask(objects)
        words = [(VOCAB[w],) for w in (question + " answer").split()]
        positions += words
        labels += [-100] * len(words)
        answers.append((len(positions) - 1, qtype, len(objects)))
        positions.append((VOCAB[answer],))
        labels.append(VOCAB[answer])
    return positions, labels, answers


def collate(records):
    length = max(len(r[0]) for r in records)
    ids = torch.zeros(len(records), length, SLOTS, dtype=torch.long)
    labels = torch.full((len(records), length), -100)
    for i, (positions, lab, _) in enumerate(records):
        for t, word_ids in enumerate(positions):
            ids[i, t, :len(word_ids)] = torch.tensor(word_ids)
        labels[i, :len(lab)] = torch.tensor(lab)
    return ids, labels


def rope(x, cos, sin):
    even, odd = x[..., ::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
        self.out = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.gate_up = nn.Linear(HIDDEN, 2 * INTERMEDIATE, bias=False)
        self.down = nn.Linear(INTERMEDIATE, HIDDEN, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        scores = rope(q, cos, sin) @ rope(k, cos, sin).transpose(-1, -2) / math.sqrt(q.size(-1))
        y = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + self.out(y.transpose(1, 2).reshape(B, T, HIDDEN))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, -1)
        return x + self.down(F.silu(gate) * up)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(2 * len(VOCAB) + 1, HIDDEN, padding_idx=0)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, len(VOCAB) + 1, bias=False)

    def forward(self, ids):
        T, half = ids.size(1), HIDDEN // HEADS // 2
        inv_freq = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float) / half)
        angles = torch.arange(T, dtype=torch.float)[:, None] * inv_freq
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = self.embed(ids).sum(2)
        for block in self.blocks:
            x = block(x, angles.cos(), angles.sin(), mask)
        return self.head(self.norm(x))


def train(model, scene_format, steps, lr, questions, report):
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)
    for step in range(steps):  # 5% warmup, cosine decay, as the recipes
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / (0.05 * steps)) * 0.5 * (1 + math.cos(math.pi * step / steps))
        ids, labels = collate([make_record(scene_format, questions) for _ in range(BATCH)])
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), labels[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if report and (step + 1) % max(1, steps // 5) == 0:
            print(f"step {step + 1}: {report()}", flush=True)


random.seed(123)
held_out = [make_record(args.scene, 1) for _ in range(600)]
random.seed(0)


@torch.no_grad()
def accuracy():
    model.eval()
    right = {}
    ids, _ = collate(held_out)
    predicted = model(ids).argmax(-1)
    for i, (positions, _, answers) in enumerate(held_out):
        for at, qtype, n in answers:
            ok = int(predicted[i, at].item() == positions[at + 1][0])
            for key in ("all", qtype, f"n{n}"):
                right.setdefault(key, []).append(ok)
    model.train()
    return " ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(right.items()))


model = Decoder()
if args.pretrain_words:
    train(model, "words", args.pretrain_words, 3e-3, 1, None)
    print(f"after {args.pretrain_words} steps on written scenes: {accuracy()}", flush=True)
train(model, args.scene, args.steps, args.lr, args.questions, accuracy)
