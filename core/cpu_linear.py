"""How the chat model's linear layers compute on a CPU, set once per model at load: in fp32 a few rows (decode steps:
1-8 rows) by columns; in bf16 with each weight packed once for oneDNN; in int8 (weight-only) from an int8 copy of
each weight with a scale per output channel. Weights and state dict are unchanged: only each layer instance's
forward is wrapped."""
from __future__ import annotations

# oneDNN packs a weight for a number of rows (its layout, and so its kernels, follow it); any number of rows computes
# with it. Tried in this order at load, each probed (_rows_apart): on an AMD EPYC (AVX512-BF16) 8 rows' layout gave
# every row its own result except a lone row of one shape; on an Intel Xeon with AMX, 8 rows' layout gave 33 and
# more rows other results than fewer, and 1 row's none for up to 128 rows.
PACKED_FOR_ROWS = (1, 8)
# A bf16 product takes at most this many rows at a time (more are computed in pieces of this many): the probe checks
# every number of rows up to here, and beyond it kernels may split the sum otherwise (AMX, 576x1536: some of
# 150-250 rows rounded apart). A 512-token piece of a prompt took 58 against 36 ms in the linear layers this way.
CHUNK_ROWS = 128
# The LM head's probe alone took 1.7 s at 128 rows (its weight is the vocabulary's); it computes the last position
# of each row (a few rows), so it takes pieces of this many.
HEAD_CHUNK_ROWS = 32
# int8 weights compute the new tokens of decode steps (up to this many a row: drafted tokens included); a prompt's
# tokens are read with the bf16 weights, whose matrix product is the faster one for many rows (and exact).
FEW_TOKENS = 8
# bench/bench_one_column.py switches packing off to measure it in the same run.
PACK_BF16 = True


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


def packed_bf16(model) -> int:
    """bf16 weights: each linear layer computes with its weight packed once, at load, in oneDNN's own layout.
    torch's plain bf16 linear repacks the weight on every call, which a decode step (1-8 rows) pays in full: the
    LM head took 4.2 ms a row this way against 1.3-1.9 ms packed, the MLP's layers 92 against 37-54 us (AMD EPYC).
    The packed product is the same arithmetic (on that EPYC bit for bit the plain one's output, 1-700 rows; on an
    Intel Xeon with AMX torch's own product rounds 33 rows and more otherwise than fewer, the packed one within bf16
    rounding of it); it costs a second copy of the linear weights (the model's own stay, for adapters and the state
    dict). Returns how many layers.

    Layers that read the same input (SIBLINGS: an attention's query, key and value, an MLP's gate and up) share one
    packed weight, their rows stacked: one product instead of two or three, each layer's output its part of it. In a
    decode step the small products are far from the memory's speed (a 576x192 key 11 GB/s, the stacked 960x576 32
    GB/s): the linear layers of a one-row step took 11.8 ms together against 14.0 ms apart. Bit for bit the same
    (every layer of SmolLM2, 1-500 rows).

    A row's result must not depend on how many rows are computed with it (a visitor's answer would then depend on
    the others'), and which kernel oneDNN runs, so how it rounds, depends on the layout and the number of rows. So
    each shape is probed at load (_steady): the first layout of PACKED_FOR_ROWS under which every row's result is
    its result alone, for any number of rows up to CHUNK_ROWS, is taken, and inputs of more rows are computed in
    pieces of CHUNK_ROWS; where only a lone row rounds apart (AMD EPYC, 576x1536), it is computed as two copies of
    itself (for every layer that cost 23.8 -> 18.4 tokens/s)."""
    import torch

    pack = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if pack is None or not torch.backends.mkldnn.is_available() or not PACK_BF16:
        pack = None  # a torch without oneDNN: the plain product, probed all the same

    def maker(weight, bias):
        """rows -> the product of `weight` packed for that many rows (None: torch's own), or None if it cannot."""
        def make(rows):
            if rows is None:
                return lambda x: torch.nn.functional.linear(x, weight, bias)
            try:
                weight_packed = pack(weight, rows)
            except RuntimeError:  # a CPU oneDNN cannot pack this for
                return None
            return lambda x: torch.ops.mkldnn._linear_pointwise(x, weight_packed, bias, "none", [], "")
        return make

    layouts = (*PACKED_FOR_ROWS, None) if pack is not None else (None,)
    head = model.get_output_embeddings()
    layers = [layer for layer in _linear_layers(model) if layer.weight.dtype == torch.bfloat16]
    groups = _sibling_groups(model, layers, torch) if pack is not None else [[layer] for layer in layers]
    for group in groups:
        if len(group) > 1:
            weight = torch.cat([g.weight.detach() for g in group])
            bias = None if group[0].bias is None else torch.cat([g.bias.detach() for g in group])
            product = _steady(maker(weight, bias), layouts, weight, bias, CHUNK_ROWS, torch, stacked=True)
            if product is not None:
                _share(group, product, torch)
                continue
        for layer in group:  # alone (or siblings whose stacked weight oneDNN cannot pack: each its own product)
            weight = layer.weight.detach()
            rows = HEAD_CHUNK_ROWS if layer is head else CHUNK_ROWS
            _share([layer], _steady(maker(weight, layer.bias), layouts, weight, layer.bias, rows, torch), torch)
    return len(layers)


