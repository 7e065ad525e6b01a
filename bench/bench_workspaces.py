"""Demo-mode cost: what a visitor's own workspace adds, in memory and in time, against one shared Lab.

    .venv/bin/python bench/bench_workspaces.py [--visitors 40]

Each visitor adds the same small document to their knowledge base and runs one search, as a first visit to the
Space would. Baseline in the same process and run: the same visits against the one shared Lab (no demo mode),
each into its own knowledge base. Reported: resident memory growth per visitor, and the median time of a
visitor's first add and first search. The models are loaded (and warmed) before either part.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))

import core  # noqa: E402,F401
from core.config import load_settings  # noqa: E402
from core.workspaces import Workspaces  # noqa: E402

DOCUMENT = """# Harbour office notes

The harbour office opens at seven and closes at nineteen on weekdays. Ferry tickets are sold at window three.
The pilot boat is called Marlow and is painted orange. Harbour dues are paid monthly to the clerk.
"""


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def visit(lab, doc: Path, kb: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    lab.kbs.ingest([doc], kb=kb)
    t1 = time.perf_counter()
    lab.kbs.search("What is the pilot boat called?", kb=kb)
    return (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000


def run(visitors: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-workspaces-"))
    doc = root / "harbour.md"
    doc.write_text(DOCUMENT)
    settings = load_settings(data_dir=root / "shared", model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"]))
    shared = Workspaces(settings, demo=False)
    shared.shared.warm_up()
    visit(shared.shared, doc, "warm")

    results = {}
    for label in ("shared Lab (baseline)", "demo workspaces"):
        demo = label.startswith("demo")
        spaces = Workspaces(settings.with_(data_dir=root / "demo"), demo=True) if demo else shared
        before = rss_mib()
        adds, searches = [], []
        for i in range(visitors):
            lab = spaces.lab(f"visitor-{i:08d}") if demo else spaces.shared
            add_ms, search_ms = visit(lab, doc, "default" if demo else f"visitor-{i}")
            adds.append(add_ms)
            searches.append(search_ms)
        results[label] = {"rss": rss_mib() - before, "add": statistics.median(adds),
                          "search": statistics.median(searches)}
    base, ws = results["shared Lab (baseline)"], results["demo workspaces"]
    print(f"\n{visitors} visitors, one small document each, one search each\n")
    print(f"| | shared Lab (baseline) | demo workspaces | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| memory growth, all visitors (MiB) | {base['rss']:.1f} | {ws['rss']:.1f} | "
          f"{ws['rss'] / max(base['rss'], 0.1):.1f}x |")
    print(f"| memory per visitor (MiB) | {base['rss'] / visitors:.2f} | {ws['rss'] / visitors:.2f} | |")
    print(f"| first add, median (ms) | {base['add']:.0f} | {ws['add']:.0f} | {ws['add'] / base['add']:.2f}x |")
    print(f"| first search, median (ms) | {base['search']:.0f} | {ws['search']:.0f} | "
          f"{ws['search'] / base['search']:.2f}x |")
    disk = sum(f.stat().st_size for f in (root / "demo" / "workspaces").rglob("*") if f.is_file()) / 2**20
    print(f"\ndisk: {disk / visitors:.2f} MiB per workspace")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--visitors", type=int, default=40)
    run(parser.parse_args().visitors)
