"""Ingestion throughput of the engine against the raw embedding model on the very same chunks, in the same run.

    .venv/bin/python bench/bench_ingest.py [--repeats 3] [--abstracts 200]

Corpora, read in place from ../shared/data: PubMedQA abstracts as .txt files (many small files) and a 20-page
PDF (one big file). The engine does read -> split -> embed -> write to Chroma and the catalog; the baseline is
`embedder.encode` of the chunk texts the engine stored (batch 64), which is all an ingest cannot avoid doing.
"""
from __future__ import annotations

import argparse
import os
import platform
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
from core.documents import read_pages  # noqa: E402
from core.lab import Lab  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def run(paths: list[Path], repeats: int) -> dict:
    engine, raw, read = [], [], []
    chunks = 0
    for _ in range(repeats):
        data_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
        lab = Lab(load_settings(data_dir=data_dir))
        lab.models.embedder.encode(["warm up"])  # loaded and warmed outside the clock
        t0 = time.perf_counter()
        results = lab.kbs.ingest(paths, "bench")
        engine_s = time.perf_counter() - t0
        assert all(r.status == "added" for r in results), [r for r in results if r.status != "added"]
        texts = [d for page in lab.kbs.store.all_chunks("bench") for d in page["documents"]]
        chunks = len(texts)
        t0 = time.perf_counter()
        lab.models.embedder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        raw_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for path in paths:
            read_pages(path, path.name, 50)
        read.append(time.perf_counter() - t0)
        engine.append(chunks / engine_s)
        raw.append(chunks / raw_s)
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"chunks": chunks, "engine": statistics.median(engine), "raw": statistics.median(raw),
            "read_s": statistics.median(read), "raw_s": chunks / statistics.median(raw)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--abstracts", type=int, default=200)
    args = parser.parse_args()
    abstracts = sorted((DATA / "pubmedqa_test" / "docs").glob("*.txt"))[: args.abstracts]
    pdf = DATA / "pdfs" / "United_States_PDF.pdf"
    if not abstracts or not pdf.exists():
        raise SystemExit(f"{DATA} is missing its PubMedQA docs or PDFs")
    import torch

    print(f"# {platform.node()} · {os.cpu_count()} CPUs · torch {torch.__version__} · threads {torch.get_num_threads()}"
          f" · {time.strftime('%Y-%m-%d')} · median of {args.repeats}")
    print("| corpus | chunks | raw embedder chunks/s | engine chunks/s | engine / raw | reading alone s | embedding alone s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, paths in ((f"{len(abstracts)} PubMedQA abstracts (.txt)", abstracts), (f"{pdf.name} (20-page PDF)", [pdf])):
        m = run(paths, args.repeats)
        print(f"| {label} | {m['chunks']} | {m['raw']:.1f} | {m['engine']:.1f} | {m['engine'] / m['raw']:.2f}x"
              f" | {m['read_s']:.1f} | {m['raw_s']:.1f} |")


if __name__ == "__main__":
    main()
