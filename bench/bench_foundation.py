"""Foundation benchmark: answer latency of the engine, against the raw model in the same run
(ingestion throughput: bench/bench_ingest.py).

    .venv/bin/python bench/bench_foundation.py [--pdf PATH] [--repeats 3] [--max-new-tokens 64]

Answers: the engine's streamed answer (time to first token, decode tokens/s) vs a raw
`model.generate` on the same prompt tokens; and base+RAG batched side by side vs one variant alone.
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
from core.generation import GenerationConfig  # noqa: E402
from core.lab import Lab  # noqa: E402

DEFAULT_PDF = ROOT.parent / "shared" / "data" / "pdfs" / "United_States_PDF.pdf"
QUESTION = "When did the thirteen colonies declare independence from the British Crown?"


def median(values):
    return statistics.median(values)


def raw_generate(lab: Lab, messages: list[dict], max_new_tokens: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s) of plain model.generate on the same prompt."""
    import torch

    tok, model = lab.models.generator.tokenizer, lab.models.generator.model
    enc = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), return_tensors="pt",
              add_special_tokens=False)
    args = dict(**enc, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(**args, max_new_tokens=1)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.generate(**args, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
        total = time.perf_counter() - t0
    return ttft, (max_new_tokens - 1) / (total - ttft)


def bench_answers(pdf: Path, repeats: int, max_new_tokens: int) -> list[tuple]:
    from core.retrieval import relevant

    data_dir = Path(tempfile.mkdtemp(prefix="bench-answer-"))
    lab = Lab(load_settings(data_dir=data_dir))
    lab.kbs.ingest([pdf])
    lab.warm_up()
    hits, _ = lab.kbs.search(QUESTION)
    from core.variants import get_variant

    messages = get_variant("rag").messages(QUESTION, relevant(hits, lab.settings.min_score))
    # Equal lengths: engine and raw runs, one column and two, all generate exactly max_new_tokens.
    config = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens)
    rows = {k: [] for k in ("raw_ttft", "raw_tps", "rag_ttft", "rag_tps", "rag_ret", "base_total", "rag_total", "pair_total")}
    for _ in range(repeats):
        ttft, tps = raw_generate(lab, messages, max_new_tokens)
        rows["raw_ttft"].append(ttft * 1000)
        rows["raw_tps"].append(tps)
        rag = lab.answers.compare(QUESTION, ["rag"], config=config)[0]
        rows["rag_ttft"].append(rag.timings["ttft_ms"])
        rows["rag_tps"].append(rag.timings["tokens_per_s"])
        rows["rag_ret"].append(rag.timings["retrieval_ms"])
        rows["rag_total"].append(rag.timings["total_ms"] / 1000)
        t0 = time.perf_counter()
        lab.answers.compare(QUESTION, ["base"], config=config)
        rows["base_total"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        lab.answers.compare(QUESTION, ["base", "rag"], config=config)
        rows["pair_total"].append(time.perf_counter() - t0)
    m = {k: median(v) for k, v in rows.items()}
    shutil.rmtree(data_dir, ignore_errors=True)
    return [
        ("time to first token, ms (raw generate, RAG prompt)", f"{m['raw_ttft']:.0f}", "1.00x"),
        ("time to first token, ms (engine RAG, incl. retrieval)", f"{m['rag_ttft']:.0f}", f"{m['rag_ttft'] / m['raw_ttft']:.2f}x"),
        ("  of which retrieval, ms", f"{m['rag_ret']:.0f}", ""),
        ("decode tokens/s (raw generate)", f"{m['raw_tps']:.1f}", "1.00x"),
        ("decode tokens/s (engine RAG, streamed)", f"{m['rag_tps']:.1f}", f"{m['rag_tps'] / m['raw_tps']:.2f}x"),
        ("wall s, base alone", f"{m['base_total']:.1f}", ""),
        ("wall s, RAG alone (the slower column)", f"{m['rag_total']:.1f}", "1.00x"),
        ("wall s, base + RAG side by side", f"{m['pair_total']:.1f}", f"{m['pair_total'] / m['rag_total']:.2f}x"),
        ("wall s, base + RAG if run one after the other", f"{m['base_total'] + m['rag_total']:.1f}",
         f"{(m['base_total'] + m['rag_total']) / m['rag_total']:.2f}x"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdf", type=Path, default=DEFAULT_PDF)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    if not args.pdf.exists():
        raise SystemExit(f"{args.pdf} not found; pass --pdf PATH")
    import torch

    print(f"# {platform.node()} · {os.cpu_count()} CPUs · torch {torch.__version__} · threads {torch.get_num_threads()}"
          f" · {time.strftime('%Y-%m-%d')} · {args.pdf.name} · median of {args.repeats}")
    rows = bench_answers(args.pdf, args.repeats, args.max_new_tokens)
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value | ratio |")
    print(f"|{'-' * (width + 2)}|------:|------:|")
    for name, value, ratio in rows:
        print(f"| {name.ljust(width)} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
