"""The training time estimate (core/training.py: `estimate`) against the actual time of the same job, from start to
completed as the Fine-tune tab's job runs it (its own process: start-up, loading, tokenizing, training, saving).
Three CPU LoRA jobs with the Quick preset: the tests' 12 short facts (30 steps), and where ../shared is present 48
PubMedQA questions with their long answers and 48 passage + question prompts (24 steps of 4 each).

    .venv/bin/python bench/bench_estimate.py [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))
PUBMEDQA = ROOT.parent / "shared" / "data" / "pubmedqa_test"

from core.config import load_settings  # noqa: E402
from core.lab import Lab  # noqa: E402


def datasets(lab: Lab) -> dict[str, dict]:
    """name -> the preset's overrides, for each dataset saved."""
    lab.datasets.import_file(ROOT / "tests" / "data" / "zorblat_facts.jsonl", "facts", validation=0, test=0)
    made = {"facts": {}}
    if (PUBMEDQA / "questions.jsonl").exists():
        rows = [json.loads(line) for line in (PUBMEDQA / "questions.jsonl").read_text().splitlines()[:96]]

        def chat(question: str, answer: str) -> dict:
            return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

        def passage(row: dict) -> str:
            return " ".join((PUBMEDQA / "docs" / row["doc"]).read_text().split()[:260])

        lab.datasets.save("pubmed-qa", [chat(r["question"], r["long_answer"]) for r in rows[:48]], "bench",
                          "pubmedqa", validation=0, test=0)
        lab.datasets.save("pubmed-passages", [chat(f"Passage: {passage(r)}\n\nQuestion: {r['question']}",
                                                   r["long_answer"]) for r in rows[48:]], "bench", "pubmedqa",
                          validation=0, test=0)
        made.update({"pubmed-qa": {"max_steps": 24}, "pubmed-passages": {"max_steps": 24}})
    else:
        print(f"{PUBMEDQA} is not there: the facts set only")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    lab = Lab(load_settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-estimate-"))))
    runs = datasets(lab)
    print("| dataset | steps | tokens trained | estimate s | actual s (min-max) | estimate / actual |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, overrides in runs.items():
        settings = lab.training.preset("quick", **overrides)
        plan = lab.training.estimate(name, settings)
        actual = []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            final = lab.jobs.wait(lab.training.start(name, settings, adapter=f"{name}-{repeat}")["id"])
            actual.append(time.perf_counter() - started)
            if final["state"] != "completed":
                raise SystemExit(f"{name}: the job ended {final['state']}: {final.get('error')}")
        seconds = statistics.median(actual)
        print(f"| {name} | {plan['steps']} | {plan['train_tokens']} | {plan['minutes'] * 60:.0f} | {seconds:.0f} "
              f"({min(actual):.0f}-{max(actual):.0f}) | {plan['minutes'] * 60 / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
