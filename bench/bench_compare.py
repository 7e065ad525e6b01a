"""Compare-tab benchmark: all four columns (base, fine-tuned, RAG, fine-tuned + RAG) for one question against
each column alone, measured in the same run, with answers of equal length.

    .venv/bin/python bench/bench_compare.py [--pdf PATH] [--repeats 3] [--max-new-tokens 64] [--no-switches]

A second table switches each of the engine's optimisations off in turn, in the same process, for the four columns
together (interleaved with the all-on runs): what each one is worth today.

The adapter is a freshly initialised LoRA (rank 16 on every linear layer, as the Quick preset trains): it costs
what a trained one costs to run, and the benchmark needs no training run. Memory is the process's resident set
size, sampled every 10 ms.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import threading
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
COLUMNS = ["base", "finetuned", "rag", "finetuned+rag"]


class PeakRss:
    """The highest resident set size seen while the block runs."""

    def __init__(self):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_adapter(lab: Lab, folder: Path) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.models import resolve_base_model

    model = AutoModelForCausalLM.from_pretrained(resolve_base_model(lab.settings.base_model, lab.settings))
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(folder)
    return lab.adapters.add("bench-lora", folder, {"base_model": lab.settings.base_model, "created": time.time()})


def run(lab: Lab, columns: list[str], config: GenerationConfig, adapter: str) -> dict:
    t0 = time.perf_counter()
    answers = lab.answers.compare(QUESTION, columns, kb="bench", config=config, adapter=adapter)
    wall = time.perf_counter() - t0
    for a in answers:
        assert not a.error, a.error
        assert a.timings["new_tokens"] == config.max_new_tokens, a.timings
    return {"wall": wall, **{a.variant: a.timings for a in answers}}


CACHES = {"transformers' cache": None, "engine's cache (in place, held fp32)": "held",
          "engine's cache, held in the model's dtype": "own", "engine's cache and lean step (the app)": "lean"}


def decode_step_ms(lab: Lab, rows: int, cached: int = 1000, steps: int = 20, cache_kind: str | None = None) -> float:
    """One decode step of the bare model (no adapters) over `rows` rows: what batching costs here; with
    `cache_kind` ("held", "own") the engine's CPU cache (core/kv_cache.py) instead of transformers'; "lean": that
    cache, and the step through core.lean_step as the engine takes it."""
    import torch
    from transformers import DynamicCache

    from core import lean_step
    from core.kv_cache import roomy
    from core.row_attention import held_dtype

    model = lab.models.generator.model
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = torch.randint(0, 1000, (rows, cached), device=model.device)
    cache = DynamicCache(config=model.config)
    if cache_kind:
        roomy(cache, held_dtype(model) if cache_kind in ("held", "lean") else None)
    lean = cache_kind == "lean" and lean_step.usable(model)
    times = []
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for i in range(steps):
            mask = torch.ones(rows, cached + i + 1, dtype=torch.long, device=model.device)
            t0 = time.perf_counter()
            if lean:
                positions = torch.full((rows, 1), cached + i, device=model.device)
                lean_step.forward(model, ids[:, :1], mask, positions, cache)
            else:
                model(input_ids=ids[:, :1], attention_mask=mask, past_key_values=cache, use_cache=True,
                      logits_to_keep=1)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


@contextlib.contextmanager
def switched_off(lab: Lab, name: str):
    """The engine with one optimisation turned off (None: all on)."""
    import torch

    from core import decode_loop as generation  # where the engine reads its switches

    saved = {}
    if name == "prefill apart":  # every column's prompt in one left-padded prefill, as before the joint decode
        saved["plan_batches"] = generation.plan_batches
        generation.plan_batches = lambda lengths, device: [list(range(len(lengths)))]
    elif name == "prefill in pieces":
        saved["PREFILL_CHUNK_TOKENS"] = generation.PREFILL_CHUNK_TOKENS
        generation.PREFILL_CHUNK_TOKENS = 10**9
    elif name == "last-position logits":
        saved["accepts_logits_to_keep"] = generation.accepts_logits_to_keep
        generation.accepts_logits_to_keep = lambda model: False
    elif name == "prompt lookup":  # a row left decoding alone no longer checks its prompt's suggestions
        saved["PROMPT_LOOKUP_TOKENS"] = generation.PROMPT_LOOKUP_TOKENS
        generation.PROMPT_LOOKUP_TOKENS = 0
    elif name == "KV cache appended in place":  # transformers' cache, which concatenates every step
        from core import kv_cache

        saved_roomy = kv_cache.roomy
        kv_cache.roomy = lambda cache, *held: cache
    elif name == "KV cache held in fp32":  # a 16-bit model's cache held in 16 bits, cast up by each step's attention
        from core import row_attention

        saved_held = row_attention.held_dtype
        row_attention.held_dtype = lambda model: None
    elif name == "decode-step attention path":  # a decode step's rows through the general row-by-row loop
        from core import row_attention as attention_module

        attention_module.DECODE_STEP_PATH = False
    elif name == "lean decode steps":  # decode steps through transformers' forward
        from core import lean_step

        lean_step.LEAN_STEPS = False
    elif name == "CPU linear layout":  # torch's own linear again (fp32: not by columns; bf16: repacked every call)
        patched = {layer: layer.__dict__.pop("forward") for layer in lab.models.generator.model.modules()
                   if isinstance(layer, torch.nn.Linear) and "forward" in layer.__dict__}
    try:
        yield
    finally:
        for attribute, value in saved.items():
            setattr(generation, attribute, value)
        if name == "KV cache appended in place":
            kv_cache.roomy = saved_roomy
        if name == "KV cache held in fp32":
            row_attention.held_dtype = saved_held
        if name == "decode-step attention path":
            attention_module.DECODE_STEP_PATH = True
        if name == "lean decode steps":
            lean_step.LEAN_STEPS = True
        if name == "CPU linear layout":
            for layer, forward in patched.items():
                layer.forward = forward


SWITCHES = ["prefill apart", "prefill in pieces", "last-position logits", "CPU linear layout",
            "KV cache appended in place", "KV cache held in fp32", "decode-step attention path", "lean decode steps",
            "prompt lookup"]


def switch_table(lab: Lab, config: GenerationConfig, adapter: str, repeats: int) -> None:
    """Four columns together with all optimisations on, and with each one off, interleaved; median of `repeats`."""
    runs: dict[str, list] = {name: [] for name in ["all on", *SWITCHES]}
    for _ in range(repeats):
        for name in runs:
            with switched_off(lab, name if name != "all on" else ""):
                runs[name].append(run(lab, COLUMNS, config, adapter))
    med = statistics.median
    on_wall = med(r["wall"] for r in runs["all on"])
    print("\n| four columns together | wall s (min-max) | ratio to all on | first token ms: " +
          " / ".join(COLUMNS) + " |")
    print("|---|---:|---:|---:|")
    for name, results in runs.items():
        walls = [r["wall"] for r in results]
        firsts = " / ".join(f"{med(r[c]['ttft_ms'] for r in results):.0f}" for c in COLUMNS)
        label = name if name == "all on" else f"{name} off"
        print(f"| {label} | {med(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | {med(walls) / on_wall:.2f}x | "
              f"{firsts} |")


def main() -> None:
    global QUESTION
    parser = argparse.ArgumentParser()
    parser.add_argument("--pdf", type=Path, default=DEFAULT_PDF)
    parser.add_argument("--question", default=QUESTION, help="one the document answers (the RAG columns must answer)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-switches", action="store_true", help="skip the table of optimisations switched off")
    args = parser.parse_args()
    import torch

    QUESTION = args.question
    data_dir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    lab = Lab(load_settings(data_dir=data_dir))
    lab.kbs.ingest([args.pdf], kb="bench")
    adapter = make_adapter(lab, data_dir / "new-adapter")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    run(lab, COLUMNS, GenerationConfig(max_new_tokens=2, min_new_tokens=2), adapter)  # warm-up, attaches adapter

    singles = {c: [] for c in COLUMNS}
    together, peaks = [], {}
    import psutil

    idle_rss = psutil.Process().memory_info().rss
    for _ in range(args.repeats):
        for column in COLUMNS:
            with PeakRss() as rss:
                singles[column].append(run(lab, [column], config, adapter))
            peaks[column] = max(peaks.get(column, 0), rss.peak)
        with PeakRss() as rss:
            together.append(run(lab, COLUMNS, config, adapter))
        peaks["all"] = max(peaks.get("all", 0), rss.peak)

    step_runs: dict[tuple, list[float]] = {}  # the hardware's own cost of a wider batch, per cache, interleaved
    caches = CACHES.items() if lab.settings.resolved_device == "cpu" else [("transformers' cache", None)]
    for _ in range(args.repeats):
        for label, kind in caches:
            for rows in (1, 4):
                step_runs.setdefault((label, rows), []).append(decode_step_ms(lab, rows, cache_kind=kind))
    med = statistics.median
    single_wall = {c: med(r["wall"] for r in singles[c]) for c in COLUMNS}
    single_ttft = {c: med(r[c]["ttft_ms"] for r in singles[c]) for c in COLUMNS}
    all_wall = med(r["wall"] for r in together)
    all_ttft = {c: med(r[c]["ttft_ms"] for r in together) for c in COLUMNS}
    slowest = max(single_wall, key=single_wall.get)
    prompt_tokens = {c: together[0][c]["prompt_tokens"] for c in COLUMNS}

    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), device {lab.settings.resolved_device}")
    print(f"Question: {QUESTION!r}; {args.max_new_tokens} new tokens per column; median of {args.repeats}")
    print(f"Prompt tokens: " + ", ".join(f"{c} {n}" for c, n in prompt_tokens.items()) + "\n")
    print("| measure | value | ratio |")
    print("|---|---:|---:|")
    for c in COLUMNS:
        print(f"| wall s, {c} alone | {single_wall[c]:.2f} | {single_wall[c] / single_wall[slowest]:.2f}x |")
    print(f"| wall s, all four columns together | {all_wall:.2f} | **{all_wall / single_wall[slowest]:.2f}x** "
          f"of the slowest column alone ({slowest}) |")
    print(f"| wall s, the four one after another | {sum(single_wall.values()):.2f} | "
          f"{sum(single_wall.values()) / single_wall[slowest]:.2f}x |")
    for c in COLUMNS:
        print(f"| first token ms, {c}: alone / in four | {single_ttft[c]:.0f} / {all_ttft[c]:.0f} | "
              f"{all_ttft[c] / single_ttft[c]:.2f}x |")
    for label in dict.fromkeys(key[0] for key in step_runs):
        one, four = med(step_runs[label, 1]), med(step_runs[label, 4])
        print(f"| decode step ms, model forward with {label}, 1 row / 4 rows (~1,000 cached tokens) | {one:.0f} / "
              f"{four:.0f} | {four / one:.2f}x |")
    mib = 1 / 2**20
    print(f"| resident memory MiB, model + adapter loaded, idle | {idle_rss * mib:.0f} | 1.00x |")
    for c in COLUMNS:
        print(f"| peak resident MiB, {c} alone | {peaks[c] * mib:.0f} | {peaks[c] / idle_rss:.2f}x |")
    print(f"| peak resident MiB, all four | {peaks['all'] * mib:.0f} | {peaks['all'] / idle_rss:.2f}x |")
    if not args.no_switches:
        switch_table(lab, config, adapter, args.repeats)


if __name__ == "__main__":
    main()