# What the probe found, per process: (shape, dtype, bias, piece rows, threads, layouts tried, stacked) -> (layout
# rows, lone row as two). Kernels follow the shape, not the values: a model loaded again, or another of the same
# shapes, is not probed again.
_verdicts: dict[tuple, tuple] = {}


def _steady(make, layouts: tuple, weight, bias, piece: int, torch, stacked: bool = False):
    """The product (make(rows), rows from `layouts`) of the first layout whose rows each come out as they do alone
    (a lone row as two copies of itself, if only it rounds apart), computed in pieces of `piece` rows; probed once
    per shape and process. Where none passes, the first that computes, in pieces all the same. None for a
    `stacked` weight (siblings) that no packed layout takes: each layer alone instead, with no stacked copy kept."""
    key = (tuple(weight.shape), weight.dtype, bias is not None, piece, torch.get_num_threads(), layouts, stacked)
    if key in _verdicts:
        rows, as_two = _verdicts[key]
        product = make(rows) if rows is not None or not stacked else None
        if product is None and not stacked:
            product, as_two = make(None), False  # this weight would not pack as the shape's first did
        return _in_pieces(product, as_two, piece, torch) if product is not None else None
    fallback = None
    for rows in layouts:
        product = make(rows)
        if product is None or (stacked and rows is None):
            continue
        fallback = fallback or (rows, product)
        apart = _rows_apart(product, weight.shape[1], weight.dtype, piece, torch)
        if not apart or apart == {1}:
            _verdicts[key] = (rows, bool(apart))
            return _in_pieces(product, bool(apart), piece, torch)
    if fallback is None:
        return None
    _verdicts[key] = (fallback[0], False)
    return _in_pieces(fallback[1], False, piece, torch)


def _in_pieces(product, lone_as_two: bool, piece: int | None, torch):
    """`product` for at most `piece` rows a call (None: any number), a lone row as two copies of itself where
    `lone_as_two`."""
    def pieces(x):
        width = x.shape[-1]
        if x.numel() == width and lone_as_two:
            return product(torch.cat([x.reshape(1, width)] * 2))[:1].reshape(*x.shape[:-1], -1)
        if piece is None or x.numel() <= piece * width:
            return product(x)
        flat = x.reshape(-1, width)
        return torch.cat([product(part) for part in flat.split(piece)]).reshape(*x.shape[:-1], -1)
    return pieces


