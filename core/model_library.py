"""The base models a user can choose from, and the choice: the bundled model; the models folder under the data
folder (Hugging Face folders and .gguf files); and, when online, Hub models (a short list by size, or any id),
downloaded into the models folder. Memory figures are computed for this machine's device before anything loads.

A model is named the way adapters, jobs and evaluation runs record it: `bundled:...`, `local:NAME` (a folder or
.gguf file in the models folder), or a Hub id (its download in the models folder is used when there is one).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from core.config import (BUNDLED_BASE_MODEL, CHOICE_FILE, DOWNLOAD_RECORD, LOCAL_PREFIX, MODELS_FOLDER, Settings,
                         hub_folder_name, hub_online, local_name, models_folder_path)
from core.errors import InputError, LabError
from core.fileio import read_json, write_json
from core.models import bundled_gguf_file, describe_model

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
PARTIAL = ".downloading"  # downloads in progress (resumed from here); renamed into place only when complete
# Chat models by size, for a user who wants a bigger one: Hub id and the sizes in its config.json (hidden size,
# layers, MLP width, attention heads, key/value heads, vocabulary, tied embeddings), so that their memory is computed
# the same way as a downloaded model's, offline.
SUGGESTED = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": (576, 30, 1536, 9, 3, 49152, True),
    "HuggingFaceTB/SmolLM2-360M-Instruct": (960, 32, 2560, 15, 5, 49152, True),
    "Qwen/Qwen2.5-0.5B-Instruct": (896, 24, 4864, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": (1536, 28, 8960, 12, 2, 151936, True),
    "Qwen/Qwen2.5-3B-Instruct": (2048, 36, 11008, 16, 2, 151936, True),
}
# What a download takes: safetensors weights, configs and tokenizer files at the top of the repo. Never pickled
# weights (.bin, .pt: loading them can run code) and never the repo's own Python (remote code).
WANTED = re.compile(r"^[^/]+\.(safetensors|json|model|txt|jinja)$")


class DownloadCancelled(LabError):
    """A download stopped on request; what it fetched is kept and the next download of the model resumes it."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelEntry:
    name: str  # what `use` takes, and adapters record as their base model
    kind: str  # bundled, folder, gguf or hub
    label: str
    parameters: int | None = None
    download_gb: float | None = None  # weights to fetch (Hub models not downloaded yet)
    answer_gb: float | None = None  # memory to answer with it on this device
    train_gb: float | None = None  # memory for a Quick LoRA fine-tune on this device
    downloaded: bool = True  # usable offline
    current: bool = False
    path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def answer_memory_gb(params: float, device: str, weights: str = "fp32") -> float:
    """GB to answer with a model of `params` parameters: its weights (16-bit on CUDA; on a CPU in `weights`: fp32, or
    bf16 plus the packed copy of its linear layers that core/cpu_linear.py keeps, about as much again; int8: bf16 plus
    an int8 copy) + a KV cache for four 1,000-token columns and the runtime."""
    per_param = 2 if device.startswith("cuda") else {"fp32": 4, "int8": 2 + 1}.get(weights, 2 + 2)
    return round((params * per_param + 0.4e9) / 1e9, 2)


def memory_figures(config, device: str, weights: str = "fp32") -> tuple[int, float, float]:
    """Parameters, and GB to answer and to train a Quick LoRA adapter with this model on `device` (the training
    estimate core.training gives before a run, for 8 examples of 256 tokens)."""
    from core.training import TrainSettings, estimate, parameters_of

    params = parameters_of(config)
    train = estimate(config, 8 * 256, 8, TrainSettings.from_preset("quick"), device, 256)["memory_gb"]
    return params, answer_memory_gb(params, device, weights), train


def suggested_config(repo_id: str):
    """A config holding the sizes of a suggested Hub model (enough for memory_figures), before it is downloaded."""
    from types import SimpleNamespace

    hidden, layers, mlp, heads, kv, vocab, tied = SUGGESTED[repo_id]
    return SimpleNamespace(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=mlp,
                           num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                           tie_word_embeddings=tied, head_dim=None)


