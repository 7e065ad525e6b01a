"""Training throughput and memory: the engine's fine-tune (core.training_run.train: TRL's SFTTrainer, completion-only loss;
on a CPU core/sft.py's cheaper batch layout, answer-only LM head and LoRA dropout) against what a competent user
would run on the same data and settings: transformers Trainer + peft with random or length-grouped batches, and TRL's
SFTTrainer as it comes and with its padding-free collator; ratios are against the fastest of them. In bf16 mixed
precision the engine also runs without its bf16 copy of the frozen weights (the switch: its figure before it).

    .venv/bin/python bench/bench_training.py [--examples 96] [--steps 24] [--batch-size 4] [--repeats 3]

Data: PubMedQA questions with their long answers (../shared/data), whose lengths vary as real Q&A does. Both runs
use the same base model, LoRA (rank 16 on all linear layers), learning rate, batch size, max length and number of
steps, and learn only the answer tokens. Each run is its own process, so its peak memory (max RSS) is its own.
Useful tokens/s counts non-padding tokens. With --repeats, the runs alternate and the medians are shown.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LAB_MODEL_CACHE", str(ROOT / ".cache" / "models"))
QUESTIONS = ROOT.parent / "shared" / "data" / "pubmedqa_test" / "questions.jsonl"
LORA = dict(rank=16, alpha=32, dropout=0.05, learning_rate=5e-4)
BASELINES = {  # what a competent user would run instead of the engine
    "baseline": "transformers Trainer + peft (random batches, padded to longest)",
    "grouped": "transformers Trainer + peft, length-grouped batches",
    "trl": "TRL SFTTrainer as it comes (prompt-completion, padded batches)",
    "trl-padding-free": "TRL SFTTrainer, padding_free=True",
}

ENGINE = "engine: TRL SFTTrainer + core/sft.py (random batches)"
ENGINE_BEFORE = "engine-frozen-fp32"  # bf16 mixed only: the engine without its bf16 copy of the frozen weights


def make_dataset(data_dir: Path, examples: int) -> None:
    from core.datasets import DatasetStore

    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines()[:examples]]
    chats = [{"messages": [{"role": "user", "content": r["question"]},
                           {"role": "assistant", "content": r["long_answer"]}]} for r in rows]
    DatasetStore(data_dir).save("pubmed", chats, "bench", QUESTIONS.name, validation=0, test=0)


def run_engine(data_dir: Path, steps: int, batch: int, max_length: int) -> dict:
    from core.config import BUNDLED_BASE_MODEL
    from core.training import TrainSettings
    from core.training_run import train

    settings = TrainSettings.from_preset("quick", max_steps=steps, batch_size=batch, max_length=max_length,
                                         early_stopping_patience=0, **LORA)
    job = {"data_dir": str(data_dir), "base_model": BUNDLED_BASE_MODEL, "device": "cpu", "dataset": "pubmed",
           "settings": settings.to_dict()}
    t0 = time.perf_counter()  # wall time includes loading the model; tokens/s is the training loop's own
    result = train(job, Path(tempfile.mkdtemp(prefix="bench-job-")), lambda status: None, lambda: False)
    return {"tokens_per_s": result["tokens_per_s"], "seconds": time.perf_counter() - t0, "steps": result["steps"]}


def run_baseline(data_dir: Path, steps: int, batch: int, max_length: int, grouped: bool = False) -> dict:
    """What a plain fine-tune script does: tokenize, mask the prompt, pad each random batch to its longest row; with
    `grouped`, what a competent user adds: batches of similar lengths (transformers' length-grouped sampling), so
    less of each batch is padding."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from core.config import load_settings
    from core.datasets import DatasetStore
    from core.models import resolve_base_model
    from core.config import cpu_computes_bf16

    settings = load_settings(data_dir=data_dir, device="cpu")
    source = resolve_base_model(settings.base_model, settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = []
    for example in DatasetStore(data_dir).examples("pubmed", "train"):
        prompt = tokenizer.apply_chat_template(example["messages"][:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(example["messages"], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        rows.append({"input_ids": ids, "labels": [-100] * len(p_ids) + ids[len(p_ids):]})
    seen = {"tokens": 0}

    def collate(batch_rows):
        longest = max(len(r["input_ids"]) for r in batch_rows)
        ids = [r["input_ids"] + [tokenizer.pad_token_id] * (longest - len(r["input_ids"])) for r in batch_rows]
        labels = [r["labels"][:longest] + [-100] * (longest - len(r["labels"][:longest])) for r in batch_rows]
        mask = [[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in batch_rows]
        seen["tokens"] += sum(map(sum, mask))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="bench-baseline-"), per_device_train_batch_size=batch,
                             learning_rate=LORA["learning_rate"], max_steps=steps, logging_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, remove_unused_columns=False,
                             lr_scheduler_type="cosine", seed=42, optim="adamw_torch", dataloader_num_workers=0,
                             train_sampling_strategy="group_by_length" if grouped else "random",
                             bf16=cpu_computes_bf16())  # the engine's precision: bf16 mixed where the CPU has it natively
    loop = {}

    class Clock(TrainerCallback):  # the training loop's own time, as the engine reports it
        def on_train_begin(self, *a, **k):
            loop["t0"] = time.perf_counter()

    t0 = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collate,
            callbacks=[Clock()]).train()
    end = time.perf_counter()
    return {"tokens_per_s": seen["tokens"] / (end - loop["t0"]), "seconds": end - t0, "steps": steps}


def run_trl(data_dir: Path, steps: int, batch: int, max_length: int, padding_free: bool) -> dict:
    """TRL's SFTTrainer as a user would set it up: prompt-completion data (loss on the completion only), LoRA by
    `peft_config`; with `padding_free`, its padding-free collator (each batch one flat row, positions restarting
    per example, which transformers turns into a block-diagonal attention mask)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from core.config import load_settings
    from core.datasets import DatasetStore
    from core.models import resolve_base_model
    from core.config import cpu_computes_bf16

    settings = load_settings(data_dir=data_dir, device="cpu")
    source = resolve_base_model(settings.base_model, settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    rows = [{"prompt": e["messages"][:-1], "completion": e["messages"][-1:]}
            for e in DatasetStore(data_dir).examples("pubmed", "train")]
    config = SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=batch,
                       learning_rate=LORA["learning_rate"], max_steps=steps, logging_steps=1, save_strategy="no",
                       report_to=[], use_cpu=True, disable_tqdm=True, lr_scheduler_type="cosine", seed=42,
                       optim="adamw_torch", dataloader_num_workers=0,
                       max_length=None if padding_free else max_length,  # TRL: not enforced padding-free (rows here are shorter)
                       padding_free=padding_free, completion_only_loss=True, bf16=cpu_computes_bf16())
    loop, seen = {}, {"tokens": 0}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            loop["t0"] = time.perf_counter()

    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"],
                                                lora_dropout=LORA["dropout"], target_modules="all-linear",
                                                task_type="CAUSAL_LM"), callbacks=[Clock()])
    collate = trainer.data_collator

    def counted(examples):
        out = collate(examples)
        mask = out.get("attention_mask")
        seen["tokens"] += int(mask.sum()) if mask is not None else out["input_ids"].numel()
        return out

    trainer.data_collator = counted
    t0 = time.perf_counter()
    trainer.train()
    end = time.perf_counter()
    return {"tokens_per_s": seen["tokens"] / (end - loop["t0"]), "seconds": end - t0, "steps": steps}


def child(kind: str, data_dir: Path, steps: int, batch: int, max_length: int) -> None:
    import core  # noqa: F401 - offline environment

    if kind.startswith("engine"):
        if kind == ENGINE_BEFORE:  # the switch: autocast casts the frozen fp32 weights at every step, as before
            import core.sft

            core.sft.keep_frozen_lora_weights_in = lambda model, dtype: 0
        result = run_engine(data_dir, steps, batch, max_length)
    elif kind.startswith("trl"):
        result = run_trl(data_dir, steps, batch, max_length, padding_free=kind == "trl-padding-free")
    else:
        result = run_baseline(data_dir, steps, batch, max_length, grouped=kind == "grouped")
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", choices=list(BASELINES) + ["engine", ENGINE_BEFORE])
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data_dir, args.steps, args.batch_size, args.max_length)
        return
    if not QUESTIONS.exists():
        raise SystemExit(f"{QUESTIONS} not found")
    import core  # noqa: F401
    import torch

    from core.config import cpu_computes_bf16

    data_dir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    make_dataset(data_dir, args.examples)
    engines = {"engine": ENGINE}
    if cpu_computes_bf16():
        engines[ENGINE_BEFORE] = "engine, frozen weights left in fp32 (autocast casts them every step)"
    runs: dict[str, list[dict]] = {kind: [] for kind in [*BASELINES, *engines]}
    for _ in range(args.repeats):
        for kind in runs:
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--data-dir", str(data_dir),
                                  "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                                  "--max-length", str(args.max_length)], capture_output=True, text=True, check=True)
            line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
            runs[kind].append(json.loads(line[len("RESULT "):]))
    results = {kind: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for kind, rs in runs.items()}
    print(f"# {platform.node()} · {os.cpu_count()} CPUs · torch {torch.__version__} · {time.strftime('%Y-%m-%d')} · "
          f"{args.examples} PubMedQA Q&A, {args.steps} steps of {args.batch_size}, max length {args.max_length}, "
          f"median of {args.repeats}, {'bf16 mixed precision (this CPU has native bf16)' if cpu_computes_bf16() else 'fp32'}")
    print("| run | useful tokens/s | vs the best baseline | wall s | peak RSS GB | vs the best baseline |")
    print("|---|---:|---:|---:|---:|---:|")
    base = max((results[kind] for kind in BASELINES), key=lambda r: r["tokens_per_s"])  # the best baseline
    for kind, label in [*BASELINES.items(), *engines.items()]:
        r = results[kind]
        print(f"| {label} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | "
              f"{r['seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / base['peak_rss_gb']:.2f}x |")
    print("tokens/s per run: " + "; ".join(f"{kind} " + ", ".join(f"{r['tokens_per_s']:.0f}" for r in rs)
                                           for kind, rs in runs.items()))


if __name__ == "__main__":
    main()
