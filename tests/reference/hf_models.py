#!/usr/bin/python3
"""Reference Hugging Face models and the committed fixtures under tests/fixtures/hf/.

An independent PyTorch re-implementation of the forward passes of transformers' CLIPVisionModel,
LlamaForCausalLM, Qwen2ForCausalLM and MixtralForCausalLM (eager attention), written to follow the
transformers modeling code step by step without importing transformers (it is not installed here).
The script makes tiny random checkpoints laid out exactly as `save_pretrained` writes them
(config.json + model.safetensors, or a sharded index) and, next to each, an `io.safetensors` with
inputs and reference outputs for the C++ loaders and models to match.

What was read (huggingface/transformers, via the code index; file@commit):
  src/transformers/models/llama/modeling_llama.py   @5dd4a63548857797727ae73eeb6a6e886ea02a3e
      (the v4.48/v4.49 line: LlamaRotaryEmbedding + ROPE_INIT_FUNCTIONS, eager_attention_forward,
       _prepare_4d_causal_attention_mask_with_cache_position, LlamaForCausalLM)
  src/transformers/modeling_rope_utils.py            @0044e3b3facff1a1ad60b235c69d5b45beae75a4
      (_compute_default_rope_parameters, _compute_linear_scaling_rope_parameters)
  src/transformers/models/qwen2/modeling_qwen2.py   @63bb723747035466e5339aea864b133f709b067d
      (q/k/v bias=True, o_proj bias=False, otherwise the Llama block)
  src/transformers/models/mixtral/modeling_mixtral.py @af3efdd71ee5b568dfdb71bb41d316df830147af
  src/transformers/models/mixtral/modular_mixtral.py  @7792ab1a984cb369352b985f63393090ab0819c3
      (MixtralSparseMoeBlock, load_balancing_loss_func, MixtralForCausalLM loss)
  src/transformers/models/clip/modeling_clip.py     @679021a6b0ded09d623a96e2bd2f822c5a548872
  src/transformers/models/clip/configuration_clip.py @01841b341b64ab547cd2e30f09cb9c74929f50f2
  src/transformers/utils/generic.py (check_model_inputs: hidden_states = embeddings, layer outputs,
      last one replaced by the final-norm output - the same tuple the older explicit loops build)
The math did not change between these commits for the paths used here.

Reference outputs are computed in float64 from the stored weights (bf16 weights upcast exactly) and
rounded to float32; the RoPE cos/sin tables are made in float32 first, as transformers does. The
script also runs everything in float32 and records the largest float32-vs-float64 difference in
the io files' metadata (a guide for test tolerances).

Self-checks (all run on every generation; any failure aborts before files are written):
  * safetensors round trip of every file written, and header/offset validity;
  * a second, loop-based implementation of the decoders (per-token, per-head attention over the
    allowed keys only, RoPE as complex rotation of (x[i], x[i+d/2]) pairs, explicit kv-head index
    h // n_rep, MoE as a dense sum over experts with zero weights for unselected ones);
  * CLIP encoder layers against torch.nn.TransformerEncoderLayer(norm_first=True) and the patch
    embedding against F.conv2d, LayerNorm against F.layer_norm;
  * load_balancing_loss_func against a loop-based evaluation of its formula (with and without mask);
  * padded batches (right padding; left padding with generate()-style position_ids): row 0 (no
    padding) equals the unmasked run, row 1's real tokens equal a run of that row alone, unpadded;
  * sharded llama: the shards reassemble to exactly the unsharded tensors and give identical logits;
  * router decisions have a margin (no near-ties in top-k) and agree between float32 and float64.

usage: /usr/bin/python3 tests/reference/hf_models.py [OUT_DIR]   (default tests/fixtures/hf)
Deterministic: regenerating writes identical bytes.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

TRANSFORMERS_VERSION = "4.48.0"  # written into config.json, as save_pretrained does
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "hf")

# ----------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header {name: {dtype, shape,
# data_offsets}} with an optional "__metadata__" (str -> str), then the raw little-endian bytes.
# The header is padded with spaces to a multiple of 8 bytes (as the reference writer does).
# ----------------------------------------------------------------------------------------------
_ST_NAME = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_ST_DTYPE = {v: k for k, v in _ST_NAME.items()}
_ST_RANK = ["BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"]  # safetensors' Dtype order
assert sys.byteorder == "little", "the writer copies native bytes; this machine must be little-endian"


def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the 2-byte patterns
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def safetensors_bytes(tensors, metadata=None):
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    # Data order as the reference (Rust) writer lays it out: larger dtypes first, then by name,
    # which keeps every tensor aligned to its element size.
    order = sorted(tensors, key=lambda n: (-_ST_RANK.index(_ST_NAME[tensors[n].dtype]), n))
    for name in order:
        t = tensors[name]
        data = _tensor_bytes(t)
        header[name] = {"dtype": _ST_NAME[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def parse_safetensors(data):
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    base, out, spans = 8 + n, {}, []
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = _ST_DTYPE[info["dtype"]]
        numel = math.prod(info["shape"])
        esize = torch.empty((), dtype=dtype).element_size()
        if end - start != numel * esize:
            raise ValueError(f"{name}: {end - start} bytes for shape {info['shape']} {info['dtype']}")
        spans.append((start, end))
        buf = bytearray(data[base + start:base + end])
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"])
    spans.sort()
    pos = 0
    for s, e in spans:  # contiguous, non-overlapping, covering the whole data section
        if s != pos:
            raise ValueError("data_offsets leave a gap or overlap")
        pos = e
    if base + pos != len(data):
        raise ValueError("trailing bytes after the last tensor")
    return out, meta


def load_safetensors(path):
    with open(path, "rb") as f:
        return parse_safetensors(f.read())


# ----------------------------------------------------------------------------------------------
# Output collection: every file is built in memory, verified, then written at the end.
# ----------------------------------------------------------------------------------------------
class Out:
    def __init__(self, root):
        self.root = root
        self.files = {}  # relative path -> bytes

    def json(self, rel, obj):
        # configuration_utils.PretrainedConfig.to_json_string: json.dumps(indent=2, sort_keys=True)+"\n"
        self.files[rel] = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def safetensors(self, rel, tensors, metadata=None):
        data = safetensors_bytes(tensors, metadata)
        back, meta = parse_safetensors(data)
        assert set(back) == set(tensors)
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
            assert torch.equal(back[k], v.detach().cpu()), f"round trip changed {rel}:{k}"
        if metadata is not None:
            assert meta == {str(a): str(b) for a, b in metadata.items()}
        self.files[rel] = data

    def text(self, rel, s):
        self.files[rel] = s.encode("utf-8")

    def write(self):
        for rel in sorted(self.files):
            path = os.path.join(self.root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(self.files[rel])


# ----------------------------------------------------------------------------------------------
# Random weights: fixed seeds, one generator per model, parameters drawn in a fixed order.
# Non-trivial scales (std 0.1-0.5, norm weights 1 +- 0.1, non-zero biases) so that a wrong layout,
# a missing bias or a swapped norm changes the outputs visibly.
# ----------------------------------------------------------------------------------------------
class Init:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape, std, mean=0.0):
        return torch.randn(shape, generator=self.g, dtype=torch.float32) * std + mean

    def norm_weight(self, n):
        return self.normal((n,), 0.1, 1.0)

    def ints(self, low, high, shape):
        return torch.randint(low, high, shape, generator=self.g, dtype=torch.int64)


def head_dim_of(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def decoder_weights(cfg, seed, arch):
    """State dict with transformers' key names for llama / qwen2 / mixtral."""
    init = Init(seed)
    H, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim_of(cfg)
    qkv_bias = arch == "qwen2" or cfg.get("attention_bias", False)
    W = {"model.embed_tokens.weight": init.normal((V, H), 0.5)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        W[p + "input_layernorm.weight"] = init.norm_weight(H)
        W[p + "self_attn.q_proj.weight"] = init.normal((nh * hd, H), 0.25)
        W[p + "self_attn.k_proj.weight"] = init.normal((nkv * hd, H), 0.25)
        W[p + "self_attn.v_proj.weight"] = init.normal((nkv * hd, H), 0.2)
        if qkv_bias:
            W[p + "self_attn.q_proj.bias"] = init.normal((nh * hd,), 0.2)
            W[p + "self_attn.k_proj.bias"] = init.normal((nkv * hd,), 0.2)
            W[p + "self_attn.v_proj.bias"] = init.normal((nkv * hd,), 0.2)
        W[p + "self_attn.o_proj.weight"] = init.normal((H, nh * hd), 0.2)
        if cfg.get("attention_bias", False):
            W[p + "self_attn.o_proj.bias"] = init.normal((H,), 0.1)
        W[p + "post_attention_layernorm.weight"] = init.norm_weight(H)
        if arch == "mixtral":
            E = cfg["num_local_experts"]
            W[p + "block_sparse_moe.gate.weight"] = init.normal((E, H), 0.4)
            for e in range(E):
                q = p + f"block_sparse_moe.experts.{e}."
                W[q + "w1.weight"] = init.normal((I, H), 0.2)
                W[q + "w2.weight"] = init.normal((H, I), 0.15)
                W[q + "w3.weight"] = init.normal((I, H), 0.2)
        else:
            W[p + "mlp.gate_proj.weight"] = init.normal((I, H), 0.2)
            W[p + "mlp.up_proj.weight"] = init.normal((I, H), 0.2)
            W[p + "mlp.down_proj.weight"] = init.normal((H, I), 0.15)
    W["model.norm.weight"] = init.norm_weight(H)
    if not cfg.get("tie_word_embeddings", False):
        W["lm_head.weight"] = init.normal((V, H), 0.2)
    return W


def clip_encoder_weights(init, prefix, D, I, layers):
    W = {}
    for i in range(layers):
        p = f"{prefix}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):  # CLIPAttention's order
            W[p + f"self_attn.{proj}.weight"] = init.normal((D, D), 0.2 if proj != "q_proj" else 0.3)
            W[p + f"self_attn.{proj}.bias"] = init.normal((D,), 0.1)
        W[p + "layer_norm1.weight"] = init.norm_weight(D)
        W[p + "layer_norm1.bias"] = init.normal((D,), 0.1)
        W[p + "mlp.fc1.weight"] = init.normal((I, D), 0.2)
        W[p + "mlp.fc1.bias"] = init.normal((I,), 0.1)
        W[p + "mlp.fc2.weight"] = init.normal((D, I), 0.15)
        W[p + "mlp.fc2.bias"] = init.normal((D,), 0.1)
        W[p + "layer_norm2.weight"] = init.norm_weight(D)
        W[p + "layer_norm2.bias"] = init.normal((D,), 0.1)
    return W


def clip_vision_weights(vc, seed):
    init = Init(seed)
    D, C, P = vc["hidden_size"], vc["num_channels"], vc["patch_size"]
    npos = (vc["image_size"] // P) ** 2 + 1
    pre = "vision_model."
    W = {
        pre + "embeddings.class_embedding": init.normal((D,), 0.5),
        pre + "embeddings.patch_embedding.weight": init.normal((D, C, P, P), 0.05),
        pre + "embeddings.position_embedding.weight": init.normal((npos, D), 0.2),
        pre + "pre_layrnorm.weight": init.norm_weight(D),
        pre + "pre_layrnorm.bias": init.normal((D,), 0.1),
    }
    W.update(clip_encoder_weights(init, pre, D, vc["intermediate_size"], vc["num_hidden_layers"]))
    W[pre + "post_layernorm.weight"] = init.norm_weight(D)
    W[pre + "post_layernorm.bias"] = init.normal((D,), 0.1)
    return W


def clip_text_and_heads_weights(tc, vision_hidden, projection_dim, seed):
    init = Init(seed)
    D = tc["hidden_size"]
    pre = "text_model."
    W = {
        pre + "embeddings.token_embedding.weight": init.normal((tc["vocab_size"], D), 0.3),
        pre + "embeddings.position_embedding.weight": init.normal((tc["max_position_embeddings"], D), 0.1),
    }
    W.update(clip_encoder_weights(init, pre, D, tc["intermediate_size"], tc["num_hidden_layers"]))
    W[pre + "final_layer_norm.weight"] = init.norm_weight(D)
    W[pre + "final_layer_norm.bias"] = init.normal((D,), 0.1)
    W["visual_projection.weight"] = init.normal((projection_dim, vision_hidden), 0.2)
    W["text_projection.weight"] = init.normal((projection_dim, D), 0.2)
    W["logit_scale"] = torch.tensor(2.6592, dtype=torch.float32)  # 0-dim, as in real CLIP files
    return W


# ----------------------------------------------------------------------------------------------
# The models, following transformers' modeling code (eager attention, inference mode).
# ----------------------------------------------------------------------------------------------
def linear(x, w, b=None):
    y = torch.matmul(x, w.t())
    return y if b is None else y + b


def rms_norm(x, w, eps):
    # LlamaRMSNorm / Qwen2RMSNorm / MixtralRMSNorm: x * rsqrt(mean(x^2) + eps), then weight *.
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


def layer_norm(x, w, b, eps):
    # nn.LayerNorm: biased variance over the last dim.
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def activation(name):
    # activations.ACT2FN
    if name == "silu":
        return lambda x: x * torch.sigmoid(x)
    if name == "quick_gelu":  # QuickGELUActivation: x * sigmoid(1.702 x)
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":  # GELUActivation: exact erf form
        return lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    raise ValueError(f"unsupported hidden_act {name}")


def rope_inv_freq(cfg):
    """modeling_rope_utils: default inv_freq = 1 / theta^(2i/d) in float32; "linear" divides it by
    `factor` (equivalent to dividing the positions by `factor`, the pre-4.45 formulation)."""
    dim = int(head_dim_of(cfg) * cfg.get("partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) **
                      (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.get("rope_scaling")
    rope_type = "default" if rs is None else rs.get("rope_type", rs.get("type"))
    if rope_type == "linear":
        inv_freq = inv_freq / rs["factor"]
    elif rope_type != "default":
        raise ValueError(f"rope type {rope_type} not implemented here")
    return inv_freq


def rope_cos_sin(cfg, position_ids, dtype):
    """LlamaRotaryEmbedding.forward: freqs = inv_freq (x) positions in float32,
    emb = cat(freqs, freqs), then cos/sin (float32) cast to the activation dtype."""
    inv = rope_inv_freq(cfg)
    inv_expanded = inv[None, :, None].float().expand(position_ids.shape[0], -1, 1)
    freqs = torch.matmul(inv_expanded, position_ids[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x, n_rep):
    # (B, n_kv, L, d) -> (B, n_kv * n_rep, L, d); kv head g serves query heads g*n_rep .. g*n_rep+n_rep-1
    if n_rep == 1:
        return x
    B, nkv, L, d = x.shape
    return x[:, :, None].expand(B, nkv, n_rep, L, d).reshape(B, nkv * n_rep, L, d)


def causal_mask_4d(attention_mask, batch, seq, dtype):
    """_prepare_4d_causal_attention_mask_with_cache_position (no cache: cache_position = 0..L-1).
    0 where attention is allowed, finfo(dtype).min elsewhere."""
    min_v = torch.finfo(dtype).min
    target = attention_mask.shape[-1] if attention_mask is not None else seq + 1
    mask = torch.full((seq, target), min_v, dtype=dtype)
    if seq != 1:
        mask = torch.triu(mask, diagonal=1)
    mask = mask * (torch.arange(target) > torch.arange(seq).reshape(-1, 1))
    mask = mask[None, None].expand(batch, 1, -1, -1).clone()
    if attention_mask is not None:
        n = attention_mask.shape[-1]
        padding = (mask[..., :n] + attention_mask[:, None, None, :].to(dtype)) == 0
        mask[..., :n] = mask[..., :n].masked_fill(padding, min_v)
    return mask


def decoder_attention(x, P, p, cfg, cos, sin, mask4, qkv_bias):
    B, L, _ = x.shape
    hd = head_dim_of(cfg)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    bias = (lambda n: P(p + n + ".bias")) if qkv_bias else (lambda n: None)
    q = linear(x, P(p + "q_proj.weight"), bias("q_proj")).view(B, L, -1, hd).transpose(1, 2)
    k = linear(x, P(p + "k_proj.weight"), bias("k_proj")).view(B, L, -1, hd).transpose(1, 2)
    v = linear(x, P(p + "v_proj.weight"), bias("v_proj")).view(B, L, -1, hd).transpose(1, 2)
    q, k = apply_rope(q, k, cos, sin)
    k, v = repeat_kv(k, nh // nkv), repeat_kv(v, nh // nkv)
    scores = torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5
    scores = scores + mask4[:, :, :, :L]
    # transformers softmaxes in float32 (dtype=torch.float32); here: in the compute dtype.
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(B, L, -1)
    o_bias = P(p + "o_proj.bias") if cfg.get("attention_bias", False) else None
    return linear(out, P(p + "o_proj.weight"), o_bias)


def moe_block(x, P, p, cfg):
    """MixtralSparseMoeBlock.forward (no jitter at inference): router logits -> softmax ->
    top-k -> renormalise the k weights to sum to 1 -> weighted sum of the chosen experts
    (w2(silu(w1 x) * w3 x))."""
    B, L, D = x.shape
    E, top_k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
    act = activation(cfg["hidden_act"])
    flat = x.reshape(-1, D)
    router_logits = linear(flat, P(p + "gate.weight"))
    weights = torch.softmax(router_logits, dim=1)
    weights, selected = torch.topk(weights, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(flat)
    expert_mask = F.one_hot(selected, num_classes=E).permute(2, 1, 0)  # (E, k, T)
    for e in range(E):
        slot, tok = torch.where(expert_mask[e])
        q = p + f"experts.{e}."
        h = flat[tok]
        y = linear(act(linear(h, P(q + "w1.weight"))) * linear(h, P(q + "w3.weight")), P(q + "w2.weight"))
        out.index_add_(0, tok, y * weights[tok, slot, None])
    return out.reshape(B, L, D), router_logits, selected, weights


def decoder_forward(cfg, W, input_ids, attention_mask=None, dtype=torch.float64, position_ids=None):
    """LlamaModel/Qwen2Model/MixtralModel + the causal-LM head. position_ids default to
    cache_position = arange(L) for every row (transformers does not derive them from the mask in
    a plain forward; generate() does). hidden_states: embeddings, outputs of layers 0..N-2,
    final-norm output."""
    arch = cfg["model_type"]
    qkv_bias = arch == "qwen2" or cfg.get("attention_bias", False)
    P = lambda k: W[k].to(dtype)
    eps = cfg["rms_norm_eps"]
    act = activation(cfg["hidden_act"])
    B, L = input_ids.shape
    x = P("model.embed_tokens.weight")[input_ids]
    if position_ids is None:
        position_ids = torch.arange(L)[None]
    cos, sin = rope_cos_sin(cfg, position_ids, dtype)
    mask4 = causal_mask_4d(attention_mask, B, L, dtype)
    hidden, router_logits, selected, routing = [], [], [], []
    for i in range(cfg["num_hidden_layers"]):
        hidden.append(x)
        p = f"model.layers.{i}."
        h = rms_norm(x, P(p + "input_layernorm.weight"), eps)
        x = x + decoder_attention(h, P, p + "self_attn.", cfg, cos, sin, mask4, qkv_bias)
        h = rms_norm(x, P(p + "post_attention_layernorm.weight"), eps)
        if arch == "mixtral":
            h, rl, sel, rw = moe_block(h, P, p + "block_sparse_moe.", cfg)
            router_logits.append(rl)
            selected.append(sel)
            routing.append(rw)
        else:
            m = p + "mlp."
            h = linear(act(linear(h, P(m + "gate_proj.weight"))) * linear(h, P(m + "up_proj.weight")),
                       P(m + "down_proj.weight"))
        x = x + h
    x = rms_norm(x, P("model.norm.weight"), eps)
    hidden.append(x)
    head = "model.embed_tokens.weight" if cfg.get("tie_word_embeddings", False) else "lm_head.weight"
    logits = linear(x, P(head))
    out = {"hidden_states": hidden, "logits": logits}
    if arch == "mixtral":
        out.update(router_logits=router_logits, selected_experts=selected, routing_weights=routing)
    return out


def causal_lm_loss(logits, labels):
    # ForCausalLMLoss / MixtralForCausalLM: shift by one, mean CE over labels != -100.
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


def load_balancing_loss(router_logits, num_experts, top_k, attention_mask=None):
    """load_balancing_loss_func. router_logits: per-layer (B*L, E), concatenated over layers.
    loss = E * sum_{k,e} f[k,e] * P[e], with f[k,e] the (masked) fraction of tokens whose k-th
    choice is e and P[e] the (masked) mean router probability of e. Note the sum over the k slots:
    with top_k = 2 the value of a perfectly balanced router is top_k (2.0), not 1.0."""
    logits = torch.cat(list(router_logits), dim=0)
    probs = torch.softmax(logits, dim=-1)
    _, sel = torch.topk(probs, top_k, dim=-1)
    expert_mask = F.one_hot(sel, num_experts).to(probs.dtype)  # (T, k, E)
    if attention_mask is None:
        tokens_per_expert = expert_mask.mean(dim=0)
        prob_per_expert = probs.mean(dim=0)
    else:
        B, L = attention_mask.shape
        layers = logits.shape[0] // (B * L)
        m = attention_mask.to(probs.dtype)
        m5 = m[None, :, :, None, None].expand(layers, B, L, top_k, num_experts).reshape(-1, top_k, num_experts)
        tokens_per_expert = (expert_mask * m5).sum(dim=0) / m5.sum(dim=0)
        m4 = m[None, :, :, None].expand(layers, B, L, num_experts).reshape(-1, num_experts)
        prob_per_expert = (probs * m4).sum(dim=0) / m4.sum(dim=0)
    return (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() * num_experts


def clip_encoder(h, P, prefix, cfg, collect, mask4=None):
    D, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = D // nh
    eps = cfg["layer_norm_eps"]
    act = activation(cfg["hidden_act"])
    B, T, _ = h.shape
    for i in range(cfg["num_hidden_layers"]):
        collect.append(h)
        p = f"{prefix}encoder.layers.{i}."
        r = h
        x = layer_norm(h, P(p + "layer_norm1.weight"), P(p + "layer_norm1.bias"), eps)
        a = p + "self_attn."
        # CLIPAttention: q is scaled by head_dim^-0.5 before the product; no mask for vision, the
        # additive causal + padding mask for text (eager_attention_forward adds it to the scores).
        q = linear(x, P(a + "q_proj.weight"), P(a + "q_proj.bias")) * hd ** -0.5
        k = linear(x, P(a + "k_proj.weight"), P(a + "k_proj.bias"))
        v = linear(x, P(a + "v_proj.weight"), P(a + "v_proj.bias"))
        q, k, v = (t.view(B, T, nh, hd).transpose(1, 2) for t in (q, k, v))
        scores = torch.matmul(q, k.transpose(2, 3))
        probs = torch.softmax(scores if mask4 is None else scores + mask4, dim=-1)
        o = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, D)
        h = r + linear(o, P(a + "out_proj.weight"), P(a + "out_proj.bias"))
        r = h
        x = layer_norm(h, P(p + "layer_norm2.weight"), P(p + "layer_norm2.bias"), eps)
        x = linear(act(linear(x, P(p + "mlp.fc1.weight"), P(p + "mlp.fc1.bias"))),
                   P(p + "mlp.fc2.weight"), P(p + "mlp.fc2.bias"))
        h = r + x
    collect.append(h)
    return h


def clip_vision_forward(vc, W, pixel_values, dtype=torch.float64):
    """CLIPVisionTransformer.forward: patch conv (stride = kernel = patch, no bias) -> prepend
    class_embedding -> + position_embedding -> pre_layrnorm -> encoder -> pooler = post_layernorm
    of the CLS token. hidden_states[0] is the pre_layrnorm output; last_hidden_state is the last
    layer's output without any norm (it equals hidden_states[-1])."""
    P = lambda k: W["vision_model." + k].to(dtype)
    D, ps = vc["hidden_size"], vc["patch_size"]
    B, C, Hh, Ww = pixel_values.shape
    gh, gw = Hh // ps, Ww // ps
    patches = (pixel_values.to(dtype).reshape(B, C, gh, ps, gw, ps)
               .permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * ps * ps))  # row-major patch order
    x = torch.matmul(patches, P("embeddings.patch_embedding.weight").reshape(D, -1).t())
    x = torch.cat([P("embeddings.class_embedding").expand(B, 1, D), x], dim=1)
    x = x + P("embeddings.position_embedding.weight")[None]
    x = layer_norm(x, P("pre_layrnorm.weight"), P("pre_layrnorm.bias"), vc["layer_norm_eps"])
    hidden = []
    last = clip_encoder(x, lambda k: W[k].to(dtype), "vision_model.", vc, hidden)
    pooled = layer_norm(last[:, 0], P("post_layernorm.weight"), P("post_layernorm.bias"), vc["layer_norm_eps"])
    return {"hidden_states": hidden, "last_hidden_state": last, "pooler_output": pooled}


def clip_text_forward(tc, W, input_ids, attention_mask, dtype=torch.float64):
    """CLIPTextTransformer.forward: token_embedding + position_embedding -> encoder under
    create_causal_mask's mask (causal, narrowed by the padding mask: key j is visible to query i iff
    j <= i and attention_mask[j] == 1) -> final_layer_norm. pooler_output is the state at the first
    eos_token_id of each row (the post-#24773 branch: the config's eos id is not 49407)."""
    P = lambda k: W["text_model." + k].to(dtype)
    B, T = input_ids.shape
    x = P("embeddings.token_embedding.weight")[input_ids] + P("embeddings.position_embedding.weight")[:T][None]
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & attention_mask.bool()[:, None, :]
    mask4 = torch.zeros(B, 1, T, T, dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    hidden = []
    last = clip_encoder(x, lambda k: W[k].to(dtype), "text_model.", tc, hidden, mask4)
    last = layer_norm(last, P("final_layer_norm.weight"), P("final_layer_norm.bias"), tc["layer_norm_eps"])
    eos = (input_ids == tc["eos_token_id"]).int().argmax(dim=-1)
    return {"last_hidden_state": last, "pooler_output": last[torch.arange(B), eos]}


def clip_model_outputs(W, image_pooled, text_pooled, dtype=torch.float64):
    """CLIPModel.forward with return_loss: both poolers projected (no bias), L2-normalised,
    logits_per_text = text @ image^T x exp(logit_scale); clip_loss = the mean of the cross-entropy
    over texts and over images against the diagonal."""
    image_embeds = linear(image_pooled.to(dtype), W["visual_projection.weight"].to(dtype))
    text_embeds = linear(text_pooled.to(dtype), W["text_projection.weight"].to(dtype))
    image_n = image_embeds / image_embeds.pow(2).sum(-1, keepdim=True).pow(0.5)
    text_n = text_embeds / text_embeds.pow(2).sum(-1, keepdim=True).pow(0.5)
    logits_per_text = torch.matmul(text_n, image_n.t()) * W["logit_scale"].to(dtype).exp()
    target = torch.arange(len(logits_per_text))
    loss = (F.cross_entropy(logits_per_text, target) + F.cross_entropy(logits_per_text.t(), target)) / 2
    return {"image_embeds": image_embeds, "text_embeds": text_embeds,
            "logits_per_text": logits_per_text, "loss": loss}


# ----------------------------------------------------------------------------------------------
# Independent second implementations, used only to check the ones above.
# ----------------------------------------------------------------------------------------------
def naive_decoder(cfg, W, input_ids, attention_mask=None, position_ids=None):
    """Loop-based float64 decoder: per token, per head, attention over the allowed keys only.
    Queries with no allowed key (left-padding rows) get a zero attention output here: their values
    are not comparable (transformers averages over all keys there), and nothing else reads them."""
    dt = torch.float64
    P = lambda k: W[k].to(dt)
    arch = cfg["model_type"]
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps = head_dim_of(cfg), cfg["rms_norm_eps"]
    qkv_bias = arch == "qwen2"
    rs = cfg.get("rope_scaling")
    factor = rs["factor"] if rs else 1.0
    theta = cfg["rope_theta"]
    inv = torch.tensor([theta ** (-(2.0 * i) / hd) for i in range(hd // 2)], dtype=dt)
    B, L = input_ids.shape
    mask = attention_mask if attention_mask is not None else torch.ones(B, L, dtype=torch.int64)
    pos_ids = position_ids.expand(B, L) if position_ids is not None else torch.arange(L)[None].expand(B, L)

    def rmsn(v, w):
        return v / torch.sqrt((v * v).mean() + eps) * w

    def rope(vec, pos):  # vec (hd,), pairs (vec[i], vec[i + hd/2]) rotated by pos/factor * inv[i]
        z = torch.complex(vec[:hd // 2], vec[hd // 2:]) * torch.polar(torch.ones_like(inv), (pos / factor) * inv)
        return torch.cat([z.real, z.imag])

    silu = lambda t: t / (1 + torch.exp(-t))
    out_hidden, out_logits, out_router = [], [], []
    for b in range(B):
        xs = [P("model.embed_tokens.weight")[int(input_ids[b, t])] for t in range(L)]
        hid = []
        routers = []
        for li in range(cfg["num_hidden_layers"]):
            hid.append(torch.stack(xs))
            p = f"model.layers.{li}."
            hs = [rmsn(x, P(p + "input_layernorm.weight")) for x in xs]
            a = p + "self_attn."

            def proj(name, v):
                y = P(a + name + ".weight") @ v
                return y + P(a + name + ".bias") if qkv_bias else y

            qs = [proj("q_proj", h).view(nh, hd) for h in hs]
            ks = [proj("k_proj", h).view(nkv, hd) for h in hs]
            vs = [proj("v_proj", h).view(nkv, hd) for h in hs]
            new = []
            for t in range(L):
                heads = []
                for hh in range(nh):
                    g = hh // (nh // nkv)
                    qv = rope(qs[t][hh], float(pos_ids[b, t]))
                    allowed = [s for s in range(t + 1) if int(mask[b, s]) == 1]
                    if not allowed:
                        heads.append(torch.zeros(hd, dtype=dt))
                        continue
                    sc = torch.stack([qv @ rope(ks[s][g], float(pos_ids[b, s])) / math.sqrt(hd) for s in allowed])
                    w = torch.exp(sc - sc.max())
                    w = w / w.sum()
                    heads.append(sum(w[j] * vs[s][g] for j, s in enumerate(allowed)))
                new.append(xs[t] + P(a + "o_proj.weight") @ torch.cat(heads))
            xs = new
            hs = [rmsn(x, P(p + "post_attention_layernorm.weight")) for x in xs]
            if arch == "mixtral":
                E, k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
                m = p + "block_sparse_moe."
                new, rl = [], []
                for t in range(L):
                    logits = P(m + "gate.weight") @ hs[t]
                    rl.append(logits)
                    pr = torch.exp(logits - logits.max())
                    pr = pr / pr.sum()
                    order = sorted(range(E), key=lambda e: -float(pr[e]))[:k]
                    dense = torch.zeros(E, dtype=dt)
                    for e in order:
                        dense[e] = pr[e] / sum(pr[j] for j in order)
                    y = torch.zeros(H, dtype=dt)
                    for e in range(E):  # every expert, unselected ones with weight 0
                        q = m + f"experts.{e}."
                        y = y + dense[e] * (P(q + "w2.weight") @ (silu(P(q + "w1.weight") @ hs[t]) *
                                                                   (P(q + "w3.weight") @ hs[t])))
                    new.append(xs[t] + y)
                routers.append(torch.stack(rl))
            else:
                m = p + "mlp."
                new = [xs[t] + P(m + "down_proj.weight") @ (silu(P(m + "gate_proj.weight") @ hs[t]) *
                                                            (P(m + "up_proj.weight") @ hs[t])) for t in range(L)]
            xs = new
        xs = [rmsn(x, P("model.norm.weight")) for x in xs]
        hid.append(torch.stack(xs))
        head = P("model.embed_tokens.weight" if cfg.get("tie_word_embeddings") else "lm_head.weight")
        out_hidden.append(hid)
        out_logits.append(torch.stack([head @ x for x in xs]))
        out_router.append(routers)
    hidden = [torch.stack([out_hidden[b][i] for b in range(B)]) for i in range(len(out_hidden[0]))]
    res = {"hidden_states": hidden, "logits": torch.stack(out_logits)}
    if arch == "mixtral":  # (B*L, E) per layer, batch-major like the reshape in the MoE block
        res["router_logits"] = [torch.cat([out_router[b][i] for b in range(B)])
                                for i in range(cfg["num_hidden_layers"])]
    return res


def naive_aux_loss(router_logits, E, k, attention_mask, B, L):
    """load_balancing_loss_func's formula evaluated with loops."""
    tok_count = [[0.0] * E for _ in range(k)]
    prob_sum = [0.0] * E
    n = 0.0
    for rl in router_logits:
        for idx in range(B * L):
            b, t = divmod(idx, L)
            w = 1.0 if attention_mask is None else float(attention_mask[b, t])
            pr = torch.softmax(rl[idx].double(), dim=-1)
            order = sorted(range(E), key=lambda e: -float(pr[e]))[:k]
            for slot, e in enumerate(order):
                tok_count[slot][e] += w
            for e in range(E):
                prob_sum[e] += w * float(pr[e])
            n += w
    return E * sum((tok_count[s][e] / n) * (prob_sum[e] / n) for s in range(k) for e in range(E))


def torch_encoder_layer(P, p, cfg, act):
    """torch's own pre-LN nn.TransformerEncoderLayer holding CLIP encoder layer `p`'s weights."""
    layer = torch.nn.TransformerEncoderLayer(
        cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"], dropout=0.0, activation=act,
        layer_norm_eps=cfg["layer_norm_eps"], batch_first=True, norm_first=True).to(torch.float64).eval()
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([P(p + f"self_attn.{n}_proj.weight") for n in "qkv"]))
        layer.self_attn.in_proj_bias.copy_(torch.cat([P(p + f"self_attn.{n}_proj.bias") for n in "qkv"]))
        layer.self_attn.out_proj.weight.copy_(P(p + "self_attn.out_proj.weight"))
        layer.self_attn.out_proj.bias.copy_(P(p + "self_attn.out_proj.bias"))
        layer.norm1.weight.copy_(P(p + "layer_norm1.weight"))
        layer.norm1.bias.copy_(P(p + "layer_norm1.bias"))
        layer.norm2.weight.copy_(P(p + "layer_norm2.weight"))
        layer.norm2.bias.copy_(P(p + "layer_norm2.bias"))
        layer.linear1.weight.copy_(P(p + "mlp.fc1.weight"))
        layer.linear1.bias.copy_(P(p + "mlp.fc1.bias"))
        layer.linear2.weight.copy_(P(p + "mlp.fc2.weight"))
        layer.linear2.bias.copy_(P(p + "mlp.fc2.bias"))
    return layer


def check_clip_independent(vc, W, pixel_values, ref):
    dt = torch.float64
    P = lambda k: W["vision_model." + k].to(dt)
    D, eps = vc["hidden_size"], vc["layer_norm_eps"]
    x = F.conv2d(pixel_values.to(dt), P("embeddings.patch_embedding.weight"), stride=vc["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    B = x.shape[0]
    x = torch.cat([P("embeddings.class_embedding").expand(B, 1, D), x], 1) + P("embeddings.position_embedding.weight")
    x = F.layer_norm(x, (D,), P("pre_layrnorm.weight"), P("pre_layrnorm.bias"), eps)
    close(x, ref["hidden_states"][0], 1e-12, "clip embeddings vs conv2d/F.layer_norm")
    assert vc["hidden_act"] == "quick_gelu"
    act = lambda t: t / (1.0 + torch.exp(-1.702 * t))  # written out again, not activation()
    for i in range(vc["num_hidden_layers"]):
        with torch.no_grad():
            x = torch_encoder_layer(P, f"encoder.layers.{i}.", vc, act)(x)
        close(x, ref["hidden_states"][i + 1], 1e-10, f"clip layer {i} vs nn.TransformerEncoderLayer")
    pooled = F.layer_norm(x[:, 0], (D,), P("post_layernorm.weight"), P("post_layernorm.bias"), eps)
    close(pooled, ref["pooler_output"], 1e-10, "clip pooler")


def check_clip_text_independent(tc, W, input_ids, attention_mask, ref, outs, image_pooled):
    """The text tower again with nn.TransformerEncoderLayer (a causal float mask plus
    src_key_padding_mask), the pooled row found by a Python loop, and the loss by explicit
    log-softmax sums."""
    dt = torch.float64
    P = lambda k: W["text_model." + k].to(dt)
    D, eps = tc["hidden_size"], tc["layer_norm_eps"]
    B, T = input_ids.shape
    x = F.embedding(input_ids, P("embeddings.token_embedding.weight"))
    x = x + F.embedding(torch.arange(T), P("embeddings.position_embedding.weight"))[None]
    causal = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
    pad = attention_mask == 0
    act = lambda t: t / (1.0 + torch.exp(-1.702 * t))
    for i in range(tc["num_hidden_layers"]):
        with torch.no_grad():
            x = torch_encoder_layer(P, f"encoder.layers.{i}.", tc, act)(x, src_mask=causal, src_key_padding_mask=pad)
    x = F.layer_norm(x, (D,), P("final_layer_norm.weight"), P("final_layer_norm.bias"), eps)
    # Padded query rows see the same real keys in both; compare the real positions.
    keep = attention_mask.bool()
    close(x[keep], ref["last_hidden_state"][keep], 1e-10, "clip text vs nn.TransformerEncoderLayer")
    for b in range(B):
        first = next(t for t in range(T) if int(input_ids[b, t]) == tc["eos_token_id"])
        close(x[b, first], ref["pooler_output"][b], 1e-10, f"clip text pooler row {b}")
    ti = linear(ref["pooler_output"], W["text_projection.weight"].to(dt))
    ii = linear(image_pooled.to(dt), W["visual_projection.weight"].to(dt))
    sim = [[float(W["logit_scale"].double().exp()) * float(ti[t] @ ii[i]) / float(ti[t].norm() * ii[i].norm())
            for i in range(B)] for t in range(B)]
    lse = lambda row: math.log(sum(math.exp(v) for v in row))
    loss_t = sum(lse(sim[t]) - sim[t][t] for t in range(B)) / B
    loss_i = sum(lse([sim[t][i] for t in range(B)]) - sim[i][i] for i in range(B)) / B
    close(torch.tensor((loss_t + loss_i) / 2, dtype=dt), outs["loss"], 1e-12, "clip loss vs explicit sums")


# ----------------------------------------------------------------------------------------------
# Helpers for checks and io files.
# ----------------------------------------------------------------------------------------------
def close(a, b, tol, what):
    err = (a.double() - b.double()).abs().max().item()
    scale = max(1.0, b.double().abs().max().item())
    if not err <= tol * scale:
        raise AssertionError(f"self-check failed: {what}: max abs diff {err:.3e} (tol {tol * scale:.1e})")
    return err


def max_diff(a, b):
    if isinstance(a, (list, tuple)):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return (a.double() - b.double()).abs().max().item()


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def router_margin(router_logits, k):
    """Smallest gap between consecutive probabilities among the top k+1 of any token."""
    m = float("inf")
    for rl in router_logits:
        pr = torch.sort(torch.softmax(rl.double(), -1), dim=-1, descending=True).values
        m = min(m, (pr[:, :k] - pr[:, 1:k + 1]).min().item())
    return m


# ----------------------------------------------------------------------------------------------
# Configs, as save_pretrained writes them (sorted keys, indent 2).
# ----------------------------------------------------------------------------------------------
CLIP_VISION = {
    "architectures": ["CLIPVisionModel"],
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 32,
    "image_size": 32,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model",
    "num_attention_heads": 4,
    "num_channels": 3,
    "num_hidden_layers": 2,
    "patch_size": 8,
    "projection_dim": 16,
    "torch_dtype": "float32",
    "transformers_version": TRANSFORMERS_VERSION,
}

CLIP_TEXT = {
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": 16, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05, "projection_dim": 16, "bos_token_id": 62, "eos_token_id": 63, "pad_token_id": 1,
}


def clip_full_config():
    # A composite CLIPConfig as recent save_pretrained writes it: sub-configs keep only what differs
    # from the sub-config class defaults (plus model_type), so e.g. hidden_act / layer_norm_eps /
    # num_channels are absent and a reader must fall back to CLIPVisionConfig's defaults.
    vision = {k: CLIP_VISION[k] for k in ("hidden_size", "image_size", "intermediate_size", "num_attention_heads",
                                          "num_hidden_layers", "patch_size", "projection_dim")}
    vision["model_type"] = "clip_vision_model"
    text = {k: v for k, v in CLIP_TEXT.items() if k not in ("hidden_act", "layer_norm_eps", "pad_token_id")}
    text["model_type"] = "clip_text_model"
    return {
        "architectures": ["CLIPModel"],
        "initializer_factor": 1.0,
        "logit_scale_init_value": 2.6592,
        "model_type": "clip",
        "projection_dim": 16,
        "text_config": text,
        "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "vision_config": vision,
    }


LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 2.0, "rope_type": "linear", "type": "linear"},
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": TRANSFORMERS_VERSION,
    "use_cache": True,
    "vocab_size": 128,
}

QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "max_window_layers": 2,
    "model_type": "qwen2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": TRANSFORMERS_VERSION,
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 128,
}

MIXTRAL = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "model_type": "mixtral",
    "num_attention_heads": 4,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02,
    "router_jitter_noise": 0.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "transformers_version": TRANSFORMERS_VERSION,
    "use_cache": True,
    "vocab_size": 128,
}

MODEL_META = {"format": "pt"}  # what save_pretrained puts in __metadata__
BATCH, SEQ, PAD_ID, VALID_ROW1 = 2, 7, 0, 4


# ----------------------------------------------------------------------------------------------
# Fixture builders.
# ----------------------------------------------------------------------------------------------
def llm_cases(cfg, seed):
    """(prefix, input_ids, attention_mask, position_ids, labels) for the three runs:
    ""        no mask, both rows full length;
    "masked." right padding (row 1 keeps its first VALID_ROW1 tokens), position_ids default;
    "left."   left padding of the same row, position_ids as generate() makes them
              (cumsum(mask) - 1, 1 at pads); no labels (the first real token would be scored from a
              pad position's logits)."""
    init = Init(seed)
    ids = init.ints(3, cfg["vocab_size"], (BATCH, SEQ))
    right = ids.clone()
    right[1, VALID_ROW1:] = PAD_ID
    rmask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    rmask[1, VALID_ROW1:] = 0
    left = ids.clone()
    left[1, :SEQ - VALID_ROW1] = PAD_ID
    left[1, SEQ - VALID_ROW1:] = ids[1, :VALID_ROW1]
    lmask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    lmask[1, :SEQ - VALID_ROW1] = 0
    lpos = (lmask.cumsum(-1) - 1).masked_fill(lmask == 0, 1)
    return [("", ids, None, None, ids.clone()),
            ("masked.", right, rmask, None, right.masked_fill(rmask == 0, -100)),
            ("left.", left, lmask, lpos, None)]


def llm_io(cfg, W, seed, name):
    moe = cfg["model_type"] == "mixtral"
    io, worst, results = {}, 0.0, {}
    for pre, x, m, pos, labels in llm_cases(cfg, seed):
        # positions whose outputs are defined: the query has at least one key it may attend to
        # (all of them without a mask or with right padding; the real tokens with left padding)
        valid = (m if m is not None else torch.ones_like(x)).cumsum(-1) > 0
        sel = lambda t: t[valid]
        ref = decoder_forward(cfg, W, x, m, torch.float64, pos)
        ref32 = decoder_forward(cfg, W, x, m, torch.float32, pos)
        worst = max(worst, max_diff(sel(ref32["logits"]), sel(ref["logits"])),
                    max(max_diff(sel(a), sel(b)) for a, b in zip(ref32["hidden_states"], ref["hidden_states"])))
        naive = naive_decoder(cfg, W, x, m, pos)
        for i, (a, b) in enumerate(zip(ref["hidden_states"], naive["hidden_states"])):
            close(sel(a), sel(b), 1e-5, f"{name} {pre}hidden_states.{i} vs loop implementation")
        close(sel(ref["logits"]), sel(naive["logits"]), 1e-5, f"{name} {pre}logits vs loop implementation")
        results[pre] = ref
        io[pre + "input_ids"] = x.clone()
        if m is not None:
            io[pre + "attention_mask"] = m.clone()
        if pos is not None:
            io[pre + "position_ids"] = pos.clone()
        for i, h in enumerate(ref["hidden_states"]):
            io[pre + f"hidden_states.{i}"] = f32(h)
        io[pre + "logits"] = f32(ref["logits"])
        lm_loss = None
        if labels is not None:
            io[pre + "labels"] = labels.clone()
            lm_loss = causal_lm_loss(ref["logits"], labels)
            # independent CE: -log softmax at the next token, averaged over labels != -100
            lp = torch.log_softmax(ref["logits"][:, :-1], -1)
            tgt = labels[:, 1:]
            terms = [-lp[b, t, tgt[b, t]] for b in range(BATCH) for t in range(SEQ - 1) if tgt[b, t] != -100]
            close(lm_loss, sum(terms) / len(terms), 1e-12, f"{name} {pre}loss")
        if moe:
            E, k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
            flat_valid = valid.reshape(-1)
            for i, rl in enumerate(ref["router_logits"]):
                close(rl[flat_valid], naive["router_logits"][i][flat_valid], 1e-5, f"{name} {pre}router_logits.{i} vs loop")
                io[pre + f"router_logits.{i}"] = f32(rl)
                io[pre + f"selected_experts.{i}"] = ref["selected_experts"][i].clone()
                io[pre + f"routing_weights.{i}"] = f32(ref["routing_weights"][i])
                if not torch.equal(ref["selected_experts"][i][flat_valid], ref32["selected_experts"][i][flat_valid]):
                    raise AssertionError(f"{name}: float32 and float64 route differently")
            margin = router_margin([rl[flat_valid] for rl in ref["router_logits"]], k)
            if margin < 1e-3:
                raise AssertionError(f"{name}: router near-tie (margin {margin:.2e}); change the seed")
            aux = load_balancing_loss(ref["router_logits"], E, k, m)
            close(aux, torch.tensor(naive_aux_loss(ref["router_logits"], E, k, m, BATCH, SEQ), dtype=torch.float64),
                  1e-12, f"{name} {pre}aux_loss vs loop")
            io[pre + "aux_loss"] = f32(aux.reshape(1))
            if lm_loss is not None:
                io[pre + "lm_loss"] = f32(lm_loss.reshape(1))
                # MixtralForCausalLM(labels=..., output_router_logits=True).loss
                io[pre + "loss"] = f32((lm_loss + cfg["router_aux_loss_coef"] * aux).reshape(1))
        elif lm_loss is not None:
            io[pre + "loss"] = f32(lm_loss.reshape(1))
    # padding checks: row 0 is unpadded in every run; row 1's real tokens give the outputs of that
    # row alone, unpadded (right padding: every layer; left padding with generate()'s position_ids:
    # every layer too, at the shifted positions)
    ids = io["input_ids"]
    alone = decoder_forward(cfg, W, ids[1:, :VALID_ROW1], None, torch.float64)
    for pre in ("masked.", "left."):
        for i, (a, b) in enumerate(zip(results[""]["hidden_states"], results[pre]["hidden_states"])):
            close(a[0], b[0], 1e-12, f"{name} {pre} row 0 hidden_states.{i}")
        got = slice(0, VALID_ROW1) if pre == "masked." else slice(SEQ - VALID_ROW1, SEQ)
        for i, h in enumerate(alone["hidden_states"]):
            close(h[0], results[pre]["hidden_states"][i][1, got], 1e-12, f"{name} {pre} row 1 hidden_states.{i} vs alone")
        close(alone["logits"][0], results[pre]["logits"][1, got], 1e-12, f"{name} {pre} row 1 logits vs alone")
    return io, worst


def io_meta(worst, extra=None):
    meta = {"format": "pt", "generator": "tests/reference/hf_models.py", "reference_dtype": "float64",
            "max_abs_diff_float32_vs_float64": f"{worst:.3e}"}
    meta.update(extra or {})
    return meta


def build_clip(out):
    W = clip_vision_weights(CLIP_VISION, seed=1001)
    pixel_values = Init(1002).normal((BATCH, 3, CLIP_VISION["image_size"], CLIP_VISION["image_size"]), 1.0)
    ref = clip_vision_forward(CLIP_VISION, W, pixel_values)
    ref32 = clip_vision_forward(CLIP_VISION, W, pixel_values, torch.float32)
    check_clip_independent(CLIP_VISION, W, pixel_values, ref)
    close(ref["last_hidden_state"], ref["hidden_states"][-1], 0.0, "clip last_hidden_state")
    worst = max(max_diff(ref32["hidden_states"], ref["hidden_states"]), max_diff(ref32["pooler_output"], ref["pooler_output"]))
    io = {"pixel_values": pixel_values.clone()}
    for i, h in enumerate(ref["hidden_states"]):
        io[f"hidden_states.{i}"] = f32(h)
    io["last_hidden_state"] = f32(ref["last_hidden_state"])
    io["pooler_output"] = f32(ref["pooler_output"])
    out.json("clip_vision/config.json", CLIP_VISION)
    out.safetensors("clip_vision/model.safetensors", W, MODEL_META)
    out.safetensors("clip_vision/io.safetensors", io, io_meta(worst))

    # CLIPModel: the same vision tower under the same keys, plus a text tower and the heads.
    full = dict(W)
    full.update(clip_text_and_heads_weights(CLIP_TEXT, CLIP_VISION["hidden_size"], 16, seed=1003))
    # checkpoints saved by transformers < 4.31 also persisted the position_ids buffers
    npos = (CLIP_VISION["image_size"] // CLIP_VISION["patch_size"]) ** 2 + 1
    full["vision_model.embeddings.position_ids"] = torch.arange(npos, dtype=torch.int64)[None]
    full["text_model.embeddings.position_ids"] = torch.arange(CLIP_TEXT["max_position_embeddings"], dtype=torch.int64)[None]
    io_full = dict(io)
    # CLIPModel.get_image_features: visual_projection(pooler_output), not normalised
    io_full["image_embeds"] = f32(linear(ref["pooler_output"], full["visual_projection.weight"].double()))
    # The text tower: right-padded rows of BOS, tokens, EOS (as CLIPTokenizer writes them), one
    # per image, and CLIPModel's contrastive outputs for the pairs.
    tc = CLIP_TEXT
    lengths = [6, 4]
    text_ids = torch.full((BATCH, max(lengths) + 2), tc["pad_token_id"], dtype=torch.int64)
    text_mask = torch.zeros_like(text_ids)
    body = Init(1004).ints(2, 60, (BATCH, max(lengths)))
    for b, n in enumerate(lengths):
        text_ids[b, 0] = tc["bos_token_id"]
        text_ids[b, 1:n + 1] = body[b, :n]
        text_ids[b, n + 1] = tc["eos_token_id"]
        text_mask[b, :n + 2] = 1
    tref = clip_text_forward(tc, full, text_ids, text_mask)
    tref32 = clip_text_forward(tc, full, text_ids, text_mask, torch.float32)
    outs = clip_model_outputs(full, ref["pooler_output"], tref["pooler_output"])
    check_clip_text_independent(tc, full, text_ids, text_mask, tref, outs, ref["pooler_output"])
    keep = text_mask.bool()
    worst = max(worst, max_diff(tref32["last_hidden_state"][keep], tref["last_hidden_state"][keep]))
    io_full["text_input_ids"] = text_ids
    io_full["text_attention_mask"] = text_mask
    io_full["text_last_hidden_state"] = f32(tref["last_hidden_state"])
    io_full["text_pooler_output"] = f32(tref["pooler_output"])
    io_full["text_embeds"] = f32(outs["text_embeds"])
    io_full["logits_per_text"] = f32(outs["logits_per_text"])
    io_full["clip_loss"] = f32(outs["loss"].reshape(1))
    out.json("clip_full/config.json", clip_full_config())
    out.safetensors("clip_full/model.safetensors", full, MODEL_META)
    out.safetensors("clip_full/io.safetensors", io_full, io_meta(worst))


def shard(W, first):
    """Two shards: `first` holds keys for which first(key) is true."""
    a = {k: v for k, v in W.items() if first(k)}
    b = {k: v for k, v in W.items() if not first(k)}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    index = {
        # modeling_utils: total_size = sum of numel * element_size over all tensors
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in W.values())},
        "weight_map": {k: names[0] if k in a else names[1] for k in sorted(W)},
    }
    return (a, b), names, index


def build_llama(out):
    W = decoder_weights(LLAMA, seed=2001, arch="llama")
    io, worst = llm_io(LLAMA, W, seed=2002, name="llama")
    out.json("llama/config.json", LLAMA)
    out.safetensors("llama/model.safetensors", W, MODEL_META)
    out.safetensors("llama/io.safetensors", io, io_meta(worst))

    # Sharded: shard 1 = embeddings, layer 0 and layer 1's attention (a layer split across files,
    # as transformers' size-based sharding can do); shard 2 = the rest.
    (a, b), names, index = shard(W, lambda k: k.startswith(("model.embed_tokens.", "model.layers.0.", "model.layers.1.self_attn.")))
    out.json("llama_sharded/config.json", LLAMA)
    out.safetensors("llama_sharded/" + names[0], a, MODEL_META)
    out.safetensors("llama_sharded/" + names[1], b, MODEL_META)
    out.json("llama_sharded/model.safetensors.index.json", index)
    out.safetensors("llama_sharded/io.safetensors", io, io_meta(worst))
    # check: reassemble through the index exactly as a loader would, and compare outputs
    loaded = {}
    for key, fname in json.loads(out.files["llama_sharded/model.safetensors.index.json"])["weight_map"].items():
        tensors, _ = parse_safetensors(out.files["llama_sharded/" + fname])
        loaded[key] = tensors[key]
    assert set(loaded) == set(W) and all(torch.equal(loaded[k], W[k]) for k in W), "sharded != unsharded"
    ids = io["input_ids"]
    assert torch.equal(decoder_forward(LLAMA, loaded, ids)["logits"], decoder_forward(LLAMA, W, ids)["logits"])

    # bf16: the same weights rounded to bfloat16 (round-to-nearest-even); outputs from those
    # rounded weights upcast exactly to float32/float64.
    cfg = dict(LLAMA, torch_dtype="bfloat16")
    Wb = {k: v.to(torch.bfloat16) for k, v in W.items()}
    Wb_up = {k: v.to(torch.float32) for k, v in Wb.items()}
    io_b, worst_b = llm_io(cfg, Wb_up, seed=2002, name="llama_bf16")
    assert max_diff(io_b["logits"], io["logits"]) > 1e-4, "bf16 rounding should change the outputs"
    out.json("llama_bf16/config.json", cfg)
    out.safetensors("llama_bf16/model.safetensors", Wb, MODEL_META)
    out.safetensors("llama_bf16/io.safetensors", io_b, io_meta(worst_b, {"weights": "bf16 upcast to fp32"}))


def build_qwen2(out):
    W = decoder_weights(QWEN2, seed=3001, arch="qwen2")
    assert "lm_head.weight" not in W
    io, worst = llm_io(QWEN2, W, seed=3002, name="qwen2")
    out.json("qwen2/config.json", QWEN2)
    out.safetensors("qwen2/model.safetensors", W, MODEL_META)
    out.safetensors("qwen2/io.safetensors", io, io_meta(worst))


def build_mixtral(out):
    W = decoder_weights(MIXTRAL, seed=4007, arch="mixtral")  # seed picked for a router margin > 5e-3
    io, worst = llm_io(MIXTRAL, W, seed=4002, name="mixtral")
    # the masked aux loss must differ from the unmasked one (padding tokens are excluded)
    assert abs(io["aux_loss"].item() - io["masked.aux_loss"].item()) > 1e-6
    out.json("mixtral/config.json", MIXTRAL)
    out.safetensors("mixtral/model.safetensors", W, MODEL_META)
    out.safetensors("mixtral/io.safetensors", io, io_meta(worst))


def check_rope_linear():
    # inv_freq / factor (transformers >= 4.45) == positions / factor (older LlamaLinearScalingRotaryEmbedding)
    cfg = dict(LLAMA)
    pos = torch.arange(SEQ)[None]
    cos, sin = rope_cos_sin(cfg, pos, torch.float32)
    plain = dict(cfg, rope_scaling=None)
    inv = rope_inv_freq(plain)
    freqs = torch.outer(pos[0].float() / cfg["rope_scaling"]["factor"], inv)
    emb = torch.cat((freqs, freqs), -1)
    close(cos, emb.cos()[None], 1e-6, "rope linear cos")
    close(sin, emb.sin()[None], 1e-6, "rope linear sin")


def main():
    torch.set_num_threads(1)
    out_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    out = Out(out_dir)
    check_rope_linear()
    build_clip(out)
    build_llama(out)
    build_qwen2(out)
    build_mixtral(out)
    out.write()
    total = sum(len(v) for v in out.files.values())
    for rel in sorted(out.files):
        print(f"{len(out.files[rel]):8d}  {rel}")
    print(f"{total:8d}  total bytes in {out_dir}")


if __name__ == "__main__":
    main()
