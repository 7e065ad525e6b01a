"""The registry of trained adapters: data_dir/adapters/<name>/ holds the LoRA weights (peft's files) and
lab_adapter.json, which says what made them (base model, dataset and its hash, settings, losses, duration)."""
from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

from core.errors import InputError
from core.fileio import FolderRegistry, write_atomic
from core.names import check_name

META = "lab_adapter.json"


class AdapterStore(FolderRegistry):
    marker, what, hint = META, "adapter", "none yet: train one first"

    def __init__(self, data_dir: Path):
        super().__init__(Path(data_dir) / "adapters")

    def info(self, name: str) -> dict:
        return {"name": name, **json.loads((self.path(name) / META).read_text())}

    def list(self) -> list[dict]:
        return [self.info(name) for name in self.names()]

    def add(self, name: str, adapter_dir: Path, meta: dict) -> str:
        """Register a trained adapter folder under a new name (moved in whole, never half-written)."""
        name = check_name(name, "adapter")
        final = self.root / name
        if final.exists():
            raise InputError("an adapter with this name already exists", subject=name)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{name}.{time.time_ns()}"
        shutil.copytree(adapter_dir, staging)
        write_atomic(staging / META, json.dumps(meta, indent=2))
        staging.rename(final)
        return name

    def rename(self, name: str, new_name: str) -> str:
        folder = self.path(name)
        new_name = check_name(new_name, "adapter")
        if (self.root / new_name).exists():
            raise InputError("an adapter with this name already exists", subject=new_name)
        folder.rename(self.root / new_name)
        return new_name

    def delete(self, name: str) -> None:
        shutil.rmtree(self.path(name))

    def export_zip(self, name: str, target: Path) -> Path:
        """The adapter folder as a zip, loadable with peft's PeftModel.from_pretrained after unzipping."""
        folder = self.path(name)
        target = Path(target)
        if target.is_dir():
            target = target / f"{name}.zip"
        tmp = target.with_suffix(".zip.part")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    archive.write(file, f"{name}/{file.relative_to(folder)}")
        tmp.replace(target)
        return target
