"""One RAG column answering alone: the engine's decoder (core.generation, with and without prompt lookup) against
plain transformers `generate` on the same prompts, in the same run. Prompts are the app's own RAG prompts (its
retrieval, reading and wording) for the guided demo's 16 questions and, where ../shared is present, the reading
set's questions on United_States_PDF.pdf. Greedy, natural length up to --tokens.

    .venv/bin/python bench/bench_one_column.py [--repeats 3] [--tokens 64] [--limit 16]

Printed: the whole answers' time (prompt included) and tokens per second over all questions, per repeat the
median and min-max, the ratio to plain `generate`, and how many answers are token for token plain `generate`'s.
"""
from __future__ import annotations

import argparse
import csv
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
PDF = ROOT.parent / "shared" / "data" / "pdfs" / "United_States_PDF.pdf"
READING_SET = ROOT / "bench" / "reading_sets" / "shared_pdfs.jsonl"

import core  # noqa: E402,F401
import core.decode_loop  # noqa: E402
from core.config import load_settings  # noqa: E402
from core.demo import DEMO_DIR, DEMO_DOCUMENTS, DEMO_KB, DEMO_QUESTIONS  # noqa: E402
from core.generation import GenerationConfig, RowDone, stream_chat  # noqa: E402
from core.lab import Lab  # noqa: E402


def rag_prompts(lab: Lab, limit: int) -> list[list[dict]]:
    """The app's RAG conversation for each question whose passages answer it (the others need no model)."""
    lab.kbs.ingest([DEMO_DIR / name for name in DEMO_DOCUMENTS], kb=DEMO_KB)
    with open(DEMO_DIR / DEMO_QUESTIONS, newline="") as f:
        asked = [(row["question"], DEMO_KB) for row in csv.DictReader(f)][:limit]
    if PDF.exists():
        lab.kbs.ingest([PDF], kb="us")
        items = [json.loads(line) for line in READING_SET.read_text().splitlines()]
        asked += [(i["question"], "us") for i in items if i["file"] == PDF.name and i.get("kind") == "answer"][:limit]
    conversations = []
    for question, kb in asked:
        turn = lab.answers._prepare(question, ["rag"], kb, None, None, None, None, None, None, None)
        conversations += [conversation for _, conversation, _ in turn.rows]
    return conversations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--limit", type=int, default=16, help="questions per set")
    args = parser.parse_args()
    import torch

    lab = Lab(load_settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-one-column-"))))
    generator = lab.models.generator
    conversations = rag_prompts(lab, args.limit)
    tokenizer, model = generator.tokenizer, generator.model
    config = GenerationConfig(max_new_tokens=args.tokens, stop_loops=False)  # `generate` has no loop stop

    def plain(conversation) -> list[int]:
        encoded = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        return out[0, encoded["input_ids"].shape[1]:].tolist()

    def engine(lookup: int):
        def answer(conversation) -> list[int]:
            core.decode_loop.PROMPT_LOOKUP_TOKENS = lookup
            done = next(e for e in stream_chat(generator, [conversation], config) if isinstance(e, RowDone))
            return tokenizer(done.text, add_special_tokens=False)["input_ids"]
        return answer

    runs = {"plain generate": plain, "engine, prompt lookup off": engine(0), "engine, prompt lookup on": engine(4)}
    reference = [plain(c) for c in conversations]
    texts = {name: [tokenizer.decode(t, skip_special_tokens=True) for t in (reference if fn is plain else
                                                                            [fn(c) for c in conversations])]
             for name, fn in runs.items()}
    tokens = sum(len(t) for t in reference)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate, so a slow moment of the machine hits each alike
        for name, fn in runs.items():
            started = time.perf_counter()
            for conversation in conversations:
                fn(conversation)
            seconds[name].append(time.perf_counter() - started)
    core.decode_loop.PROMPT_LOOKUP_TOKENS = 4
    base = statistics.median(seconds["plain generate"])
    print(f"\n{len(conversations)} RAG answers, {tokens} tokens in all (plain generate's), one row, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} (min-max)\n")
    print("| decoder | s for all answers | tokens/s | x plain generate | answers = plain generate's |")
    print("|---|---:|---:|---:|---:|")
    reference_texts = texts["plain generate"]
    for name, values in seconds.items():
        median = statistics.median(values)
        same = sum(a.strip() == b.strip() for a, b in zip(texts[name], reference_texts))
        print(f"| {name} | {median:.1f} ({min(values):.1f}-{max(values):.1f}) | {tokens / median:.1f} | "
              f"{base / median:.2f}x | {same}/{len(conversations)} |")


if __name__ == "__main__":
    main()
