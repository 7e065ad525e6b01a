"""Decode speed of the bundled model at one row with plain `generate`, by weight precision, and what each costs in
greedy answers: fp32 (today's), bf16 weights, int8 dynamic quantization of the linear layers (torch.ao), and a static
KV cache under torch.compile. Groundwork for issue 19: which of them is worth building into the app.

    .venv/bin/python bench/bench_decode.py [--repeats 3] [--tokens 64] [--compile]

Tokens/s: `--tokens` new tokens forced (min_new_tokens), after a short warm-up, per question; the median over the 16
demo questions, each repeat, then the median and spread of the repeats. Greedy agreement against fp32 on the same
questions (48 tokens each): answers identical, and the mean share of the fp32 answer's tokens that come before the
first different token. torch.compile is slow to warm up here (minutes), so it runs only with --compile.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEMO_QA = ROOT / "assets" / "demo" / "qa.csv"


def questions() -> list[str]:
    with DEMO_QA.open(newline="") as f:
        return [row["question"] for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.config import load_settings
    from core.models import resolve_base_model

    settings = load_settings(data_dir=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-decode")
    source = resolve_base_model(settings.base_model, settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    asked = questions()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True) for q in asked]

    def generate(model, prompt, n, forced):
        with torch.inference_mode():
            return model.generate(**prompt, max_new_tokens=n, min_new_tokens=n if forced else None, do_sample=False,
                                  pad_token_id=tokenizer.eos_token_id)[0, prompt["input_ids"].shape[1]:].tolist()

    def speed(model) -> float:
        rates = []
        for prompt in prompts:
            generate(model, prompt, 4, True)
            started = time.perf_counter()
            generate(model, prompt, args.tokens, True)
            rates.append(args.tokens / (time.perf_counter() - started))
        return statistics.median(rates)

    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    variants = {"fp32 (today)": base, "bf16 weights": copy.deepcopy(base).to(torch.bfloat16)}
    variants["int8 dynamic"] = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear},
                                                                      dtype=torch.qint8)
    if args.compile:
        compiled = copy.deepcopy(base)
        compiled.generation_config.cache_implementation = "static"
        compiled.forward = torch.compile(compiled.forward, mode="reduce-overhead")
        started = time.perf_counter()
        generate(compiled, prompts[0], 8, True)
        print(f"torch.compile warm-up: {time.perf_counter() - started:.0f} s", flush=True)
        variants["static cache + compile"] = compiled

    reference = [generate(base, prompt, 48, False) for prompt in prompts]
    rows = {}
    for name, model in variants.items():
        answers = reference if model is base else [generate(model, prompt, 48, False) for prompt in prompts]
        same = sum(a == r for a, r in zip(answers, reference))
        prefix = []
        for a, r in zip(answers, reference):
            first_diff = next((i for i, (x, y) in enumerate(zip(a, r)) if x != y), min(len(a), len(r)))
            prefix.append(first_diff / max(len(r), 1) if a != r else 1.0)
        rows[name] = {"rates": [], "same": same, "prefix": statistics.mean(prefix)}
    for repeat in range(args.repeats):  # alternate the variants, so drift on the machine hits each alike
        for name, model in variants.items():
            rows[name]["rates"].append(speed(model))
            print(f"run {repeat + 1}: {name} {rows[name]['rates'][-1]:.1f} tokens/s", flush=True)
    plain = statistics.median(rows["fp32 (today)"]["rates"])
    print(f"\n{len(asked)} demo questions, {args.tokens} new tokens each, 1 row, {torch.get_num_threads()} threads\n")
    print(f"{'weights':24} {'tokens/s':>22} {'x fp32':>7} {'greedy = fp32':>14} {'tokens before a change':>23}")
    for name, row in rows.items():
        rates = row["rates"]
        rate = statistics.median(rates)
        print(f"{name:24} {rate:8.1f} ({min(rates):5.1f}-{max(rates):5.1f}) {rate / plain:6.2f}x "
              f"{row['same']:>9}/{len(asked)} {row['prefix'] * 100:21.0f}%")


if __name__ == "__main__":
    main()
