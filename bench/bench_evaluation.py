"""Evaluation throughput: questions per minute for two and for four variants, the engine's evaluation run
(core.evaluation) against the plain path a competent user would write, in the same process, alternating.

    .venv/bin/python bench/bench_evaluation.py [--questions 24] [--repeats 3] [--max-new-tokens 48]
                                               [--baseline-batch 24] [--variants 2,4] [--baseline-weights fp32,bf16]

Questions: the first `--questions` answerable questions about United_States_PDF.pdf from
bench/reading_sets/shared_pdfs.jsonl, in a knowledge base of that PDF (../shared/data/pdfs); without ../shared, the
demo set (assets/demo, 16 questions) and its documents.

Baseline, per variant: the same prompts (the engine's own search and prompt per question, its time counted), then
transformers' `generate` over batches of `--baseline-batch` questions, left-padded, greedy, the LoRA adapter
switched on for the fine-tuned variants and off (peft's `disable_adapter`) for the others, the model loaded in each of
`--baseline-weights` (on a CPU with native bf16 a competent user would try bf16 too). Each baseline batch size and
precision is its own row; the best one is the baseline the ratio is taken against.

Engine: `lab.evaluation.run` as the Evaluate tab runs it (the first two questions alone for the latency figures,
then the rest sharing the model's decode batch, all their prompts read before they decode in step), loop stopping
off so both write the same greedy answers. Each run of either path starts without the sentence vectors an earlier
run kept (a first evaluation in a fresh app).

The adapter is a freshly initialised LoRA (rank 16 on every linear layer, as the Quick preset trains), made as in
bench_compare: it costs what a trained one costs to run.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))

import core  # noqa: E402,F401
from bench_compare import make_adapter  # noqa: E402
from core.config import load_settings  # noqa: E402
from core.generation import GenerationConfig  # noqa: E402
from core.lab import Lab  # noqa: E402
from core.models import resolve_base_model  # noqa: E402
from core.variants import VARIANTS  # noqa: E402

PDF = ROOT.parent / "shared" / "data" / "pdfs" / "United_States_PDF.pdf"
READING_SET = ROOT / "bench" / "reading_sets" / "shared_pdfs.jsonl"
DEMO = ROOT / "assets" / "demo"
VARIANT_SETS = {2: ["base", "rag"], 4: ["base", "finetuned", "rag", "finetuned+rag"]}


def questions(count: int) -> tuple[list[dict], list[Path], str]:
    if PDF.exists():
        rows = [json.loads(line) for line in READING_SET.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("file") == PDF.name and r.get("kind", "answer") == "answer"][:count]
        return [{"question": r["question"], "answer": r["answer"]} for r in rows], [PDF], PDF.name
    with open(DEMO / "qa.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    docs = sorted(p for p in DEMO.glob("*.md") if p.name != "README.md")
    return [{"question": r["question"], "answer": r["answer"]} for r in rows], docs, "assets/demo (no ../shared)"


class PlainBaseline:
    """transformers + peft as a user would run an evaluation: one variant at a time, `generate` over batches."""

    def __init__(self, lab: Lab, adapter_folder: Path, weights: str = "fp32"):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_base_model(lab.settings.base_model, lab.settings)
        self.torch, self.lab = torch, lab
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if weights == "bf16" else torch.float32
        self.model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=dtype),
                                               adapter_folder).eval()

    def run(self, items: list[dict], variants: list[str], adapter: str, batch: int, max_new_tokens: int) -> dict:
        answers = self.lab.answers
        forget_vectors()
        t0 = time.perf_counter()
        prompts = {v: [] for v in variants}  # per variant: (question index, prompt text)
        texts: dict[tuple[int, str], str] = {}
        for index, item in enumerate(items):
            turn = answers._prepare(item["question"], variants, "bench", None, None, adapter, None, None, None, None)
            for answer, conversation, _ in turn.rows:
                prompt = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
                prompts[answer.variant].append((index, prompt))
            for variant, answer in turn.answers.items():
                if answer.answer or answer.error:  # answered without the model ("not in your documents")
                    texts[(index, variant)] = answer.answer
        for variant, rows in prompts.items():
            for start in range(0, len(rows), batch):
                part = rows[start:start + batch]
                encoded = self.tokenizer([p for _, p in part], return_tensors="pt", padding=True,
                                         add_special_tokens=False)
                adapter = (contextlib.nullcontext() if VARIANTS[variant].uses_adapter
                           else self.model.disable_adapter())
                with self.torch.inference_mode(), adapter:
                    out = self.model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                              pad_token_id=self.tokenizer.pad_token_id)
                width = encoded["input_ids"].shape[1]
                for (index, _), ids in zip(part, out):
                    texts[(index, variant)] = self.tokenizer.decode(ids[width:], skip_special_tokens=True).strip()
        return {"wall": time.perf_counter() - t0, "texts": texts}


def forget_vectors() -> None:
    """Each run starts without the sentence vectors an earlier run kept (core.kept_vectors), as a first
    evaluation in a fresh app does: what a run reuses, it found itself."""
    from core import kept_vectors

    kept_vectors.forget()


def engine_run(lab: Lab, items: list[dict], variants: list[str], adapter: str, max_new_tokens: int) -> dict:
    forget_vectors()
    config = GenerationConfig(max_new_tokens=max_new_tokens, stop_loops=False)
    t0 = time.perf_counter()
    run = lab.evaluation.run(items, "bench", variants, kb="bench", adapter=adapter, config=config)
    wall = time.perf_counter() - t0
    texts = {(r["index"], v): r["answers"][v]["answer"] for r in run["results"] for v in variants}
    return {"wall": wall, "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--baseline-batch", default="24")
    parser.add_argument("--variants", default="2,4")
    parser.add_argument("--baseline-weights", default="fp32,bf16", help="the plain baselines' precisions")
    args = parser.parse_args()
    import torch

    items, files, source = questions(args.questions)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-evaluation-"))
    lab = Lab(load_settings(data_dir=data_dir))
    lab.kbs.ingest(files, kb="bench")
    adapter = make_adapter(lab, data_dir / "new-adapter")
    baselines = {w: PlainBaseline(lab, data_dir / "new-adapter", w) for w in args.baseline_weights.split(",")}
    batches = [int(b) for b in args.baseline_batch.split(",")]
    counts = [int(v) for v in args.variants.split(",")]
    engine_run(lab, items[:2], VARIANT_SETS[4], adapter, 2)  # warm-up: loads the model, attaches the adapter
    for baseline in baselines.values():
        baseline.run(items[:2], VARIANT_SETS[4], adapter, 2, 2)

    runs: dict[tuple[int, str], list[dict]] = {}
    for _ in range(args.repeats):
        for count in counts:
            variants = VARIANT_SETS[count]
            runs.setdefault((count, "engine"), []).append(
                engine_run(lab, items, variants, adapter, args.max_new_tokens))
            for batch in batches:
                for weights, baseline in baselines.items():
                    runs.setdefault((count, f"plain generate {weights}, batches of {batch}"), []).append(
                        baseline.run(items, variants, adapter, batch, args.max_new_tokens))

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), device {lab.settings.resolved_device}")
    print(f"{len(items)} questions from {source}; up to {args.max_new_tokens} new tokens per answer, greedy; "
          f"median of {args.repeats} (min-max)\n")
    print("| variants | path | wall s | questions/min | vs best baseline | answers as the engine's |")
    print("|---:|---|---:|---:|---:|---:|")
    for count in counts:
        walls = {path: [r["wall"] for r in rs] for (c, path), rs in runs.items() if c == count}
        best = min((p for p in walls if p != "engine"), key=lambda p: statistics.median(walls[p]))
        engine_texts = runs[(count, "engine")][0]["texts"]
        for path, values in walls.items():
            median = statistics.median(values)
            texts = runs[(count, path)][0]["texts"]
            same = sum(texts.get(k) == v for k, v in engine_texts.items())
            ratio = statistics.median(walls[best]) / median
            print(f"| {count} | {path} | {median:.1f} ({min(values):.1f}-{max(values):.1f}) | "
                  f"{len(items) / median * 60:.1f} | {ratio:.2f}x | {same}/{len(engine_texts)} |")


if __name__ == "__main__":
    main()
