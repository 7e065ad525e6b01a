"""A fine-tune itself, inside its job's process (core/jobs.py): TRL's SFTTrainer (core/sft.py's on CPU) on Q&A
examples, or TRL's DPOTrainer on preference pairs, with LoRA or DoRA, on a 4-bit base for QLoRA, reporting as it
goes and resuming from its last checkpoint. Its settings and estimate are core/training.py's."""
from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path

from core.config import cpu_computes_bf16
from core.training import TrainSettings, optimizer_for, passage_windows, to_prompt_completion, use_4bit


def train(job: dict, job_dir: Path, report, should_stop) -> dict:
    """Fine-tune as `job` says; returns the result summary. `report(status_dict)` is called as training goes;
    `should_stop()` is polled every step (cancel). The adapter is saved into job_dir/adapter either way."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, EarlyStoppingCallback,
                              TrainerCallback)
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from core.config import load_settings
    from core.sft import CpuSFTTrainer
    from core.datasets import DatasetStore
    from core.dpo import preference_margins
    from core.models import _quiet_transformers, resolve_base_model

    _quiet_transformers()
    lab_settings = load_settings(data_dir=Path(job["data_dir"]), base_model=job["base_model"], device=job["device"])
    settings = TrainSettings(**job["settings"])
    device = lab_settings.resolved_device
    datasets = DatasetStore(lab_settings.data_dir)
    dpo, continued = settings.method == "dpo", settings.method == "continued"
    source = resolve_base_model(job["base_model"], lab_settings)
    tokenizer = AutoTokenizer.from_pretrained(source)

    def rows(part: str) -> list[dict]:
        examples = datasets.examples(job["dataset"], part)
        if dpo:
            return examples
        if continued:  # every token of every passage, in pieces that fit the training length
            return [{"text": piece} for e in examples
                    for piece in passage_windows(e["text"], tokenizer, settings.max_length)]
        return [to_prompt_completion(e) for e in examples]

    train_rows, eval_rows = rows("train"), rows("validation")
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
        use_dora=settings.tuning == "dora",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()])
    if settings.tuning == "full":  # every weight trains; no adapter
        lora = None
    elif job.get("from_adapter"):  # go on from a trained adapter (its own LoRA or DoRA settings); for DPO, TRL keeps
        # a frozen copy of it as the reference the preferences are measured against
        model = PeftModel.from_pretrained(model, job["from_adapter_path"], is_trainable=True)
        lora = None
    world = int(os.environ.get("WORLD_SIZE", "1"))  # data-parallel workers (accelerate launch) share each epoch
    steps_per_epoch = max(1, math.ceil(len(train_rows) / (settings.batch_size * settings.grad_accum * world)))
    total_steps = settings.max_steps or math.ceil(steps_per_epoch * settings.epochs)
    # About 10 validation checks per run, at least 5 steps apart: each one also saves a checkpoint (for resume and
    # for keeping the best), which cost ~10% of the time when it happened every step.
    eval_every = settings.eval_every or max(5, total_steps // 10)
    has_eval = bool(eval_rows)
    lean = not cuda and not dpo  # core/sft.py: padding-free batches, answer-only LM head, cheaper LoRA dropout
    common = dict(
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
        optim=optimizer_for(device, quantized),
        gradient_checkpointing=cuda,
        bf16=compute_dtype == torch.bfloat16 or (not cuda and not quantized and cpu_computes_bf16()),
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
    )
    if dpo:
        # DPO's sigmoid loss, plus (RPO) the chosen answers' own loss unless its weight is 0
        losses = ["sigmoid", "sft"] if settings.dpo_sft_weight else ["sigmoid"]
        config = DPOConfig(**common, beta=settings.beta, loss_type=losses,
                           loss_weights=[1.0, settings.dpo_sft_weight] if settings.dpo_sft_weight else None,
                           include_num_input_tokens_seen="non_padding")
    else:
        config = SFTConfig(
            **common,
            completion_only_loss=not continued,  # continued pre-training learns every token of a passage
            # On CUDA, packing without padding needs varlen attention kernels (FlashAttention); without them
            # batches are grouped by length so padding stays small. On CPU every batch is padding-free
            # (core/sft.py).
            packing=flash,
            train_sampling_strategy="random" if flash or lean else "group_by_length",
            # tokens/s counts real tokens, not padding (the lean trainer counts them itself)
            include_num_input_tokens_seen="no" if lean else "non_padding",
        )

    started = time.time()
    history: dict = {"train": [], "eval": []}

    loop_started = [time.time()]

    tracking = TensorBoard(job_dir / "tensorboard")

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
            tracking.log(state.global_step, logs, tokens / loop if tokens and loop > 0 else None)
            report({"state": "running", "step": state.global_step, "total_steps": state.max_steps,
                    "epoch": round(state.epoch or 0, 2), "elapsed_s": round(elapsed, 1),
                    "eta_s": round(loop / done - loop, 1) if done > 0 else None,
                    "tokens_per_s": round(tokens / loop, 1) if tokens and loop > 0 else None,
                    "history": history})

        def on_train_end(self, args, state, control, **kwargs):
            tracking.close()

        def on_step_end(self, args, state, control, **kwargs):
            if should_stop():
                control.should_training_stop = True
                control.should_save = True  # the last step becomes a usable checkpoint

    callbacks = [Status()]
    if has_eval and settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    trainer_class = DPOTrainer if dpo else CpuSFTTrainer if lean else SFTTrainer
    trainer = trainer_class(
        model=model, args=config, processing_class=tokenizer, peft_config=lora, callbacks=callbacks,
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows) if has_eval else None,
    )
    if quantized and compute_dtype == torch.float32:  # TRL casts QLoRA's adapter to bf16, for bf16 compute only
        for param in (p for p in trainer.model.parameters() if p.requires_grad):
            param.data = param.data.float()
    resume = _last_checkpoint(job_dir / "checkpoints")
    # DPO's proof: the chosen answers' log-probability margin over the rejected, on pairs it trains on, before and
    # after (the held-out ones show whether it generalises)
    margins = {"train_before": preference_margins(trainer.model, tokenizer, train_rows),
               "validation_before": preference_margins(trainer.model, tokenizer, eval_rows)} if dpo else None
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    training_s = time.time() - loop_started[0]
    adapter_dir = job_dir / "adapter"
    final_eval = None
    if has_eval:  # every data-parallel worker takes part in evaluation
        final_eval = round(float(trainer.evaluate()["eval_loss"]), 4)
    if dpo:  # in the precision the app answers in: without the bf16 autocast that training wrapped forward in
        plain = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        margins["train_after"] = preference_margins(plain, tokenizer, train_rows)
        margins["validation_after"] = preference_margins(plain, tokenizer, eval_rows)
    if trainer.is_world_process_zero():  # one writer for the adapter files; not DPO's frozen reference copy
        if settings.tuning == "full":  # a whole model folder, loadable with plain transformers
            plain = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
            plain.save_pretrained(str(adapter_dir))
            tokenizer.save_pretrained(str(adapter_dir))
        else:
            trainer.model.save_pretrained(str(adapter_dir), selected_adapters=["default"])
    tokens = float(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    return {
        "steps": trainer.state.global_step, "total_steps": total_steps,
        "train_loss": history["train"][-1][1] if history["train"] else round(float(result.training_loss), 4),
        "eval_loss": final_eval, "history": history, "seconds": round(time.time() - started, 1),
        "training_seconds": round(training_s, 1),  # the training loop alone
        "tokens_per_s": round(tokens / training_s, 1) if tokens else None,
        "method": settings.method, "tuning": settings.tuning, "from_adapter": job.get("from_adapter"),
        "margins": margins, "tensorboard": str(job_dir / "tensorboard"),
        "device": device, "quantized_4bit": quantized, "packing": flash, "processes": trainer.args.world_size,
        "optimizer": trainer.args.optim.value, "trainer": type(trainer).__name__,
        "precision": "bf16 mixed" if config.bf16 else "fp16 mixed" if config.fp16 else "fp32",
        "padding_free": getattr(trainer, "flat_collator", None) is trainer.data_collator or flash,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if cuda else None,
        "peak_memory_gb": _peak_rss_gb(),  # this process's, loading included
        "stopped_early": trainer.state.global_step < total_steps,
        # A resumed job (a cancel, a crash) continued from this checkpoint's step instead of starting again.
        "resumed_from_step": int(resume.name.split("-")[-1]) if resume else None,
    }


class TensorBoard:
    """The run's curves as TensorBoard event files (`tensorboard --logdir DATA_DIR/jobs` shows every job): train
    and validation loss, learning rate, tokens/s and, for DPO, the reward margin. Written by the main process only;
    a resumed job adds to the same folder."""

    SERIES = {"loss": "train/loss", "eval_loss": "validation/loss", "learning_rate": "train/learning_rate",
              "grad_norm": "train/grad_norm", "rewards/margins": "train/dpo_reward_margin",
              "eval_rewards/margins": "validation/dpo_reward_margin"}

    def __init__(self, folder: Path):
        self.writer = None
        if int(os.environ.get("RANK", "0")) == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def log(self, step: int, logs: dict, tokens_per_s: float | None) -> None:
        if self.writer is None:
            return
        for key, tag in self.SERIES.items():
            if isinstance(logs.get(key), (int, float)):
                self.writer.add_scalar(tag, float(logs[key]), step)
        if tokens_per_s and "loss" in logs:
            self.writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _peak_rss_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2)  # Linux counts in KiB


def _last_checkpoint(folder: Path) -> Path | None:
    if not folder.exists():
        return None
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None
