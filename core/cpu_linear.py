"""How the chat model's linear layers compute a few rows on a CPU (decode steps: 1-8 rows), loaded once per model.
Weights and state dict are unchanged: only each layer instance's forward is wrapped."""
from __future__ import annotations


def few_rows_by_columns(model) -> None:
    """fp32: compute each linear layer as W @ x^T when it gets 1-8 rows: the same product, but MKL's x @ W^T (and
    its matrix-vector path for one row) is slow here for weights read from memory. The Compare tab decodes its
    columns together, 2-4 rows a step; measured on this model with ~1,000 cached tokens, a decode step over 4 rows
    took 156 ms this way against 242 ms (1 row: ~110 ms); SmolLM2's 49152x576 LM head alone took 13 ms for 4 rows
    against 46 ms. A single row is sent as two copies of itself (the matrix-vector path took 10 ms for the head
    against 4 ms so): a one-row decode step took 29-53 ms against 59-71 ms (2026-12-04). Prompts (many rows) are
    unchanged."""
    import torch

    def wrapped(layer, plain):
        def forward(x):
            rows = x.numel() // x.shape[-1]
            if not 1 <= rows <= 8:
                return plain(x)
            flat = x.reshape(rows, x.shape[-1])
            if rows == 1:
                flat = torch.cat([flat, flat])
            out = (layer.weight @ flat.T).T[:rows].contiguous()
            if layer.bias is not None:
                out = out + layer.bias
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return forward

    for layer in _linear_layers(model):
        layer.forward = wrapped(layer, layer.forward)


def lone_rows_as_two(model) -> None:
    """16-bit weights: MKL's own layout is the fast one (the LM head: 4.6 ms for 2 rows against 6.9 ms by
    columns), but its one-row path may round differently from the same row among others (here the 576x1536
    down-projection did, for 2-64 rows it did not), so a row's answer would depend on whether it decodes alone.
    A layer whose shape does so, found by a probe at load, gets a lone row as two copies of itself; the others
    are left alone (sending every layer's lone row as two cost 23.8 -> 18.4 tokens/s)."""
    import torch

    def wrapped(plain):
        def forward(x):
            if x.numel() != x.shape[-1]:
                return plain(x)
            return plain(torch.cat([x.reshape(1, -1)] * 2))[:1].reshape(*x.shape[:-1], -1)
        return forward

    verdicts: dict[tuple, bool] = {}
    for layer in _linear_layers(model):
        shape = (tuple(layer.weight.shape), layer.weight.dtype, layer.bias is not None)
        if shape not in verdicts:
            verdicts[shape] = _one_row_rounds_apart(layer, torch)
        if verdicts[shape]:
            layer.forward = wrapped(layer.forward)


def _one_row_rounds_apart(layer, torch, rows: int = 32) -> bool:
    """Whether some of `rows` random inputs come out different alone than in one product with the rest."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 1, layer.in_features, generator=generator).to(layer.weight.dtype)
    with torch.no_grad():
        together = layer(x)
        return any(not torch.equal(layer(x[i:i + 1].clone()), together[i:i + 1]) for i in range(rows))


def _linear_layers(model) -> list:
    import torch

    return [layer for layer in model.modules() if type(layer) is torch.nn.Linear]
