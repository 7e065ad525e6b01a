"""Shared fixtures: real models, a real Chroma store in a temporary folder, PDFs written by the tests."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
# Converted checkpoints are reused across runs (scripts/test.sh sets the same place).
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))

import core  # noqa: E402,F401 - offline environment first
from core.config import load_settings  # noqa: E402
from core.lab import Lab  # noqa: E402

# A fictional organisation: facts no model has seen, so only RAG can know them.
HANDBOOK = """# Zorblat Institute staff handbook

The Zorblat Institute was founded in 1987 by Mirela Quanz in the town of Vettelborg.
The institute's mascot is a purple heron named Pim.

## Leave
Every member of staff gets 31 days of paid leave per year. Leave requests go to the Office of Quiet Hours.

## Food
The cafeteria serves cardamom porridge every Tuesday.
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def lab(data_dir: Path) -> Lab:
    """A Lab on a fresh, empty store; the models are loaded once per test session and shared."""
    return Lab(load_settings(data_dir=data_dir, model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"])))


@pytest.fixture
def handbook(tmp_path: Path) -> Path:
    path = tmp_path / "handbook.md"
    path.write_text(HANDBOOK)
    return path


def write_pdf(path: Path, pages: list[str], password: str | None = None) -> Path:
    """A real PDF with a text layer, one string per page."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    if password:
        pdf.set_encryption(owner_password=password + "-owner", user_password=password)
    pdf.output(str(path))
    return path


def write_scanned_pdf(path: Path) -> Path:
    """A PDF whose page is only a picture (a drawn shape), like a scan without OCR."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_fill_color(30, 30, 30)
    pdf.rect(20, 20, 150, 80, style="F")
    pdf.output(str(path))
    return path


def tiny_chat_model(folder: Path, tokenizer, seed: int = 0) -> Path:
    """A small Llama-architecture chat model with the given tokenizer (the bundled model's) and random weights
    (~3.3M parameters, 13 MB): loads, answers and trains in seconds. Its answers are noise, by design."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextmanager
def lean_steps_counted(monkeypatch, calls: list):
    """While inside: `calls` gets an item for each decode step core/lean_step.py computes (not those it hands back
    to the model's forward)."""
    from core import lean_step

    forward = lean_step.forward

    def counted(*args, **kwargs):
        logits = forward(*args, **kwargs)
        if logits is not None:
            calls.append(1)
        return logits

    monkeypatch.setattr(lean_step, "forward", counted)
    try:
        yield calls
    finally:
        monkeypatch.setattr(lean_step, "forward", forward)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(data_dir: Path, **extra: str) -> dict:
    env = {**os.environ, "LAB_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **extra}
    return env


def run_cli(args: list[str], data_dir: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """`python -m core ARGS` in a process of its own: for what only a separate process shows (the entry point,
    no network, signals, another process's writes)."""
    return subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=ROOT, env=subprocess_env(data_dir, **env),
        capture_output=True, text=True, timeout=timeout,
    )


def cli_here(args: list[str], data_dir: Path, **env) -> subprocess.CompletedProcess:
    """The CLI's own main() in this process: the same parsing, handlers, output and exit codes as `python -m core`,
    without ~10 s of library imports per call (sentence-transformers alone takes 10 s to import here)."""
    from core.cli import main

    wanted = {"LAB_DATA_DIR": str(data_dir), **env}
    saved = {key: os.environ.get(key) for key in wanted}
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(wanted)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return subprocess.CompletedProcess(["python", "-m", "core", *args], code, out.getvalue(), err.getvalue())


def start_app(data_dir: Path, **env: str):
    """The real app (python app.py) on a free port with its own data folder; yields its URL, stops it after."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir.parent / f"app-{port}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env=subprocess_env(data_dir, GRADIO_SERVER_PORT=str(port), **env),
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("app did not start within 240 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app with its own empty data folder; yields (url, data_dir)."""
    data_dir = tmp_path_factory.mktemp("app") / "data"
    for url in start_app(data_dir):
        yield url, data_dir
