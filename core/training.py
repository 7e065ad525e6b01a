"""Fine-tuning: LoRA on CPU, QLoRA (4-bit NF4) on CUDA (or on a CPU when asked), built on TRL's SFTTrainer
(completion-only loss).

This module runs inside the training job's own process (see core/jobs.py); nothing here touches the UI.
"""
from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from core.errors import InputError
from core.schema import setting

# Plain-language presets; every field can be overridden in the advanced panel or on the command line.
PRESETS: dict[str, dict] = {
    # Quick is calibrated: 12 short facts, 30 steps, 66 s on a 2-core CPU, all 12 learned (the first setting,
    # lr 1e-3 x 8 epochs at batch 8, learned 2 of 12). Balanced and Thorough are not calibrated yet.
    "quick": {
        "about": "A first try in minutes: learns short facts from a few dozen examples; may overfit.",
        "rank": 16, "alpha": 32, "learning_rate": 2e-3, "epochs": 10, "batch_size": 4, "max_length": 384,
    },
    "balanced": {
        "about": "The usual choice: more passes at a gentler pace, stops early when validation loss stops improving.",
        "rank": 16, "alpha": 32, "learning_rate": 5e-4, "epochs": 12, "batch_size": 8, "max_length": 512,
    },
    "thorough": {
        "about": "For larger datasets or style changes: a bigger adapter, slower and longer; best on a GPU.",
        "rank": 64, "alpha": 128, "learning_rate": 2e-4, "epochs": 20, "batch_size": 8, "max_length": 1024,
    },
}


@dataclass
class TrainSettings:
    """Every training knob, declared once: the CLI's flags and the Fine-tune tab's Advanced panel are made from it."""

    preset: str = "quick"
    # the defaults are the Quick preset's
    rank: int = setting(16, "LoRA rank", "LoRA rank: the adapter's size")
    alpha: int = setting(32, "LoRA alpha", "LoRA alpha: usually 2x the rank")
    dropout: float = setting(0.05, "Dropout", "LoRA dropout")
    learning_rate: float = setting(2e-3, "Learning rate", "learning rate")
    weight_decay: float = setting(0.0, "Weight decay", "AdamW weight decay: pulls the adapter's weights towards "
                                  "zero, against over-fitting (0: none)")
    epochs: float = setting(10, "Epochs", "passes over the training data", elem_id="ft-epochs")
    batch_size: int = setting(4, "Batch size", "examples per step")
    grad_accum: int = setting(1, "Gradient accumulation", "gradient accumulation steps")
    max_length: int = setting(384, "Max length (tokens)", "max tokens per example")
    seed: int = setting(42, "Seed", "random seed")
    eval_every: int = setting(0, "Validation every (steps)", "steps between validation-loss checks (0: about 10 "
                              "per run)", ui=False)
    early_stopping_patience: int = setting(3, "Early stopping patience", "validation checks without improvement "
                                           "before stopping", cli=False, ui=False)
    max_steps: int = setting(0, "Max steps", "stop after this many steps (0: run the epochs)", ui=False)
    target_modules: str = setting("all-linear", "Target modules", '"all-linear" or e.g. "q_proj,v_proj"')
    quantize: str = setting("auto", "4-bit (QLoRA)", "auto: 4-bit NF4 on a GPU, full precision on CPU (4-bit is "
                            "about 20x slower there)", choices=("auto", "4bit", "none"))

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides) -> "TrainSettings":
        if preset not in PRESETS:
            raise InputError(f"unknown preset; choose from {', '.join(PRESETS)}", subject=repr(preset))
        values = {k: v for k, v in PRESETS[preset].items() if k != "about"}
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise InputError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(preset=preset, **values).checked()

    def checked(self) -> "TrainSettings":
        rules = [
            (1 <= self.rank <= 512, "rank must be between 1 and 512"),
            (self.alpha > 0, "alpha must be positive"),
            (0 <= self.dropout < 1, "dropout must be at least 0 and below 1"),
            (0 < self.learning_rate < 1, "learning rate must be between 0 and 1 (e.g. 0.0002)"),
            (0 <= self.weight_decay < 1, "weight decay must be at least 0 and below 1 (e.g. 0.01)"),
            (0 < self.epochs <= 100, "epochs must be between 0 and 100"),
            (1 <= self.batch_size <= 512, "batch size must be between 1 and 512"),
            (1 <= self.grad_accum <= 512, "gradient accumulation must be between 1 and 512"),
            (32 <= self.max_length <= 32768, "max length must be between 32 and 32768 tokens"),
            (self.quantize in ("auto", "4bit", "none"), "quantize must be auto, 4bit or none"),
            (self.early_stopping_patience >= 0, "early stopping patience must not be negative"),
            (self.max_steps >= 0 and self.eval_every >= 0, "steps must not be negative"),
        ]
        for ok, message in rules:
            if not ok:
                raise InputError(message)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def use_4bit(settings: TrainSettings, device: str) -> bool:
    if settings.quantize == "4bit":
        return True
    return settings.quantize == "auto" and device.startswith("cuda")


