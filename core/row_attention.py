"""Attention row by row, over each row's own tokens only: a row's answer then does not depend on which other rows
share its batch. With 16-bit weights on a CPU, transformers' attention computes a left-padded batch (a mask, and
another kernel path for a single query) differently from the same row alone, and near-ties flip. Together with
core/cpu_linear.py's lone row as two (the other part that depended on the batch), 8 of 8 answers decoded together
match their answers alone in bf16, where 5 of 8 did before; fp32 matched 8 of 8 either way and keeps SDPA."""
from __future__ import annotations

NAME = "lab_rows"
# Up to this many new queries over a cache (prompt lookup's drafted tokens) are computed one at a time, exactly as
# the decode steps they replace; a piece of a prompt is computed at once.
FEW_QUERIES = 8
# Model types whose attention is plain causal attention through transformers' attention interface (no sliding
# window, soft-capping or sinks, which this function does not compute); others keep SDPA, batch-dependent in bf16.
PLAIN_CAUSAL = {"llama", "qwen2", "qwen3", "granite"}
# Decode steps (one query a row) take their own shorter path (_decode_step); bench/bench_compare.py switches it off.
DECODE_STEP_PATH = True
_registered = False


def use_row_attention(model) -> bool:
    """Have `model` attend row by row (its mask is still built the way SDPA's is: left padding as padding), where
    its attention is plain causal attention; whether it does."""
    config = model.config
    if config.model_type not in PLAIN_CAUSAL or getattr(config, "use_sliding_window", False):
        return False
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    model.set_attn_implementation(NAME)
    return True


def held_dtype(model):
    """The dtype a CPU KV cache holds for `model` (core/kv_cache.py): fp32 where a 16-bit model attends row by row,
    since each step would otherwise cast every row's keys and values up; None (as computed) elsewhere."""
    import torch

    rows = getattr(model.config, "_attn_implementation", None) == NAME
    return torch.float32 if rows and model.dtype in (torch.bfloat16, torch.float16) else None


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              **kwargs):
    """transformers' attention signature: query (batch, heads, q, dim), key/value (batch, kv heads, k, dim), a
    boolean mask (batch, 1, q, k) or None; returns (batch, q, heads, dim). Each row's real keys are the ones its
    last query may see (left padding: a contiguous tail); its queries over padding are left at zero."""
    return attend(query, key, value, _starts(attention_mask, query.shape[0]), scaling), None


def attend(query, key, value, starts: list[int], scaling: float | None):
    """`attention` for rows whose real keys start at `starts` (core/lean_step.py knows them without a mask)."""
    import torch
    import torch.nn.functional as F

    batch, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    if q_len == 1 and DECODE_STEP_PATH and all(k_len - start > 1 for start in starts if start < k_len):
        return _decode_step(query, key, value, starts, scaling)
    out = query.new_zeros(batch, q_len, heads, value.shape[-1])
    grouped = key.shape[1] != heads
    for row, start in enumerate(starts):
        first = max(0, start - (k_len - q_len))  # the first query that is a real token
        if first >= q_len or start >= k_len:
            continue  # a row that is all padding in this piece of its prompt
        q, k, v = query[row:row + 1, :, first:], key[row:row + 1, :, start:], value[row:row + 1, :, start:]
        n, m = q.shape[2], k.shape[2]
        if n <= FEW_QUERIES and m > n:  # decode steps, and drafted tokens each as the decode step it stands for
            o = torch.cat([_one_query(q[0, :, i], k[0, :, :m - n + i + 1], v[0, :, :m - n + i + 1], scaling)
                           for i in range(n)], dim=1)[None]
        else:
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache held in fp32 (held_dtype) holds 16-bit values exactly
            mask = None if n == m else torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=n > 1 and n == m, scale=scaling,
                                               enable_gqa=grouped)
        out[row, first:] = o[0].transpose(0, 1)
    return out


def _decode_step(query, key, value, starts: list[int], scaling):
    """A decode step (one query a row): what `attention`'s loop computes for it, bit for bit, in fewer operations a
    row (a four-row step's attention spent about half its time on operations around the two products)."""
    import torch

    batch, heads, _, dim = query.shape
    queries = query[:, :, 0].float()  # exact; _one_query computes in fp32 anyway
    out = torch.zeros(batch, 1, heads, value.shape[-1], dtype=torch.float32, device=query.device)
    for row, start in enumerate(starts):
        if start < key.shape[2]:  # a row all padding is left at zero
            out[row, 0] = _one_query(queries[row], key[row, :, start:], value[row, :, start:], scaling)[:, 0]
    return out.to(query.dtype)  # rounded once, as the loop's assignment into query.dtype rounds each row


_last_mask: tuple = (None, None)  # the mask of the last call and its rows' starts: every layer of a pass gets the same


def _starts(attention_mask, batch: int) -> list[int]:
    """Where each row's real keys start (left padding), from transformers' boolean mask (None: no padding)."""
    global _last_mask
    if attention_mask is None:
        return [0] * batch
    held, starts = _last_mask
    if held is not attention_mask:
        starts = (~attention_mask[:, 0, -1, :]).sum(-1).tolist()
        _last_mask = (attention_mask, starts)
    return starts


def _one_query(q, k, v, scaling):
    """One query's attention over its keys, in fp32: q (heads, dim), k/v (kv heads, keys, dim) -> (heads, 1, dim).
    torch's flash kernel took 454 us a call in bf16 here against 220 us in fp32 for one query, and plain products
    of one query take less than either."""
    kv_heads, _, dim = k.shape
    q = q.float().reshape(kv_heads, -1, dim)  # the query heads that share each key head
    scores = (q @ k.float().transpose(1, 2)) * (scaling if scaling is not None else dim ** -0.5)
    out = scores.softmax(-1) @ v.float()
    return out.reshape(-1, 1, dim).to(v.dtype)
