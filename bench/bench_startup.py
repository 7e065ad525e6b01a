"""Process start to first query vector: the engine's embedder (core/embedder.py) against loading the same bundled
model with sentence-transformers, as a competent user would. Each run is a fresh Python process (what every CLI
command, job and app start pays); runs alternate; medians of --repeats.

    .venv/bin/python bench/bench_startup.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENGINE = """
import time; t0 = time.perf_counter()
import core
from core.config import load_settings
from core.models import load_embedder
load_embedder(load_settings()).encode(["Who founded the institute?"], normalize_embeddings=True)
print(time.perf_counter() - t0)
"""
LIBRARY = """
import time; t0 = time.perf_counter()
import core
from core.models import bundled_embedder_dir
from sentence_transformers import SentenceTransformer
SentenceTransformer(str(bundled_embedder_dir()), device="cpu").encode(["Who founded the institute?"],
                                                                     normalize_embeddings=True)
print(time.perf_counter() - t0)
"""


def timed(code: str) -> float:
    env = {**os.environ, "LAB_DATA_DIR": str(ROOT / ".cache" / "bench-startup")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    timed(ENGINE), timed(LIBRARY)  # warm the file cache for both
    runs = {"sentence-transformers": [], "engine": []}
    for _ in range(args.repeats):
        runs["sentence-transformers"].append(timed(LIBRARY))
        runs["engine"].append(timed(ENGINE))
    baseline = statistics.median(runs["sentence-transformers"])
    print(f"\n{'embedder load, fresh process':32} {'median s':>9} {'runs':>24} {'vs baseline':>12}")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"{name:32} {median:9.2f} {' '.join(f'{v:.2f}' for v in values):>24} {baseline / median:11.2f}x")


if __name__ == "__main__":
    main()