def free_memory_gb(device: str) -> float:
    """Memory free now where the model would run: the GPU's on CUDA, else the machine's."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0] / 1e9
    import psutil

    return psutil.virtual_memory().available / 1e9


_figures: dict[tuple, tuple] = {}  # (name, device, weights, file, mtime) -> memory_figures


class ModelLibrary:
    """The models of one data folder, and which one the app uses."""

    def __init__(self, settings: Settings, demo: bool = False):
        self.settings, self.demo = settings, demo
        self.root = settings.data_dir / MODELS_FOLDER
        self.weights = settings.resolved_decode_weights  # the chat model's precision when it answers on a CPU

    # ---- what there is ------------------------------------------------------------------------------------------
    def list(self, hub: bool = True) -> list[ModelEntry]:
        """The bundled model, the models folder, and the suggested Hub models (with `hub`) not downloaded yet."""
        device = self.settings.resolved_device
        entries = [self._entry(BUNDLED_BASE_MODEL, "bundled", None, device)]
        for item in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if item.name.startswith("."):
                continue
            record = read_json(item / DOWNLOAD_RECORD) if item.is_dir() else None
            if record:
                entries.append(self._entry(record["repo_id"], "hub", item, device))
            elif item.is_dir() and (item / "config.json").is_file() and not (item / "conversion.json").exists():
                entries.append(self._entry(LOCAL_PREFIX + item.name, "folder", item, device))
            elif item.suffix == ".gguf" and item.is_file():
                entries.append(self._entry(LOCAL_PREFIX + item.name, "gguf", item, device))
        if hub and not self.demo:
            have = {e.name for e in entries}
            for repo_id in SUGGESTED:
                if repo_id not in have:
                    params, answer, train = memory_figures(suggested_config(repo_id), device, self.weights)
                    entries.append(ModelEntry(repo_id, "hub", repo_id, params, round(params * 2 / 1e9, 2),
                                              answer, train, downloaded=False))  # bf16 weights: 2 bytes each
        current = self.settings.base_model
        if current not in {e.name for e in entries}:  # a model named by LAB_BASE_MODEL (a Hub id or a path)
            entries.append(ModelEntry(current, "hub" if REPO_ID.match(current) else "folder", current))
        for entry in entries:
            entry.current = entry.name == current
        return entries

    def _entry(self, name: str, kind: str, path: Path | None, device: str) -> ModelEntry:
        entry = ModelEntry(name, kind, describe_model(name), path=str(path) if path else None)
        source = path or (bundled_gguf_file() if name == BUNDLED_BASE_MODEL else None)
        key = (name, device, self.weights, str(source), source.stat().st_mtime if source and source.exists() else None)
        if key not in _figures:  # reading a GGUF header takes a second: once per file version and device
            try:
                _figures[key] = memory_figures(self.config(name), device, self.weights)
            except (OSError, ValueError, LabError):
                _figures[key] = (None, None, None)  # an unreadable folder is still listed; using it says why
        entry.parameters, entry.answer_gb, entry.train_gb = _figures[key]
        return entry

    def config(self, name: str):
        """The model's transformers config, read without loading weights (a GGUF file's from its header)."""
        from transformers import AutoConfig

        from core.models import resolve_base_model

        if name == BUNDLED_BASE_MODEL and bundled_gguf_file():
            gguf = bundled_gguf_file()
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        path = self.path_of(name)
        if path and path.suffix == ".gguf":
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        return AutoConfig.from_pretrained(resolve_base_model(name, self.settings))

    def path_of(self, name: str) -> Path | None:
        """Where a model of the models folder lies (`local:NAME`, or a downloaded Hub id); None for others."""
        return models_folder_path(name, self.settings.data_dir)

    def find(self, name: str) -> ModelEntry:
        """The entry for `name`, refused with the names there are when it is not one this app can use now."""
        name = (name or "").strip()
        for entry in self.list(hub=True):
            if name in (entry.name, entry.label, local_name(entry.name)):
                return entry
        if REPO_ID.match(name):
            return ModelEntry(name, "hub", name, downloaded=False)
        names = ", ".join(e.label for e in self.list(hub=False))
        raise InputError(f"no such model: the models here are {names}; put a Hugging Face model folder or a .gguf "
                         f"file in {self.root}, or download a Hub model (models download USER/NAME)",
                         subject=repr(name))

    # ---- the choice ---------------------------------------------------------------------------------------------
    def check_usable(self, name: str) -> ModelEntry:
        """The entry to switch to, or why not: demo mode, not downloaded, or too big for the free memory."""
        if self.demo:
            raise InputError("this demo keeps its model fixed: run the app on your own machine to choose another")
        entry = self.find(name)
        if not entry.downloaded:
            how = ("download it first (the Models panel, or `python -m core models download " + entry.name + "`)"
                   if hub_online() else "it is not downloaded and the Hub is offline (HF_HUB_OFFLINE=1, the "
                   "default outside a Space): set HF_HUB_OFFLINE=0 and download it, or put its folder in "
                   + str(self.root))
            raise InputError(how, subject=entry.name)
        free = free_memory_gb(self.settings.resolved_device)
        if entry.answer_gb and entry.answer_gb > free * 0.9:
            raise InputError(f"answering with it needs about {entry.answer_gb} GB and {free:.1f} GB is free: "
                             "choose a smaller model, or close other programs", subject=entry.label)
        return entry

    def switch(self, name: str) -> Settings:
        """The settings to go on with `name`: refused (with the reason) unless it is here, fits in memory and loads
        as a chat model; then it is kept as this data folder's choice and the old model's memory is freed. Running
        jobs and studies keep the model they started with (they record it)."""
        from core.models import load_generator, release_generators

        entry = self.check_usable(name)
        settings = self.settings.with_(base_model=entry.name)
        load_generator(settings)  # a model that does not load leaves everything as it was
        write_json(self.settings.data_dir / CHOICE_FILE, {"base_model": entry.name})
        release_generators(keep=entry.name)
        return settings

    # ---- downloads and removal ----------------------------------------------------------------------------------
    def download(self, repo_id: str, progress=None, should_stop=None) -> ModelEntry:
        """Fetch a Hub model's safetensors weights, configs and tokenizer into the models folder, with progress
        (fraction, message) and a stop check; an interrupted download resumes where it stopped. Refused offline, in
        demo mode, for a model without safetensors weights or one that needs its own code, and when the disk or
        this machine's memory will not hold it. Nothing appears in the models folder until every file is there."""
        if self.demo:
            raise InputError("this demo keeps its model fixed: visitors cannot download models")
        repo_id = (repo_id or "").strip()
        if not REPO_ID.match(repo_id):
            raise InputError("a Hub model is written OWNER/NAME, for example HuggingFaceTB/SmolLM2-360M-Instruct",
                             subject=repr(repo_id))
        if not hub_online():
            raise InputError("offline: HF_HUB_OFFLINE=1, the default outside a Space; set HF_HUB_OFFLINE=0 (with "
                             f"a network) to download, or put the model's folder in {self.root}", subject=repo_id)
        target = self.root / hub_folder_name(repo_id)
        if (target / DOWNLOAD_RECORD).exists():
            return self.find(repo_id)
        info = self._hub_info(repo_id)
        files = [s for s in info.siblings if WANTED.match(s.rfilename)]
        names = [s.rfilename for s in files]
        if not any(n.endswith(".safetensors") for n in names):
            raise InputError("this repository has no safetensors weights (only pickled ones, which can run code "
                             "when loaded): the lab does not download it", subject=repo_id)
        if "config.json" not in names:
            raise InputError("this repository has no config.json: it is not a transformers model", subject=repo_id)
        total = sum(s.size or 0 for s in files)
        partial = self.root / PARTIAL / hub_folder_name(repo_id)
        have = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file()) if partial.exists() else 0
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if total - have > free * 0.95:
            raise InputError(f"it needs {total / 1e9:.2f} GB on disk and {free / 1e9:.2f} GB is free in {self.root}",
                             subject=repo_id)
        weights = sum(s.size or 0 for s in files if s.rfilename.endswith(".safetensors"))
        params = (info.safetensors.total if getattr(info, "safetensors", None) else None) or weights / 2
        import psutil

        answer_gb = answer_memory_gb(params, "cpu", self.weights)  # checked on a CPU only (below)
        total_gb = psutil.virtual_memory().total / 1e9
        if self.settings.resolved_device == "cpu" and answer_gb > total_gb * 0.9:
            raise InputError(f"answering with it needs about {answer_gb} GB of memory and this machine has "
                             f"{total_gb:.1f} GB in all: choose a smaller model", subject=repo_id)
        self._fetch(repo_id, info.sha, files, partial, total, progress, should_stop)
        config = read_json(partial / "config.json") or {}
        if config.get("auto_map"):
            shutil.rmtree(partial, ignore_errors=True)
            raise InputError("this model needs its own Python code to load, which the lab never runs: choose "
                             "another", subject=repo_id)
        write_json(partial / DOWNLOAD_RECORD, {"repo_id": repo_id, "revision": info.sha, "bytes": total,
                                               "files": names})
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
        return self.find(repo_id)

    def _hub_info(self, repo_id: str):
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

        try:
            return HfApi().model_info(repo_id, files_metadata=True)
        except GatedRepoError:
            raise InputError("this model is gated: accept its terms on the Hub and log in (huggingface-cli login)",
                             subject=repo_id) from None
        except RepositoryNotFoundError:
            raise InputError("no such model on the Hub (or it is private)", subject=repo_id) from None
        except (HfHubHTTPError, OSError) as exc:
            raise InputError(f"the Hub could not be reached: {exc}", subject=repo_id) from None

    def _fetch(self, repo_id, revision, files, partial: Path, total: int, progress, should_stop) -> None:
        """Each file over HTTP with byte ranges: a file cut off (cancelled, connection lost, machine stopped) is kept
        as FILE.part and the next download asks only for the rest. (huggingface_hub's own downloader no longer
        resumes across processes: it starts every file again.) LFS files are checked against their sha256."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        session, headers = get_session(), build_hf_headers()
        partial.mkdir(parents=True, exist_ok=True)
        stopped = f"{repo_id}: download stopped; downloading it again resumes where it stopped"
        done = sum((partial / f.rfilename).stat().st_size if (partial / f.rfilename).exists() else 0 for f in files)
        for file in files:
            target, part = partial / file.rfilename, partial / (file.rfilename + ".part")
            if target.exists() and (file.size is None or target.stat().st_size == file.size):
                continue
            have = part.stat().st_size if part.exists() else 0
            done += have
            url = hf_hub_url(repo_id, file.rfilename, revision=revision)
            try:
                with session.stream("GET", url, headers={**headers, **({"Range": f"bytes={have}-"} if have else {})},
                                    follow_redirects=True, timeout=30) as response:
                    hf_raise_for_status(response)
                    if have and response.status_code != 206:  # the server sent the whole file: start it again
                        done -= have
                        have = 0
                    with part.open("ab" if have else "wb") as out:
                        for chunk in response.iter_bytes(1 << 20):
                            out.write(chunk)
                            done += len(chunk)
                            if progress and total:
                                progress(min(done / total, 1.0), f"downloading {repo_id}: {done / 1e6:.0f} of "
                                                                 f"{total / 1e6:.0f} MB")
                            if should_stop and should_stop():
                                raise DownloadCancelled(stopped)
            except DownloadCancelled:
                raise
            except Exception as exc:  # the network's many failures: all end as "try again, it resumes"
                raise InputError(f"the download stopped at {file.rfilename} ({type(exc).__name__}: {exc}); "
                                 "downloading it again resumes where it stopped", subject=repo_id) from None
            size = part.stat().st_size
            if file.size is not None and size != file.size:
                part.unlink()
                raise InputError(f"{file.rfilename} arrived with {size} of {file.size} bytes and was dropped; "
                                 "download it again", subject=repo_id)
            sha = getattr(getattr(file, "lfs", None), "sha256", None)
            if sha and _sha256(part) != sha:
                part.unlink()
                raise InputError(f"{file.rfilename} does not match the Hub's checksum and was dropped; download it "
                                 "again", subject=repo_id)
            os.replace(part, target)

    def remove(self, name: str) -> dict:
        """Delete a model of the models folder (or a partial download). The bundled model and the one in use stay."""
        if self.demo:
            raise InputError("this demo keeps its model fixed")
        name = (name or "").strip()
        partial = self.root / PARTIAL / hub_folder_name(name)
        if REPO_ID.match(name) and partial.exists() and self.path_of(name) is None:
            shutil.rmtree(partial)
            return {"removed": name, "partial": True}
        entry = self.find(name)
        if entry.name == self.settings.base_model:
            raise InputError("it is the model in use: switch to another first", subject=entry.label)
        path = self.path_of(entry.name)
        if path is None or not path.exists():
            raise InputError("only models in the models folder can be removed here", subject=entry.label)
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return {"removed": entry.name, "partial": False}


def describe(entry: ModelEntry) -> str:
    """One line for a list or a dropdown: name, size and memory."""
    parts = [entry.label]
    if entry.parameters:
        parts.append(f"{entry.parameters / 1e9:.2f}B" if entry.parameters >= 1e9 else f"{entry.parameters / 1e6:.0f}M")
    if entry.answer_gb:
        parts.append(f"answer {entry.answer_gb} GB")
    if entry.train_gb:
        parts.append(f"train {entry.train_gb} GB")
    if not entry.downloaded:
        parts.append(f"download {entry.download_gb} GB" if entry.download_gb else "not downloaded")
    return " · ".join(parts)