def to_prompt_completion(example: dict) -> dict:
    """TRL's conversational prompt-completion form: the loss covers the completion (the answer) only."""
    messages = example["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


# ---- the estimate shown before launch ---------------------------------------------------------------------

def estimate(model_config, train_tokens: int, examples: int, settings: TrainSettings, device: str,
             longest: int) -> dict:
    """Memory and time for this model, data and device, before anything is loaded. Rough by design (within ~2x):
    its job is to refuse what cannot fit (and say which setting to lower) and to say minutes vs hours."""
    import psutil
    import torch

    cuda = device.startswith("cuda")
    hidden, layers, vocab = model_config.hidden_size, model_config.num_hidden_layers, model_config.vocab_size
    params = _parameter_count(model_config)
    quantized = use_4bit(settings, device)
    embeddings = vocab * hidden * (1 if getattr(model_config, "tie_word_embeddings", False) else 2)
    # 4-bit: the linear layers in NF4 with double-quantized scales (~0.52 bytes a weight); the embeddings and an
    # untied LM head are not quantized, and prepare_model_for_kbit_training upcasts them to fp32.
    weights = (params - embeddings) * 0.52 + embeddings * 4 if quantized else params * (2 if cuda else 4)
    heads = model_config.num_attention_heads
    kv = (getattr(model_config, "num_key_value_heads", heads) or heads) * (getattr(model_config, "head_dim", None)
                                                                         or hidden // heads)
    # LoRA on all linear layers of a block: rank * (in + out) for q, k, v, o and the three MLP matrices
    mlp = model_config.intermediate_size
    lora_params = layers * settings.rank * (hidden * 4 + (hidden + kv) * 2 + (hidden + mlp) * 3)
    # LoRA weights and gradients in fp32, and AdamW's two moments: fp32, or 8-bit (optimizer_for)
    lora = lora_params * (8 + (2 if "8bit" in optimizer_for(device, quantized) else 8))
    seq = min(longest, settings.max_length)
    if cuda:  # gradient checkpointing: one bf16 hidden state per layer kept, one layer recomputed at a time;
        # the logits over the vocabulary in bf16, their fp32 copy for the loss and its gradient
        per_token = (layers * hidden + 16 * hidden + 4 * mlp) * 2 + vocab * 10
    else:  # ~16 hidden-sized fp32 tensors per layer kept for the backward pass, and the logits
        per_token = (layers * hidden * 16 + vocab * 2) * 4
    parts = {"weights": weights, "lora": lora, "activations": settings.batch_size * seq * per_token}
    need = sum(parts.values()) + (1.0e9 if cuda else 0.5e9)  # + framework overhead (on CUDA, the job's context)
    available = torch.cuda.mem_get_info()[0] if cuda else psutil.virtual_memory().available
    epochs_tokens = train_tokens * settings.epochs
    steps = math.ceil(examples / (settings.batch_size * settings.grad_accum)) * math.ceil(settings.epochs)
    if settings.max_steps:
        steps = min(steps, settings.max_steps)
        epochs_tokens = min(epochs_tokens, train_tokens / max(examples, 1) * settings.batch_size * settings.grad_accum
                            * settings.max_steps)
    flops = (8 if cuda else 6) * params * epochs_tokens  # forward + backward (+ the checkpointed recompute)
    rate = _measured_flops(device) * (0.35 if cuda else 0.25)
    return {
        "parameters": params, "lora_parameters": lora_params, "quantized_4bit": quantized,
        "memory_gb": round(need / 1e9, 2), "available_gb": round(available / 1e9, 2),
        "memory_parts_gb": {k: round(v / 1e9, 2) for k, v in parts.items()},
        "fits": need < available * 0.9, "steps": steps, "train_tokens": int(epochs_tokens),
        "minutes": round(flops / rate / 60, 1),
    }


def memory_advice(settings: TrainSettings, quantized: bool, parts: dict | None = None) -> str:
    """The setting to change when a fine-tune does not fit, for the biggest memory term first (activations unless
    the estimate's `parts` say otherwise): the refusal before a run and an out-of-memory error in one say the same."""
    smaller = [f"the batch size (now {settings.batch_size}; more gradient accumulation keeps the effective batch)"
               ] if settings.batch_size > 1 else []
    smaller = "lower " + " or ".join(smaller + [f"the max length (now {settings.max_length} tokens)"])
    four_bit = None if quantized else "use 4-bit (QLoRA, quantize=4bit)"
    biggest = max(parts, key=parts.get) if parts else "activations"
    if biggest == "weights":
        first = four_bit or "choose a smaller base model (its 4-bit weights alone are most of it)"
        return f"{first}, or {smaller}"
    if biggest == "lora":
        return f"lower the LoRA rank (now {settings.rank}), or {smaller}"
    return smaller + (f", or {four_bit}" if four_bit else "")


def optimizer_for(device: str, quantized: bool) -> str:
    """QLoRA's paged 8-bit AdamW on CUDA. Paging needs CUDA's unified memory, so a 4-bit run on a CPU gets the same
    8-bit AdamW (bitsandbytes' CPU kernels) without it; a full-precision CPU run keeps torch's AdamW."""
    if device.startswith("cuda"):
        return "paged_adamw_8bit"
    return "adamw_bnb_8bit" if quantized else "adamw_torch"


def _parameter_count(config) -> int:
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (heads * 2 + kv_heads * 2)
    mlp = 3 * hidden * config.intermediate_size
    embeddings = config.vocab_size * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return int(layers * (attention + mlp) + embeddings)


_flops_cache: dict[str, float] = {}


def _measured_flops(device: str) -> float:
    """This device's matrix-multiply speed, measured in a fraction of a second (cached)."""
    import torch

    if device not in _flops_cache:
        n = 1024
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        (a @ b).sum().item()
        repeats = 50 if device.startswith("cuda") else 5
        t0 = time.perf_counter()
        for _ in range(repeats):
            c = a @ b
        c.sum().item()
        _flops_cache[device] = 2 * n ** 3 * repeats / (time.perf_counter() - t0)
    return _flops_cache[device]


# ---- the run itself (inside the job process) ------------------------------------------------------------------

def train(job: dict, job_dir: Path, report, should_stop) -> dict:
    """Fine-tune as `job` says; returns the result summary. `report(status_dict)` is called as training goes;
    `should_stop()` is polled every step (cancel). The adapter is saved into job_dir/adapter either way."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, EarlyStoppingCallback,
                              TrainerCallback)
    from trl import SFTConfig, SFTTrainer

    from core.config import load_settings
    from core.sft import CpuSFTTrainer
    from core.datasets import DatasetStore
    from core.models import _quiet_transformers, resolve_base_model

    _quiet_transformers()
    lab_settings = load_settings(data_dir=Path(job["data_dir"]), base_model=job["base_model"], device=job["device"])
    settings = TrainSettings(**job["settings"])
    device = lab_settings.resolved_device
    datasets = DatasetStore(lab_settings.data_dir)
    train_rows = [to_prompt_completion(e) for e in datasets.examples(job["dataset"], "train")]
    eval_rows = [to_prompt_completion(e) for e in datasets.examples(job["dataset"], "validation")]
    source = resolve_base_model(job["base_model"], lab_settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cuda, quantized = device.startswith("cuda"), use_4bit(settings, device)
    if cuda and "LOCAL_RANK" in os.environ:  # each data-parallel worker (accelerate launch) on its own GPU
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    compute_dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else (torch.float16 if cuda else torch.float32)
    flash = cuda and importlib.util.find_spec("flash_attn") is not None
    load_kwargs: dict = {"dtype": compute_dtype, **({"attn_implementation": "flash_attention_2"} if flash else {})}
    if quantized:
        # QLoRA as published: NF4, double quantization, bf16 compute. bitsandbytes' own defaults differ (fp4, no
        # double quantization, fp32 compute), so every field is set. A 4-bit model cannot be moved once loaded: it
        # is quantized straight onto this worker's device.
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=compute_dtype)
        load_kwargs["device_map"] = {"": (torch.device(device).index or 0) if cuda else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(source, **load_kwargs)
    if quantized:  # base frozen, norms and embeddings in fp32, input gradients on for gradient checkpointing
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cuda)
        # On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer for inference the first time it runs in eval
        # mode without gradients (the CPU trainer's start-up check, validation) and from then on passes no gradient
        # through it (gemv_4bit has no backward): training keeps the layout it can backpropagate through.
        for layer in (m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")):
            layer.support_avx512bf16_for_cpu = False
    else:
        model.to(device)
    targets = settings.target_modules
    lora = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()])
    world = int(os.environ.get("WORLD_SIZE", "1"))  # data-parallel workers (accelerate launch) share each epoch
    steps_per_epoch = max(1, math.ceil(len(train_rows) / (settings.batch_size * settings.grad_accum * world)))
    total_steps = settings.max_steps or math.ceil(steps_per_epoch * settings.epochs)
    # About 10 validation checks per run, at least 5 steps apart: each one also saves a checkpoint (for resume and
    # for keeping the best), which cost ~10% of the time when it happened every step.
    eval_every = settings.eval_every or max(5, total_steps // 10)
    has_eval = bool(eval_rows)
    lean = not cuda  # core/sft.py: padding-free batches, answer-only LM head, cheaper LoRA dropout (measured on CPU)
    config = SFTConfig(
        output_dir=str(job_dir / "checkpoints"),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        lr_scheduler_type="cosine",
        warmup_steps=min(10, max(1, total_steps // 20)),
        max_length=settings.max_length,
        completion_only_loss=True,
        # On CUDA, packing without padding needs varlen attention kernels (FlashAttention); without them batches are
        # grouped by length so padding stays small. On CPU every batch is padding-free (core/sft.py).
        packing=flash,
        train_sampling_strategy="random" if flash or lean else "group_by_length",
        optim=optimizer_for(device, quantized),
        gradient_checkpointing=cuda,
        bf16=compute_dtype == torch.bfloat16,
        fp16=compute_dtype == torch.float16,
        use_cpu=not cuda,
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=2,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False,
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        disable_tqdm=True,
        # tokens/s counts real tokens, not padding (the lean trainer counts them itself)
        include_num_input_tokens_seen="no" if lean else "non_padding",
    )

    started = time.time()
    history: dict = {"train": [], "eval": []}

    loop_started = [time.time()]

    class Status(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            loop_started[0] = time.time()  # tokens/s is the training loop's own rate (not loading, not tokenizing)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                history["train"].append([state.global_step, round(float(logs["loss"]), 4)])
            if "eval_loss" in logs:
                history["eval"].append([state.global_step, round(float(logs["eval_loss"]), 4)])
            elapsed = time.time() - started
            done = state.global_step / max(state.max_steps, 1)
            tokens = float(getattr(state, "num_input_tokens_seen", 0) or logs.get("num_tokens", 0) or 0)
            loop = time.time() - loop_started[0]
            report({"state": "running", "step": state.global_step, "total_steps": state.max_steps,
                    "epoch": round(state.epoch or 0, 2), "elapsed_s": round(elapsed, 1),
                    "eta_s": round(loop / done - loop, 1) if done > 0 else None,
                    "tokens_per_s": round(tokens / loop, 1) if tokens and loop > 0 else None,
                    "history": history})

        def on_step_end(self, args, state, control, **kwargs):
            if should_stop():
                control.should_training_stop = True
                control.should_save = True  # the last step becomes a usable checkpoint

    callbacks = [Status()]
    if has_eval and settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    trainer = (CpuSFTTrainer if lean else SFTTrainer)(
        model=model, args=config, processing_class=tokenizer, peft_config=lora, callbacks=callbacks,
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
    )
    if quantized and compute_dtype == torch.float32:  # TRL casts QLoRA's adapter to bf16, for bf16 compute only
        for param in (p for p in trainer.model.parameters() if p.requires_grad):
            param.data = param.data.float()
    resume = _last_checkpoint(job_dir / "checkpoints")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    training_s = time.time() - loop_started[0]
    adapter_dir = job_dir / "adapter"
    final_eval = None
    if has_eval:  # every data-parallel worker takes part in evaluation
        final_eval = round(float(trainer.evaluate()["eval_loss"]), 4)
    if trainer.is_world_process_zero():  # one writer for the adapter files
        trainer.model.save_pretrained(str(adapter_dir))
    tokens = float(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    return {
        "steps": trainer.state.global_step, "total_steps": total_steps,
        "train_loss": history["train"][-1][1] if history["train"] else round(float(result.training_loss), 4),
        "eval_loss": final_eval, "history": history, "seconds": round(time.time() - started, 1),
        "tokens_per_s": round(tokens / training_s, 1) if tokens else None,
        "device": device, "quantized_4bit": quantized, "packing": flash, "processes": trainer.args.world_size,
        "optimizer": trainer.args.optim.value, "trainer": type(trainer).__name__,
        "padding_free": getattr(trainer, "flat_collator", None) is trainer.data_collator or flash,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None,
        "stopped_early": trainer.state.global_step < total_steps,
    }


def _last_checkpoint(folder: Path) -> Path | None:
    if not folder.exists():
        return None
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def describe_presets() -> list[dict]:
    return [{"preset": name, **values} for name, values in PRESETS.items()]

