"""Decode steps (and prompt lookup's few drafted tokens) of a plain causal decoder on a CPU, run straight through the
model's own modules without transformers' plumbing around them: no 4-D mask built each step (core.row_attention
needs only where each row's keys start), the rotary embedding in four operations instead of seven for each of the
query and the key, the RMS norms as torch's one fused operation where a probe finds it bit for bit the same. A bf16
step of SmolLM2 over ~1,000 cached tokens (Intel Xeon with AMX, 2 threads; one process, alternating, median of 3
runs) took 29.3 against 30.4 ms for one row, 43.4 against 45.2 for four.

Only where it computes exactly what the model's forward does: the layer classes it was written against, the row
attention, and a probe (run at load by core.models) that compares its logits with the model's forward, bit for bit,
on a short prompt (one row and two, left-padded; a decode step and a step with a drafted token). Anything else (a batch of
mixed adapters, a piece of a prompt, a model that fails the probe) takes the model's forward."""
from __future__ import annotations

import logging
import weakref

from core import row_attention

log = logging.getLogger(__name__)

# bench/bench_compare.py switches this off to measure the step through transformers' forward.
LEAN_STEPS = True
# Decoder layers whose forward this module computes: norm, attention (q/k/v, rotary, cache, o), residual, norm,
# gated MLP, residual. (Qwen3's query/key norms and Granite's multipliers are not; those models keep the forward.)
LAYERS = {"LlamaDecoderLayer", "Qwen2DecoderLayer"}

_verdicts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a causal LM -> whether its probe passed


def causal_lm(model):
    """The transformers model inside a peft wrapper (or `model` itself)."""
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


def usable(model) -> bool:
    """Whether decode steps of `model` (a causal LM, or peft's wrapper of one, with the adapters it has now) can take
    `forward`: the structure it computes, no adapter whose forward does more than its layers (peft's aLoRA reads the
    tokens), and the probe passed (run once per model: core.models runs it at load)."""
    causal = causal_lm(model)
    if not LEAN_STEPS or not _shaped(causal):
        return False
    if any(getattr(config, "alora_invocation_tokens", None) for config in getattr(model, "peft_config", {}).values()):
        return False
    if causal not in _verdicts:
        try:
            _verdicts[causal] = _probe(model)
        except Exception:  # noqa: BLE001 - a model the probe cannot run: the forward, which can
            log.warning("lean decode steps off for this model: the probe failed", exc_info=True)
            _verdicts[causal] = False
    return _verdicts[causal]


def forward(model, input_ids, mask, positions, cache, last: int = 1):
    """The logits of the last `last` positions, as the model's forward gives them for these arguments (the engine's
    own: a 2-D mask of left padding over the cache and the new tokens, their positions, a cache that appends);
    None where this step is not one it computes (the caller takes the model's forward)."""
    import torch

    new, cached = input_ids.shape[1], cache.get_seq_length()
    if new != last or new > row_attention.FEW_QUERIES + 1 or not cached or cached + new != mask.shape[1]:
        return None  # a piece of a prompt, or arguments of another kind: the model's forward
    causal = causal_lm(model)
    inner = causal.model
    starts = (mask == 0).sum(-1).tolist()  # left padding: where each row's real keys start
    hidden = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(hidden, positions)
    half = sin.shape[-1] // 2
    # rotate_half(x) * sin == roll(x, half) * sin with its first half negated: the same products, exactly
    cos, sin = cos.unsqueeze(1), torch.cat([-sin[..., :half], sin[..., half:]], dim=-1).unsqueeze(1)
    for layer in inner.layers[:causal.config.num_hidden_layers]:
        hidden = _layer(layer, hidden, cos, sin, half, starts, cache)
    logits = causal.lm_head(inner.norm(hidden[:, -last:]))
    return logits[:, -1] if last == 1 else logits


def _layer(layer, hidden, cos, sin, half: int, starts: list[int], cache):
    attention, mlp = layer.self_attn, layer.mlp
    rows, new, _ = hidden.shape
    x = _norm(layer.input_layernorm, hidden)
    heads = (rows, new, -1, attention.head_dim)
    q = attention.q_proj(x).view(heads).transpose(1, 2)
    k = attention.k_proj(x).view(heads).transpose(1, 2)
    v = attention.v_proj(x).view(heads).transpose(1, 2)
    q = q * cos + q.roll(half, -1) * sin
    k = k * cos + k.roll(half, -1) * sin
    k, v = cache.update(k, v, attention.layer_idx)
    out = row_attention.attend(q, k, v, starts, attention.scaling)
    hidden = hidden + attention.o_proj(out.reshape(rows, new, -1))
    x = _norm(layer.post_attention_layernorm, hidden)
    return hidden + mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))


_fused_norms: dict[tuple, bool] = {}  # (width, eps, dtype) -> torch.rms_norm gives the model's norm bit for bit


def _norm(norm, x):
    import torch

    eps, width = norm.variance_epsilon, x.shape[-1]
    x32 = x.float()
    key = (width, eps, x.dtype)
    if key not in _fused_norms:
        _fused_norms[key] = _fused_norm_agrees(width, eps, x.dtype)
    if _fused_norms[key]:
        return norm.weight * torch.rms_norm(x32, (width,), eps=eps).to(x.dtype)
    return norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _fused_norm_agrees(width: int, eps: float, dtype) -> bool:
    """Whether torch's fused RMS norm equals the models' written-out one on random rows of many scales."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, width, generator=generator) * torch.logspace(-3, 3, 64)[:, None, None]
    x = x.to(dtype).float()
    written = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return all(torch.equal(torch.rms_norm(part, (width,), eps=eps), written[i:i + 1])
               for i, part in enumerate(x.split(1)))


def _shaped(causal) -> bool:
    config = causal.config
    inner = getattr(causal, "model", None)
    layers = getattr(inner, "layers", None)
    if getattr(config, "_attn_implementation", None) != row_attention.NAME or layers is None \
            or not all(hasattr(inner, name) for name in ("embed_tokens", "rotary_emb", "norm")) \
            or not hasattr(causal, "lm_head"):
        return False
    return all(type(layer).__name__ in LAYERS for layer in layers)


def _probe(model) -> bool:
    """The lean step's logits equal the model's forward's, bit for bit, after a short prompt: a decode step of one
    row and of two (the second left-padded), and one row's step with a drafted token (prompt lookup's)."""
    import copy

    import torch
    from transformers import DynamicCache

    from core.kv_cache import roomy

    causal = causal_lm(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(1000, causal.config.vocab_size), (2, 12), generator=generator)
    ids = ids.to(next(causal.parameters()).device)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        for rows, new in ((1, 1), (2, 1), (1, 2)):
            cut = ids.shape[1] - new
            cache = roomy(DynamicCache(config=causal.config), row_attention.held_dtype(causal))
            model(input_ids=ids[:rows, :cut], attention_mask=mask[:rows, :cut], position_ids=positions[:rows, :cut],
                  past_key_values=cache, use_cache=True)
            step = ids[:rows, cut:], mask[:rows], positions[:rows, cut:]
            lean = forward(model, *step, copy.deepcopy(cache), last=new)
            plain = model(input_ids=step[0], attention_mask=step[1], position_ids=step[2], past_key_values=cache,
                          use_cache=True).logits[:, -new:]
            if lean is None or not torch.equal(lean, plain[:, -1] if new == 1 else plain):
                return False
    return True
