#!/usr/bin/env python3
"""A LLaVA training step in plain PyTorch eager, the comparison for bench_train's blocks.

The step as LLaVA-1.5 / HF transformers write it: a frozen CLIP ViT run under no_grad (patch
conv, class token, positions, pre-LayerNorm, pre-LN encoder layers with quick_gelu, the hidden
state of `feature_layer`, patch tokens only), the mlp2x_gelu connector, its tokens scattered into
the text embeddings at the image placeholders (masked_scatter), a LLaMA decoder (RMSNorm, rotary
positions, grouped-query attention through repeat_kv, SwiGLU), the LM head on every position,
next-token cross-entropy with ignore_index -100, backward, clip_grad_norm_(1.0), AdamW. Attention
is transformers' eager attention (LibTorch 1.13 has no fused kernel for a masked batch): scores,
additive causal+padding mask, fp32 softmax, times V.

bench_train prints one `eager-args` line per block it compares (scripts/bench passes each on):
the same model sizes and trainable parts; either a fixed batch x length (--batch, --seq: no
padding, all in eager's favour) with the same share of supervised positions, or, for the
variable-length block, the same samples' lengths (--lengths FILE: [[tokens, supervised], ...]),
batched in a seeded random order and padded to each batch's longest as HF's collator does. Data
is fed from memory. Prints ms per step by phase, positions/s and real tokens/s, and the ratio of
bench_train's figure to eager's (--cpp-per-s, in the unit --unit names).

Run with the system interpreter (Debian's python3-torch, the same LibTorch 1.13):
  /usr/bin/python3 bench/train_eager.py --batch 8 --seq 150
"""
import argparse
import json
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from torch import nn


# --- vision tower: transformers' CLIPVisionModel, pre-LN -------------------------------------
class ClipLayer(nn.Module):
    def __init__(self, d, heads, inter):
        super().__init__()
        self.heads = heads
        self.layer_norm1 = nn.LayerNorm(d, eps=1e-5)
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.layer_norm2 = nn.LayerNorm(d, eps=1e-5)
        self.fc1, self.fc2 = nn.Linear(d, inter), nn.Linear(inter, d)

    def forward(self, x):
        B, T, C = x.shape
        h = self.layer_norm1(x)
        split = lambda t: t.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // self.heads), dim=-1) @ v
        x = x + self.out_proj(a.transpose(1, 2).reshape(B, T, C))
        h = self.fc1(self.layer_norm2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))


