"""Knowledge-base scale benchmark: hybrid query latency at 10k and 100k chunks, the first keyword search after a
write, a delete and in a fresh process, and deleting one file.

    .venv/bin/python bench/bench_store.py [--sizes 10000 100000] [--queries 50]

Chunks are synthetic (sentences drawn from a fixed vocabulary, random unit vectors: embedding 100k real chunks
takes over an hour on 2 cores), written through the engine's own Store in files of 1,000 chunks. Every chunk holds
most of the 27 words, so a keyword query matches nearly all of them: the worst case for the keyword index. Queries
are embedded by the real model. Baselines in the same run: a bare Chroma vector query for the same embedding, and
(when the bm25s package is installed) building a bm25s index over the listed chunks, which is what the engine did
before its keyword index was saved.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))

import core  # noqa: E402,F401
from core.config import load_settings  # noqa: E402
from core.lab import Lab  # noqa: E402
from core.catalog import FileRecord  # noqa: E402

CHUNKS_PER_FILE = 1000
WORDS = ("river policy leave budget harbour engine contract invoice garden museum treaty sensor battery council "
         "winter archive pension license bridge festival railway clinic library tariff vaccine satellite orchard").split()
QUERIES = ["What does the pension policy say about winter leave?", "Which treaty covers the harbour tariff?",
           "When was the railway bridge license renewed?", "How is the clinic vaccine budget approved?",
           "Who maintains the museum archive sensor?"]


def synthetic_nodes(count: int, rng: random.Random, nprng) -> list:
    from llama_index.core.schema import TextNode

    vectors = nprng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    nodes = []
    for i in range(count):
        text = " ".join(rng.choices(WORDS, k=40)) + f" reference code ZX-{rng.randrange(10**6)}."
        node = TextNode(text=text, metadata={"file": "", "page": str(i // 40 + 1)}, embedding=vectors[i].tolist())
        nodes.append(node)
    return nodes


def fill(lab: Lab, total: int, rng, nprng) -> float:
    lab.kbs.store.create_kb("bench")
    t0 = time.perf_counter()
    for n in range(total // CHUNKS_PER_FILE):
        name = f"file-{n:04d}.txt"
        nodes = synthetic_nodes(CHUNKS_PER_FILE, rng, nprng)
        for node in nodes:
            node.metadata["file"] = name
        record = FileRecord("bench", name, uuid.uuid4().hex, 25, len(nodes), time.time(), uuid.uuid4().hex)
        lab.kbs.store.put_file(record, nodes)
    return time.perf_counter() - t0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def timed_ms(call) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000


FRESH_PROCESS = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from core.store import Store
store = Store(Path({data_dir!r}))
t0 = time.perf_counter()
store.keyword_search("bench", {query!r}, 20)
print((time.perf_counter() - t0) * 1000)
"""


def fresh_process_keyword_ms(data_dir: Path) -> float:
    """The first keyword search of a process that has just opened the store (the CLI's case)."""
    code = FRESH_PROCESS.format(root=str(ROOT), data_dir=str(data_dir), query=QUERIES[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def bm25s_rebuild_ms(lab: Lab) -> float | None:
    """Index every listed chunk with bm25s, as the engine did in memory before each first search after a change."""
    try:
        import bm25s
        import Stemmer
    except ImportError:
        return None
    t0 = time.perf_counter()  # reading the chunks out of the store was part of it
    texts = [chunk["text"] for chunk in lab.kbs.store.listed_chunks("bench")]
    index = bm25s.BM25()
    index.index(bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False),
                show_progress=False)
    return (time.perf_counter() - t0) * 1000


def measure(lab: Lab, queries: int) -> dict:
    embedder = lab.models.embedder
    store = lab.kbs.store
    collection = store.collection("bench")
    first = timed_ms(lambda: store.keyword_search("bench", QUERIES[0], 20))  # the first after writing
    engine, raw, embed = [], [], []
    for i in range(queries):
        question = QUERIES[i % len(QUERIES)] + f" ZX-{i}"
        t0 = time.perf_counter()
        vector = embedder.encode([question], normalize_embeddings=True)[0].tolist()
        embed.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        collection.query(query_embeddings=[vector], n_results=5)
        raw.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        lab.kbs.search(question, kb="bench", top_k=5)  # embeds again + hybrid retrieval, as a user's question does
        engine.append((time.perf_counter() - t0) * 1000)
    return {"first": first, "engine": engine, "raw": raw, "embed": embed,
            "keyword": [timed_ms(lambda q=q: store.keyword_search("bench", q, 20)) for q in QUERIES]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rng, nprng = random.Random(7), np.random.default_rng(7)
    print(f"# {os.cpu_count()} CPUs · {time.strftime('%Y-%m-%d')} · hybrid top-5 · {args.queries} queries per size")
    print("| chunks | write s | raw Chroma p50 / p95 ms | embed query p50 ms | engine hybrid p50 / p95 ms (incl. embedding) "
          "| keyword search p50 ms | first keyword search ms: after a write / after a delete / fresh process "
          "| bm25s index rebuild ms | delete one 1,000-chunk file s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-store-"))
        lab = Lab(load_settings(data_dir=data_dir))
        lab.models.embedder.encode(["warm up"])
        write_s = fill(lab, size, rng, nprng)
        m = measure(lab, args.queries)
        rebuild = bm25s_rebuild_ms(lab)
        delete_s = timed_ms(lambda: lab.kbs.delete_file("bench", "file-0000.txt")) / 1000
        after_delete = timed_ms(lambda: lab.kbs.store.keyword_search("bench", QUERIES[2], 20))
        fresh = statistics.median(fresh_process_keyword_ms(data_dir) for _ in range(3))
        assert lab.kbs.store.chunk_count("bench") == size - CHUNKS_PER_FILE
        print(f"| {size:,} | {write_s:.0f} | {statistics.median(m['raw']):.1f} / {percentile(m['raw'], .95):.1f} "
              f"| {statistics.median(m['embed']):.1f} "
              f"| {statistics.median(m['engine']):.1f} / {percentile(m['engine'], .95):.1f} "
              f"| {statistics.median(m['keyword']):.0f} | {m['first']:.0f} / {after_delete:.0f} / {fresh:.0f} "
              f"| {'-' if rebuild is None else f'{rebuild:,.0f}'} | {delete_s:.2f} |", flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
