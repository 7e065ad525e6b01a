"""Simultaneous visitors: N people ask a question each at the same moment (the RAG column, the guided demo's
documents and questions). Today's engine lets their rows join one running decode batch as they arrive; the
baseline is what the app did before, one answer at a time in arrival order (the Gradio queue with one slot).
Both in the same run, same questions, same answers (greedy, fixed length).

    .venv/bin/python bench/bench_visitors.py [--visitors 1,4,8] [--repeats 3] [--tokens 48]

Printed per N: the slowest visitor's wait until the whole answer is shown and until its first words, the mean
wait, and answers per minute (N over the time until the last one is done); median of the repeats with min-max.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))

import core  # noqa: E402,F401
from core.config import load_settings  # noqa: E402
from core.demo import DEMO_DIR, DEMO_DOCUMENTS, DEMO_KB, DEMO_QUESTIONS  # noqa: E402
from core.generation import GenerationConfig  # noqa: E402
from core.lab import Lab  # noqa: E402


def visit(lab: Lab, question: str, config: GenerationConfig, t0: float) -> dict:
    """One visitor's question, timed from the moment everyone asked."""
    first = None
    answer = None
    for event in lab.answers.ask_stream(question, ["rag"], kb=DEMO_KB, config=config):
        if event.kind == "delta" and first is None:
            first = time.perf_counter() - t0
        answer = event.answer
    assert answer is not None and not answer.error, answer
    return {"first": first, "done": time.perf_counter() - t0, "text": answer.answer,
            "tokens": answer.timings["new_tokens"]}


def one_at_a_time(lab: Lab, questions: list[str], config: GenerationConfig) -> list[dict]:
    """In arrival order, as a one-slot queue serves them: in one worker thread, as Gradio runs a handler (the
    main thread would be unfairly quick: it keeps the OpenMP pool that ingestion started, see core.generation)."""
    results: list = []

    def serve() -> None:
        t0 = time.perf_counter()
        results.extend(visit(lab, q, config, t0) for q in questions)

    worker = threading.Thread(target=serve)
    worker.start()
    worker.join()
    return results


def together(lab: Lab, questions: list[str], config: GenerationConfig) -> list[dict]:
    results: list = [None] * len(questions)
    start = threading.Barrier(len(questions) + 1)

    def one(i: int) -> None:
        start.wait()
        results[i] = visit(lab, questions[i], config, t0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return results


def summary(runs: list[list[dict]]) -> dict:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    slowest = [max(r["done"] for r in run) for run in runs]
    return {
        "slowest": statistics.median(slowest),
        "slowest_text": spread(slowest),
        "first_text": spread([max(r["first"] for r in run) for run in runs]),
        "mean_text": spread([statistics.mean(r["done"] for r in run) for run in runs]),
        "per_min": statistics.median(len(run) * 60 / max(r["done"] for r in run) for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--visitors", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    import torch

    lab = Lab(load_settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-visitors-"))))
    lab.kbs.ingest([DEMO_DIR / name for name in DEMO_DOCUMENTS], kb=DEMO_KB)
    with open(DEMO_DIR / DEMO_QUESTIONS, newline="") as f:
        questions = [row["question"] for row in csv.DictReader(f)]
    config = GenerationConfig(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    one_at_a_time(lab, questions[:2], GenerationConfig(max_new_tokens=2))  # warm-up

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), device {lab.settings.resolved_device}")
    print(f"Each visitor: one demo question in the RAG column, {args.tokens} new tokens; median of {args.repeats} "
          "(min-max)\n")
    print("| visitors | engine | slowest wait s | slowest first words s | mean wait s | answers/min | "
          "ratio (answers/min) | same answers |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in [int(v) for v in args.visitors.split(",")]:
        asked = [questions[i % len(questions)] for i in range(n)]
        runs: dict[str, list] = {"one at a time": [], "joined batch": []}
        for _ in range(args.repeats):  # alternate, so a slow moment of the machine hits both
            runs["one at a time"].append(one_at_a_time(lab, asked, config))
            runs["joined batch"].append(together(lab, asked, config))
        same = sum(a["text"] == b["text"] for a, b in zip(runs["one at a time"][0], runs["joined batch"][0]))
        base = summary(runs["one at a time"])
        for name, engine_runs in runs.items():
            s = summary(engine_runs)
            print(f"| {n} | {name} | {s['slowest_text']} | {s['first_text']} | {s['mean_text']} | "
                  f"{s['per_min']:.1f} | {s['per_min'] / base['per_min']:.2f}x | "
                  f"{same if name != 'one at a time' else ''}{'/' + str(n) if name != 'one at a time' else ''} |")


if __name__ == "__main__":
    main()
