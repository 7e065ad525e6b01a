"""Attention row by row (core/row_attention.py, used with 16-bit weights on a CPU) computes what attention over
each row's own tokens is: checked against a direct softmax(QK^T)V on left-padded batches, for a prompt read at
once, a prompt's later piece over a cache, drafted tokens checked one by one, and one decode step."""
import math

import pytest
import torch

from core.row_attention import attention


class Layer:  # what the attention function reads from its module
    pass


def direct(q, k, v, scale):
    """Each query i of n over m keys may see keys up to m - n + i (the newest n positions are the queries)."""
    n, m = q.shape[1], k.shape[1]
    groups = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
    scores = (q @ k.transpose(-1, -2)) * scale
    allowed = torch.ones(n, m, dtype=torch.bool).tril(m - n)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("q_len,k_len", [(12, 12), (10, 16), (4, 12), (3, 12), (1, 12)])
def test_each_row_attends_to_its_own_tokens_only(q_len, k_len):
    torch.manual_seed(0)
    heads, kv_heads, dim, pads = 6, 2, 16, [0, 5, 9]
    batch = len(pads)
    query = torch.randn(batch, heads, q_len, dim, dtype=torch.float32)
    key, value = (torch.randn(batch, kv_heads, k_len, dim, dtype=torch.float32) for _ in range(2))
    # transformers' boolean mask: query i sees key j if j is a real token and j <= its own position
    position = torch.arange(k_len - q_len, k_len)[:, None]
    mask = torch.stack([(torch.arange(k_len) >= pad) & (torch.arange(k_len) <= position) for pad in pads])[:, None]
    scale = 1 / math.sqrt(dim)
    out, _ = attention(Layer(), query, key, value, mask, scaling=scale)
    assert out.shape == (batch, q_len, heads, dim)
    for row, pad in enumerate(pads):
        first = max(0, pad - (k_len - q_len))
        expected = direct(query[row, :, first:], key[row, :, pad:], value[row, :, pad:], scale)
        torch.testing.assert_close(out[row, first:].transpose(0, 1), expected)
        assert not out[row, :first].any()  # queries over padding
    # No mask (no padding anywhere): the same as a mask that allows every real token
    unpadded = torch.stack([(torch.arange(k_len) <= position)] * batch)[:, None]
    torch.testing.assert_close(attention(Layer(), query, key, value, None, scaling=scale)[0],
                               attention(Layer(), query, key, value, unpadded, scaling=scale)[0])


@pytest.mark.parametrize("held", [torch.float32, torch.bfloat16])
def test_a_decode_step_gives_each_row_exactly_what_a_drafted_token_over_the_same_keys_gets(held):
    """A decode step (one query a row) takes its own shorter path; each row's output is bit for bit what the general
    path computes for the same query as the last of two drafted tokens over the same keys (the two have to agree:
    prompt lookup's drafted tokens stand for decode steps); a row all padding stays zero."""
    torch.manual_seed(1)
    heads, kv_heads, dim, k_len, pads = 9, 3, 64, 300, [0, 7, 120, 300]
    query = torch.randn(len(pads), heads, 2, dim).bfloat16()
    key, value = (torch.randn(len(pads), kv_heads, k_len, dim).to(held) for _ in range(2))
    position = torch.arange(k_len - 2, k_len)[:, None]
    mask = torch.stack([(torch.arange(k_len) >= pad) & (torch.arange(k_len) <= position) for pad in pads])[:, None]
    two, _ = attention(Layer(), query, key, value, mask, scaling=0.125)
    for step_mask in (mask[:, :, -1:].clone(), mask[:, :, -1:].clone()):  # the second: a new mask, same rows
        one, _ = attention(Layer(), query[:, :, 1:], key, value, step_mask, scaling=0.125)
        assert one.dtype == torch.bfloat16 and torch.equal(one[:, 0], two[:, 1])
        assert not one[-1].any() and two[0, 1].any()
    unpadded, _ = attention(Layer(), query[:1, :, 1:], key[:1], value[:1], None, scaling=0.125)
    assert torch.equal(unpadded[0, 0], two[0, 1])


def test_a_bf16_model_decodes_the_same_logits_with_its_cache_held_in_fp32(lab):
    """core/kv_cache.py holds a 16-bit model's CPU cache in fp32 for the row-by-row attention (which computes in
    fp32 anyway): the same logits, bit for bit, as a cache held in bf16, for a prompt read in two pieces and
    decode steps after it."""
    from transformers import DynamicCache

    from core.kv_cache import roomy
    from core.lab import Lab
    from core.row_attention import held_dtype

    if lab.settings.resolved_device != "cpu":
        pytest.skip("a CPU's option: a GPU keeps transformers' cache")
    model = Lab(lab.settings.with_(decode_weights="bf16")).models.generator.model
    assert model.dtype == torch.bfloat16 and held_dtype(model) == torch.float32
    ids = torch.randint(0, 5000, (2, 90), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :17] = 0  # the second row left-padded
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    def decoded(held):
        cache, logits, out = roomy(DynamicCache(config=model.config), held), None, []
        with torch.inference_mode():
            for piece in (slice(0, 50), slice(50, 90)):
                logits = model(input_ids=ids[:, piece], attention_mask=mask[:, :piece.stop],
                               position_ids=positions[:, piece], past_key_values=cache, logits_to_keep=1).logits
            step_mask, step_positions = mask, positions[:, -1:]
            for _ in range(6):
                out.append(logits[:, -1])
                step_mask = torch.cat([step_mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
                step_positions = step_positions + 1
                logits = model(input_ids=logits[:, -1].argmax(-1, keepdim=True), attention_mask=step_mask,
                               position_ids=step_positions, past_key_values=cache, logits_to_keep=1).logits
        assert cache.layers[0].keys.dtype == (held or torch.bfloat16)
        return torch.stack(out)

    assert torch.equal(decoded(None), decoded(torch.float32))