class ClipVision(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, p = a.v_hidden, a.patch
        self.patches = (a.image // p) ** 2
        self.patch_embedding = nn.Conv2d(3, d, p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(d) * 0.02)
        self.position_embedding = nn.Embedding(self.patches + 1, d)
        self.pre_layrnorm = nn.LayerNorm(d, eps=1e-5)
        run = a.feature_layer if a.feature_layer >= 0 else a.v_layers + 1 + a.feature_layer
        self.layers = nn.ModuleList(ClipLayer(d, a.v_heads, a.v_inter) for _ in range(run))

    def forward(self, pixels):
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.position_embedding.weight
        x = self.pre_layrnorm(x)
        for layer in self.layers:  # up to feature_layer: the later ones are not needed
            x = layer(x)
        return x[:, 1:]  # select: patch


# --- LLM: transformers' LlamaForCausalLM, eager attention --------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope(positions, head_dim, theta):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kv_heads != self.heads:  # transformers' repeat_kv
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + mask
        y = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class Mlp(nn.Module):
    def __init__(self, dim, intermediate):
        super().__init__()
        self.gate_proj = nn.Linear(dim, intermediate, bias=False)
        self.up_proj = nn.Linear(dim, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.input_layernorm = RMSNorm(a.hidden, 1e-6)
        self.self_attn = Attention(a.hidden, a.heads, a.kv_heads)
        self.post_attention_layernorm = RMSNorm(a.hidden, 1e-6)
        self.mlp = Mlp(a.hidden, a.intermediate)

    def forward(self, x, cos, sin, mask):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Llava(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.vision_tower = ClipVision(a) if a.image_tokens > 0 else None
        self.linear_1 = nn.Linear(a.v_hidden, a.hidden)
        self.linear_2 = nn.Linear(a.hidden, a.hidden)
        self.embed_tokens = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.hidden, 1e-6)
        self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)
        self.head_dim, self.theta = a.hidden // a.heads, 10000.0
        if self.vision_tower is not None:
            self.vision_tower.requires_grad_(False)  # frozen, as in stages 1-2

    def forward(self, ids, pixels, image_mask, attention_mask):
        B, T = ids.shape
        h = self.embed_tokens(ids)
        if self.vision_tower is not None:
            with torch.no_grad():  # LLaVA's CLIPVisionTower.forward is @torch.no_grad()
                feats = self.vision_tower(pixels)
            tokens = self.linear_2(F.gelu(self.linear_1(feats)))
            h = h.masked_scatter(image_mask.unsqueeze(-1), tokens.to(h.dtype))
        cos, sin = rope(torch.arange(T), self.head_dim, self.theta)
        # transformers' 4D mask: causal plus padding, additive, finite minimum.
        mask = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
        if attention_mask is not None:
            pad = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            mask = (mask + pad).clamp(min=torch.finfo(torch.float32).min)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.lm_head(self.norm(h)).float()  # every position, as LlamaForCausalLM


def make_batches(a):
    """[(ids, labels, pixels, image_mask, attention_mask, real_tokens)] to cycle through."""
    g = torch.Generator().manual_seed(0)
    Q = a.image_tokens
    img = 0  # the placeholder id (any id; the mask marks the positions)

    def row(length, supervised):
        ids = torch.randint(1, a.vocab, (length,), generator=g)
        ids[1:1 + Q] = img
        labels = torch.full((length,), -100)
        labels[length - supervised:] = ids[length - supervised:]
        return ids, labels

    batches = []
    if a.lengths:
        samples = json.load(open(a.lengths))
        random.Random(0).shuffle(samples)
        for i in range(0, len(samples) - a.batch + 1, a.batch):
            chunk = samples[i:i + a.batch]
            T = max(n for n, _ in chunk)  # padded to the batch's longest
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            labels = torch.full((len(chunk), T), -100)
            am = torch.zeros(len(chunk), T, dtype=torch.long)
            for r, (n, s) in enumerate(chunk):
                ids[r, :n], labels[r, :n] = row(n, s)
                am[r, :n] = 1
            batches.append((ids, labels, am, sum(n for n, _ in chunk)))
    else:
        sup = max(1, round(a.supervised * a.seq))
        rows = [row(a.seq, sup) for _ in range(a.batch)]
        ids = torch.stack([r[0] for r in rows])
        labels = torch.stack([r[1] for r in rows])
        batches.append((ids, labels, None, a.batch * a.seq))
    out = []
    for ids, labels, am, real in batches:
        pixels = torch.randn(ids.shape[0], 3, a.image, a.image, generator=g) if Q > 0 else None
        image_mask = ids == img
        if am is not None:
            image_mask &= am.bool()
        out.append((ids, labels, pixels, image_mask, am, real))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default="d1024")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--v-hidden", type=int, default=64)
    p.add_argument("--v-layers", type=int, default=3)
    p.add_argument("--v-heads", type=int, default=4)
    p.add_argument("--v-inter", type=int, default=256)
    p.add_argument("--feature-layer", type=int, default=-2)
    p.add_argument("--image-tokens", type=int, default=0, help="placeholders per row (0: no image)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=150)
    p.add_argument("--supervised", type=float, default=1.0, help="share of positions with a label")
    p.add_argument("--lengths", default="", help="JSON [[tokens, supervised], ...]: padded batches")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=int(os.environ.get("MLLM_BENCH_THREADS", "0")))
    p.add_argument("--cpp-per-s", type=float, default=0.0)
    p.add_argument("--unit", default="positions", choices=["positions", "tokens"])
    p.add_argument("--cpp-gemm-gflops", type=float, default=0.0)
    p.add_argument("--target", type=float, default=1.3)
    a = p.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(a.threads if a.threads > 0 else os.cpu_count())
    model = Llava(a).train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    batches = make_batches(a)

    def step(i):
        ids, labels, pixels, image_mask, am, _ = batches[i % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad()
        t1 = time.perf_counter()
        logits = model(ids, pixels, image_mask, am)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, a.vocab), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
        t2 = time.perf_counter()
        loss.backward()
        loss.item()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t4 = time.perf_counter()
        return t2 - t1, t3 - t2, (t1 - t0) + (t4 - t3)

    for i in range(a.warmup):
        step(i)
    # The same reference as bench_train's: a fp32 1024^3 mm, median of a few, just before.
    a1, b1 = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a1, b1)
    reps = []
    for _ in range(7):
        t = time.perf_counter()
        torch.mm(a1, b1)
        reps.append(time.perf_counter() - t)
    gemm = 2 * 1024**3 / sorted(reps)[len(reps) // 2] / 1e9
    fwd = bwd = optim = 0.0
    positions = real = 0
    start = time.perf_counter()
    for i in range(a.warmup, a.warmup + a.steps):
        f, b, o = step(i)
        fwd, bwd, optim = fwd + f, bwd + b, optim + o
        ids = batches[i % len(batches)][0]
        positions += ids.numel()
        real += batches[i % len(batches)][5]
    wall = time.perf_counter() - start
    n = a.steps
    total = sum(q.numel() for q in params)
    pps, tps = positions / wall, real / wall
    print(f"== eager {a.name}: PyTorch {torch.__version__}, {torch.get_num_threads()} threads: "
          f"LLM d={a.hidden} x{a.layers}, heads {a.heads}/{a.kv_heads} kv, ffn {a.intermediate}, "
          f"vocab {a.vocab}; {a.image_tokens} image tokens/row "
          f"(ViT {a.image}px/{a.patch} d={a.v_hidden} x{a.v_layers}, frozen); "
          f"{total / 1e6:.3f} M trainable")
    shape = (f"{len(batches)} padded batches of {a.batch} samples ({a.lengths})" if a.lengths
             else f"batch {a.batch} x {a.seq} positions, {a.supervised:.0%} supervised")
    print(f"  {shape}; {a.warmup} warm-up + {n} timed steps")
    print(f"  ms/step     {1000 * wall / n:.1f} = forward {1000 * fwd / n:.1f} + backward "
          f"{1000 * bwd / n:.1f} + optimizer {1000 * optim / n:.1f}")
    print(f"  throughput  {pps:.0f} positions/s, {tps:.0f} real tokens/s "
          f"(padding {1 - real / positions:.1%})")
    print(f"  GEMM ref    fp32 mm 1024^3 {gemm:.1f} GFLOP/s")
    if a.cpp_per_s > 0:
        ours = pps if a.unit == "positions" else tps
        r = a.cpp_per_s / ours
        print(f"  ratio       bench_train {a.name} {a.cpp_per_s:.0f} {a.unit}/s / eager {ours:.0f} "
              f"-> {r:.2f}x eager" + (f" (target: >= {a.target:g}x){'' if r >= a.target else ' MISSED'}"
                                       if a.target > 0 else ""))
        if a.cpp_gemm_gflops > 0:  # the machine may be shared: each over its own GEMM reference
            print(f"  per GEMM GFLOP/s of each run (bench_train's {a.cpp_gemm_gflops:.1f}): "
                  f"{r * gemm / a.cpp_gemm_gflops:.2f}x")


if __name__ == "__main__":
    main()
