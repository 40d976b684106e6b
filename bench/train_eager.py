#!/usr/bin/env python3
"""The d=1024 LLM training step of bench_train written in plain PyTorch eager, for comparison.

A LLaMA-style decoder (token embeddings, per layer: RMSNorm -> grouped-query attention with rotary
positions -> residual, RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; LM head), next-token
cross-entropy, backward, clip_grad_norm_(1.0), AdamW. Same sizes and batch shape as bench_train's
d1024 block (it prints them on its `eager-args` line; scripts/bench passes them on). Prints ms per
step by phase and positions/s (batch x sequence positions per second); with --cpp-positions-per-s,
the ratio of bench_train's figure to this one (the target: at least 1.3).

What differs from bench_train's step, all in eager's favour: no data loader, no vision tower or
connector (bench_train runs its 64 px tower and the mlp2x_gelu connector too), a fixed sequence
length (bench_train's batches vary around the mean), and the LM head on every position rather than
only the supervised ones (vocabulary ~128: negligible). Attention is written out as an eager
implementation would: scores + causal mask, softmax in fp32, times V (bench_train's padded batches
take the same explicit path on LibTorch 1.13).

Run with the system interpreter (Debian's python3-torch, the same LibTorch 1.13):
  /usr/bin/python3 bench/train_eager.py --batch 8 --seq 150
"""
import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn


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
        if self.kv_heads != self.heads:
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


class Decoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.hidden, 1e-6)
        self.lm_head = nn.Linear(a.hidden, a.vocab, bias=False)
        self.head_dim, self.theta = a.hidden // a.heads, 10000.0

    def forward(self, ids):
        T = ids.shape[1]
        cos, sin = rope(torch.arange(T), self.head_dim, self.theta)
        mask = torch.full((T, T), float("-inf")).triu(1)
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.lm_head(self.norm(h))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=150)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=int(os.environ.get("MLLM_BENCH_THREADS", "0")))
    p.add_argument("--cpp-positions-per-s", type=float, default=0.0)
    p.add_argument("--cpp-gemm-gflops", type=float, default=0.0)
    a = p.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(a.threads if a.threads > 0 else os.cpu_count())
    model = Decoder(a).train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq))
    labels = ids[:, 1:]

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()
        t1 = time.perf_counter()
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, a.vocab).float(), labels.reshape(-1))
        t2 = time.perf_counter()
        loss.backward()
        loss.item()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t4 = time.perf_counter()
        return t2 - t1, t3 - t2, (t1 - t0) + (t4 - t3)

    for _ in range(a.warmup):
        step()
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
    start = time.perf_counter()
    for _ in range(a.steps):
        f, b, o = step()
        fwd, bwd, optim = fwd + f, bwd + b, optim + o
    wall = time.perf_counter() - start
    n = a.steps
    total = sum(q.numel() for q in params)
    pps = a.batch * a.seq * n / wall
    print(f"PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads: LLM d={a.hidden} "
          f"x{a.layers} layers, heads {a.heads}/{a.kv_heads} kv, ffn {a.intermediate}, "
          f"vocab {a.vocab}, {total / 1e6:.3f} M params (all train)")
    print(f"  batch {a.batch} x {a.seq} positions; {a.warmup} warm-up + {n} timed steps")
    print(f"  ms/step     {1000 * wall / n:.1f} = forward {1000 * fwd / n:.1f} + backward "
          f"{1000 * bwd / n:.1f} + optimizer {1000 * optim / n:.1f}")
    print(f"  throughput  {pps:.0f} positions/s (= tokens/s, no padding here)")
    print(f"  GEMM ref    fp32 mm 1024^3 {gemm:.1f} GFLOP/s")
    if a.cpp_positions_per_s > 0:
        print(f"  bench_train d1024 {a.cpp_positions_per_s:.0f} positions/s -> "
              f"{a.cpp_positions_per_s / pps:.2f}x eager (target: >= 1.3x)")
    if a.cpp_positions_per_s > 0 and a.cpp_gemm_gflops > 0:
        # The machine may be shared: each figure over its own run's GEMM reference.
        r = (a.cpp_positions_per_s / a.cpp_gemm_gflops) / (pps / gemm)
        print(f"  per GEMM GFLOP/s of each run (bench_train's {a.cpp_gemm_gflops:.1f}): {r:.2f}x")


if __name__ == "__main__":
    main()