def _rows_apart(product, width: int, dtype, piece: int, torch) -> set[int]:
    """The numbers of rows (1 to `piece`) for which some row of random inputs comes out other than the same row among
    `piece` rows; 0 in the set: some row among them other than alone."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(piece, width, generator=generator).to(dtype)
    with torch.no_grad():
        together = product(x)
        apart = {m for m in range(1, piece) if not torch.equal(product(x[:m].clone()), together[:m])}
        if 1 not in apart and any(not torch.equal(product(x[i:i + 1].clone()), together[i:i + 1])
                                  for i in range(1, piece)):
            apart.add(0)
    return apart


def int8_weights(model) -> int:
    """Weight-only int8 for decode steps: each bf16 linear layer computes the new tokens (up to FEW_TOKENS a row) from
    an int8 copy of its weight (symmetric, one scale per output channel), with bf16 inputs and outputs (torch's
    `_weight_int8pack_mm`); prompts are read with the bf16 weights (torch's product, repacked per call: for hundreds
    of rows that costs little, and int8's product was slower there). A decode step reads the weights from memory
    once per token, so one byte a weight instead of two makes a one-row step ~1.4x faster here. The
    answers change (the measured cost is in docs/EVALUATION.md); training, adapters and the state dict use the
    model's own bf16 weights, as before. Returns how many layers."""
    import torch

    quantized = getattr(torch, "_weight_int8pack_mm", None)

    def int8_product(layer, weight8, scales):
        def product(x):
            if x.dim() > 1 and x.shape[-2] > FEW_TOKENS:
                return torch.nn.functional.linear(x, layer.weight, layer.bias)
            out = quantized(x.reshape(-1, x.shape[-1]).contiguous(), weight8, scales)
            if layer.bias is not None:
                out = out + layer.bias
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return product

    count, verdicts = 0, {}
    for layer in [layer for layer in _linear_layers(model) if layer.weight.dtype == torch.bfloat16]:
        weight = layer.weight.detach().float()
        scales = (weight.abs().amax(1) / 127).clamp(min=1e-12)
        weight8 = (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
        try:
            product = _probed(int8_product(layer, weight8, scales.to(torch.bfloat16)), layer.weight, layer.bias,
                              verdicts, torch)
        except (RuntimeError, TypeError):  # a torch or a shape its int8 product does not take: the plain product
            continue
        _share([layer], product, torch)
        count += 1
    return count


# Sibling linear layers that read the same input, by their names in one parent module (Llama, Qwen, Mistral, ...).
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# bench/bench_one_column.py switches the sharing off to measure it in the same run.
SHARE_SIBLINGS = True


def _sibling_groups(model, layers: list, torch) -> list[list]:
    """`layers` as groups computed by one product: siblings (SIBLINGS) of one module that read inputs of one width,
    all with a bias or none; every other layer alone."""
    chosen = {id(layer) for layer in layers}
    groups, grouped = [], set()
    for parent in model.modules() if SHARE_SIBLINGS else ():
        for names in SIBLINGS:
            group = [getattr(parent, name, None) for name in names]
            if all(type(g) is torch.nn.Linear and id(g) in chosen for g in group) \
                    and len({(g.in_features, g.bias is None) for g in group}) == 1:
                groups.append(group)
                grouped.update(id(g) for g in group)
    return groups + [[layer] for layer in layers if id(layer) not in grouped]


def _share(group: list, product, torch) -> None:
    """Make each layer of `group` compute its part of `product` (the layers' outputs side by side; one layer: all of
    it), computed once per input: siblings are called in turn with the same tensor. A call that finds a weight or
    bias changed in place since load (the copies would be stale) or a backward pass to come gets the layer's own
    forward (torch's product, a lone row as it is)."""
    import threading

    tensors = [t for layer in group for t in (layer.weight, layer.bias) if t is not None]
    versions = [t._version for t in tensors]
    widths = [layer.out_features for layer in group]
    # Per thread: the input (held, so no other tensor can take its identity; inference tensors have no version
    # counter, and no caller changes its input in place between siblings) and the parts not yet returned: until
    # the last sibling takes its part, or the next call, at most one prompt piece's products a group.
    last = threading.local()

    def copies_stand(x) -> bool:
        return all(t._version == version for t, version in zip(tensors, versions)) \
            and not (torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tensors)))

    def forward_of(index: int, layer, plain):
        def forward(x):
            if x.dtype != layer.weight.dtype or not copies_stand(x):
                return plain(x)
            if len(group) == 1:
                return product(x)
            if getattr(last, "x", None) is not x or last.parts[index] is None:
                last.x, last.parts = x, [p.contiguous() for p in product(x).split(widths, -1)]
            out, last.parts[index] = last.parts[index], None
            if all(p is None for p in last.parts):
                last.x = None  # all parts returned: hold no tensors between calls
            return out
        return forward

    for index, layer in enumerate(group):
        layer.forward = forward_of(index, layer, layer.forward)


def _probed(product, weight, bias, verdicts: dict, torch):
    """`product`, a lone row sent as two copies of itself where a probe finds its one-row path rounding apart from
    the same row among others (probed once per shape, in `verdicts`)."""
    shape = (tuple(weight.shape), bias is not None)
    if shape not in verdicts:
        verdicts[shape] = _one_row_rounds_apart(product, weight.shape[1], weight.dtype, torch)
    return _in_pieces(product, True, None, torch) if verdicts[shape] else product


def _one_row_rounds_apart(product, width: int, dtype, torch, rows: int = 32) -> bool:
    """Whether some of `rows` random inputs come out different alone than in one product with the rest."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 1, width, generator=generator).to(dtype)
    with torch.no_grad():
        together = product(x)
        return any(not torch.equal(product(x[i:i + 1].clone()), together[i:i + 1]) for i in range(rows))


def _linear_layers(model) -> list:
    import torch

    return [layer for layer in model.modules() if type(layer) is torch.nn.Linear]
