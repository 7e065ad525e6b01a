"""Training methods side by side on the 12 Zorblat facts: LoRA, DoRA and full fine-tuning with the same steps (the
Quick preset's 30), and DPO on preference pairs (the facts chosen over the base model's own answers).

    .venv/bin/python bench/bench_methods.py [--repeats 1]

Per method: facts answered right afterwards (greedy, 24 tokens; the base model: 0), minutes (the job's wall time,
loading included), training tokens/s, the job process's peak RSS and the size on disk; for DPO also pairs/s over
the training loop and the margin of chosen over rejected before and after. Each job is its own process, one after
another; with --repeats N each runs N times and the medians are shown.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))
    os.environ["LAB_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-methods-")
    from core.comparison import Comparison
    from core.config import load_settings
    from core.generation import GenerationConfig
    from core.lab import Lab

    lab = Lab(load_settings())
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    rows = [json.loads(line) for line in FACTS.read_text().splitlines()]
    questions = [r["messages"][0]["content"] for r in rows]
    config = GenerationConfig(max_new_tokens=24)
    base = [a[0].answer for a in lab.answers.compare_many(questions, ["base"], config=config)]
    for question, lost, row in zip(questions, base, rows):  # votes: the fact beats the base model's answer
        lab.votes.record(Comparison(question=question, answers=[{"variant": "base", "answer": lost},
                                                                 {"variant": "rag", "answer": row["messages"][1]["content"]}]),
                         "rag")
    lab.datasets.from_votes("votes", validation=0.0)

    runs = {"LoRA": ("facts", {}), "DoRA": ("facts", {"tuning": "dora"}), "full": ("facts", {"tuning": "full"}),
            "DPO (LoRA)": ("votes", {})}
    table: dict[str, list[dict]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, (dataset, overrides) in runs.items():
            adapter = f"{name.split()[0].lower()}-{repeat}"
            settings = lab.training.preset("quick", dataset, **overrides)
            final = lab.jobs.wait(lab.training.start(dataset, settings, adapter)["id"])
            assert final["state"] == "completed", final.get("error")
            result = final["result"]
            answers = [a[0].answer for a in lab.answers.compare_many(questions, ["finetuned"], adapter=adapter,
                                                                     config=config)]
            row = {"facts": sum(r["gold"].lower() in a.lower() for r, a in zip(rows, answers)),
                   "minutes": result["seconds"] / 60, "tokens_per_s": result["tokens_per_s"],
                   "peak_gb": result["peak_memory_gb"], "disk_mb": size_mb(lab.adapters.path(adapter)),
                   "steps": result["steps"], "lr": settings.learning_rate}
            if result.get("margins"):  # pairs/s over the training loop (pairs seen: every epoch's)
                row["pairs_per_s"] = len(rows) * settings.epochs / result["training_seconds"]
                row["margin"] = (result["margins"]["train_before"]["mean_margin"],
                                 result["margins"]["train_after"]["mean_margin"])
            table[name].append(row)
            print(name, row, flush=True)

    median = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    print(f"\n{'method':12} {'lr':>7} {'steps':>5} {'facts':>6} {'minutes':>8} {'tokens/s':>9} {'peak GB':>8} "
          f"{'disk MB':>8} {'pairs/s':>8} {'margin before -> after':>24}")
    for name, rows_ in table.items():
        extra = ""
        if "pairs_per_s" in rows_[0]:
            before = statistics.median(r["margin"][0] for r in rows_)
            after = statistics.median(r["margin"][1] for r in rows_)
            extra = f"{median(rows_, 'pairs_per_s'):8.2f} {f'{before:.1f} -> {after:.1f}':>24}"
        print(f"{name:12} {rows_[0]['lr']:7.0e} {rows_[0]['steps']:5d} {median(rows_, 'facts'):4.0f}/12 "
              f"{median(rows_, 'minutes'):8.2f} {median(rows_, 'tokens_per_s'):9.1f} {median(rows_, 'peak_gb'):8.2f} "
              f"{median(rows_, 'disk_mb'):8.1f} {extra}")


if __name__ == "__main__":
    main()
