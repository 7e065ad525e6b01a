"""Cold start: from `python app.py` to the page, and to the first answer, in a fresh process each run.

    .venv/bin/python bench/bench_coldstart.py [--repeats 3] [--first-ever]

Each run starts the real app on a free port with an empty data folder and the shared converted-model cache (a
returning user), waits for the page, then asks one question in the Base column through the app's own API (16
tokens). Baseline in the same run: a plain script that imports transformers, loads the same cached model and
generates 16 tokens: what any app built on this model pays before its first answer. Runs alternate; medians.
`--first-ever` adds one run with an empty model cache, which converts the bundled GGUF file first (a new user).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LAB_MODEL_CACHE") or ROOT / ".cache" / "models")
QUESTION = "Who founded the Zorblat Institute?"

PLAIN = """
import time; t0 = time.perf_counter()
import sys; sys.path.insert(0, {root!r})
from core.config import load_settings
from core.models import resolve_base_model
from transformers import AutoModelForCausalLM, AutoTokenizer
source = resolve_base_model(load_settings().base_model, load_settings())
tokenizer = AutoTokenizer.from_pretrained(source)
model = AutoModelForCausalLM.from_pretrained(source)
prompt = tokenizer.apply_chat_template([{{"role": "user", "content": {question!r}}}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
model.generate(**prompt, max_new_tokens=16, do_sample=False)
print(time.perf_counter() - t0)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_run(model_cache: Path) -> tuple[float, float]:
    """(seconds to the page, seconds to the first answer), from the process start."""
    from gradio_client import Client

    data_dir = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    port = free_port()
    env = {**os.environ, "LAB_DATA_DIR": str(data_dir), "LAB_MODEL_CACHE": str(model_cache),
           "GRADIO_SERVER_PORT": str(port)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit("the app exited before its page came up")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        page = time.perf_counter() - t0
        client = Client(url, verbose=False)
        client.predict(QUESTION, "default", None, ["base"], False, 3, 16, 0.0, 0.9, "", api_name="/ask")
        return page, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def plain_run() -> float:
    code = PLAIN.format(root=str(ROOT), question=QUESTION)
    env = {**os.environ, "LAB_MODEL_CACHE": str(CACHE), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--first-ever", action="store_true")
    args = parser.parse_args()
    pages, answers, plain = [], [], []
    for _ in range(args.repeats):
        page, answer = app_run(CACHE)
        pages.append(page)
        answers.append(answer)
        plain.append(plain_run())
    print(f"# {os.cpu_count()} CPUs · {time.strftime('%Y-%m-%d')} · median of {args.repeats}, runs alternate")
    print("| from process start | median s | runs |")
    print("|---|---:|---|")
    print(f"| app: page up | {statistics.median(pages):.1f} | {' '.join(f'{x:.1f}' for x in pages)} |")
    print(f"| app: first answer (Base, 16 tokens) | {statistics.median(answers):.1f} | "
          f"{' '.join(f'{x:.1f}' for x in answers)} |")
    print(f"| plain script: load + 16 tokens (baseline) | {statistics.median(plain):.1f} | "
          f"{' '.join(f'{x:.1f}' for x in plain)} |")
    if args.first_ever:
        empty = Path(tempfile.mkdtemp(prefix="bench-coldstart-cache-"))
        page, answer = app_run(empty)
        shutil.rmtree(empty, ignore_errors=True)
        print(f"| app, first-ever start (empty model cache): page up / first answer | {page:.1f} / {answer:.1f} | 1 run |")


if __name__ == "__main__":
    main()
