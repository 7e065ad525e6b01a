"""PubMedQA (expert-labelled test split, in ../shared/data/pubmedqa_test): base vs RAG with the bundled model,
through the engine's own evaluation (core.evaluation), yes/no/maybe accuracy and macro-F1 with 95% intervals.

    .venv/bin/python bench/eval_pubmedqa.py [--sample 100] [--variants base,rag] [--data-dir DIR]

The 500 abstracts are ingested into a knowledge base `pubmedqa` (once per data folder); each question's gold
source is its own abstract, so retrieval hit@k and MRR are measured too. Always answering "yes" scores 55.2%
accuracy and 0.237 macro-F1 on all 500 (the data's README); the same baselines are printed for the questions run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))

import core  # noqa: E402,F401
from core.config import load_settings  # noqa: E402
from core.verdict import verdict  # noqa: E402
from core.lab import Lab  # noqa: E402
from core.metrics import macro_f1  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pubmedqa_test"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sample", type=int, default=500,
                        help="a seeded random sample of N questions (default: all 500; the file is sorted by label, "
                             "so its first N are not a fair sample)")
    parser.add_argument("--variants", default="base,rag")
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse a data folder (its ingested abstracts)")
    args = parser.parse_args()

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="eval-pubmedqa-"))
    lab = Lab(load_settings(data_dir=data_dir))
    rows = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines() if line]
    if "pubmedqa" not in lab.kbs.store.kb_names():
        t0 = time.perf_counter()
        lab.kbs.ingest(sorted((DATA / "docs").glob("*.txt")), kb="pubmedqa")
        print(f"ingested {len(rows)} abstracts in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    items = [{"question": r["question"], "answer": r["final_decision"], "source": r["doc"]} for r in rows]
    if args.sample < len(items):
        items = random.Random(0).sample(items, args.sample)
    t0 = time.perf_counter()
    run = lab.evaluation.run(items, f"PubMedQA test, {len(items)} of 500", args.variants.split(","), kb="pubmedqa",
                       progress=lambda f, m: print(f"\r{m}", end="", file=sys.stderr, flush=True))
    minutes = (time.perf_counter() - t0) / 60
    gold = [i["answer"] for i in items]
    print(f"\n\nPubMedQA test split, {len(items)} of 500 questions; run {run['id']} in {data_dir}; "
          f"{minutes:.1f} min\n")
    print("| variant | accuracy [95% CI] | macro-F1 [95% CI] | hit@k | MRR | grounded | ms/answer |")
    print("|---|---|---|---:|---:|---:|---:|")
    yes = sum(g == "yes" for g in gold) / len(gold)
    print(f"| always \"yes\" | {yes:.3f} | {macro_f1(['yes'] * len(gold), gold):.3f} | | | | |")
    for variant, s in run["summary"].items():
        def cell(metric):
            v = s.get(metric)
            return f"{v['mean']:.3f} [{v['low']:.3f}-{v['high']:.3f}]" if v else "–"

        def mean(metric):
            return f"{s[metric]['mean']:.3f}" if metric in s else "–"

        print(f"| {variant} | {cell('correct')} | {cell('macro_f1')} | {mean('hit')} | {mean('rr')} | "
              f"{mean('groundedness')} | {s.get('latency_ms', 0):.0f} |")
    labels = {}
    for variant in run["variants"]:
        predicted = [r["answers"][variant].get("scores", {}).get("label") for r in run["results"]]
        labels[variant] = {label: predicted.count(label) for label in ("yes", "no", "maybe", None)}
    print(f"\nPredicted labels: {labels}")
    print(f"\n{verdict(run)}")


if __name__ == "__main__":
    main()
