"""Fine-tuning as a service: settings from a preset, the estimate before launch, starting a job in its own process
(core/jobs.py runs it), and exporting an adapter merged into its base model."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from core.adapters import AdapterStore
from core.config import Settings
from core.datasets import DatasetStore, render
from core.errors import InputError
from core.jobs import JobStore
from core.limits import Quota
from core.models import Models, resolve_base_model
from core.training import TrainSettings, estimate, memory_advice, use_4bit

METHOD_OF_KIND = {"sft": "sft", "preference": "dpo", "text": "continued"}
KIND_WORDS = {"sft": "Q&A examples", "preference": "preference pairs", "text": "passages of text"}
MIN_PREFERENCE_PAIRS = 4  # fewer teach nothing that generalises and make the margin a coin toss


def memory_parts_text(parts_gb: dict) -> str:
    """The estimate's memory terms as one line, e.g. "weights 0.54 GB + lora 0.03 GB + activations 1.2 GB"."""
    return " + ".join(f"{part} {gb} GB" for part, gb in parts_gb.items())


class Training:
    def __init__(self, settings: Settings, datasets: DatasetStore, adapters: AdapterStore, jobs: JobStore,
                 models: Models, quota: Quota):
        self.settings, self.datasets, self.adapters, self.jobs = settings, datasets, adapters, jobs
        self.models, self.quota = models, quota

    def preset(self, name: str = "quick", dataset: str | None = None, **overrides) -> TrainSettings:
        """A preset with overrides; with `dataset` and no method given, the method the dataset calls for (DPO for
        preference pairs), with that method's preset values."""
        if dataset and overrides.get("method") in (None, "auto"):
            overrides["method"] = self.method_for(dataset)
        return TrainSettings.from_preset(name, **overrides)

    def method_for(self, dataset: str) -> str:
        return METHOD_OF_KIND[self.datasets.info(dataset).kind]

    def estimate(self, dataset: str, settings: TrainSettings) -> dict:
        """Memory and time this fine-tune needs here, and whether it fits; computed before loading anything big."""
        from transformers import AutoConfig

        train = self.datasets.examples(dataset, "train")
        tokenizer = self.models.generator.tokenizer
        rendered = [render(e, tokenizer) for e in train]
        method = self._method(dataset, settings)
        dpo = method == "dpo"
        if dpo:  # both answers of a pair run through the model, each after the prompt, and all tokens reach the head
            lengths = [min(r["prompt_tokens"] + max(r["answer_tokens"], r["rejected_tokens"]), settings.max_length)
                       * 2 for r in rendered]
            answers = None
        elif method == "continued":  # every token of a passage, in windows of the training length
            lengths = [min(settings.max_length, r["answer_tokens"] - start) for r in rendered
                       for start in range(0, max(r["answer_tokens"], 1), settings.max_length)]
            answers = sum(lengths)
        else:
            lengths = [min(r["prompt_tokens"] + r["answer_tokens"], settings.max_length) for r in rendered]
            answers = sum(min(r["answer_tokens"], n) for r, n in zip(rendered, lengths))
        config = AutoConfig.from_pretrained(resolve_base_model(self.settings.base_model, self.settings))
        plan = estimate(config, sum(lengths), len(lengths) if method == "continued" else len(train), settings,
                        self.settings.resolved_device, max(lengths), answers)
        if dpo:  # + the reference model's forward pass (half a training step's work per token)
            plan["minutes"] = round(plan["minutes"] * 1.5, 1)
        if settings.tuning == "dora":  # the weight norms recomputed each step: 1.65x LoRA's time per token on a
            plan["minutes"] = round(plan["minutes"] * 1.65, 1)  # 2-core CPU (bench/bench_methods.py, 293 -> 178 tok/s)
        plan["method"], plan["tuning"] = method, settings.tuning
        # What to change when it does not fit: the same words before a run (here and in start) and on an OOM.
        plan["advice"] = None if plan["fits"] else memory_advice(settings, plan["quantized_4bit"],
                                                                 plan["memory_parts_gb"])
        return plan

    def _method(self, dataset: str, settings: TrainSettings) -> str:
        """The method this run uses (auto: the dataset's), refused where the dataset holds another kind of data."""
        wanted = self.method_for(dataset)
        if settings.method in ("auto", wanted):
            return wanted
        needs = {"sft": ("Q&A examples", "import a Q&A file"),
                 "dpo": ("preference pairs (prompt, chosen, rejected)",
                         "import a preference file or make one from your votes (dataset from-votes)"),
                 "continued": ("passages of text", "make them from a knowledge base (train --kb NAME)")}
        what, hint = needs[settings.method]
        raise InputError(f"method {settings.method} learns from {what}, and this dataset holds "
                         f"{KIND_WORDS[self.datasets.info(dataset).kind]}: train it with {wanted} (method auto "
                         f"picks it), or {hint}", subject=dataset)

    def start(self, dataset: str, settings: TrainSettings, adapter: str | None = None, processes: int = 1,
              from_adapter: str | None = None) -> dict:
        """Check, estimate, and launch a fine-tune in its own process; returns the job (poll jobs.get).
        `processes` > 1 trains data-parallel under `accelerate launch` (one process per GPU, or CPU workers).
        `from_adapter`: go on training a trained adapter (for DPO: the usual start, from an SFT adapter)."""
        if not 1 <= processes <= 64:
            raise InputError(f"processes must be between 1 and 64, got {processes}")
        train_count = len(self.datasets.info(dataset).split.get("train") or [])
        if not train_count:
            raise InputError("the dataset has no training examples", subject=dataset)
        settings = replace(settings, method=self._method(dataset, settings))
        if settings.method == "dpo" and train_count < MIN_PREFERENCE_PAIRS:
            raise InputError(f"DPO needs at least {MIN_PREFERENCE_PAIRS} preference pairs to train on and this "
                             f"dataset has {train_count}: vote on more comparisons in Compare, or import more pairs",
                             subject=dataset)
        if from_adapter and settings.tuning == "full":
            raise InputError("a full fine-tune trains the base model's own weights: it cannot start from an adapter")
        start_from = self._start_from(from_adapter)
        plan = self.estimate(dataset, settings)
        self.quota.check_train_minutes(plan["minutes"], dataset)
        self.quota.spend("train")
        if not plan["fits"]:
            raise InputError(
                f"this fine-tune needs about {plan['memory_gb']} GB but {plan['available_gb']} GB is free "
                f"({memory_parts_text(plan['memory_parts_gb'])}): "
                f"{plan['advice']}", subject=dataset)
        name = self.adapters.free_name(adapter or f"{dataset}-{settings.preset}")
        job_id = self.jobs.start({"dataset": dataset, "settings": settings.to_dict(), "adapter": name,
                                  "base_model": self.settings.base_model, "device": self.settings.device,
                                  "estimate": plan, "processes": processes, **start_from})
        return self.jobs.get(job_id)

    def _start_from(self, adapter: str | None) -> dict:
        """The job fields for going on from a trained adapter (read in place when the job starts), which must
        belong to the base model in use and its precision."""
        if not adapter:
            return {}
        info = self.adapters.info(adapter)
        if (info.get("settings") or {}).get("tuning") == "full":
            raise InputError("is a fully fine-tuned model, not an adapter: going on from one is not supported; "
                             "start from the base model", subject=adapter)
        if info.get("base_model") != self.settings.base_model:
            raise InputError(f"was trained on {info.get('base_model')}, not on the base model in use "
                             f"({self.settings.base_model})", subject=adapter)
        if info.get("quantized_4bit") != use_4bit(TrainSettings(**info["settings"]), self.settings.resolved_device):
            raise InputError("was trained on a base model in another precision (4-bit or not) than a run here "
                             "would use", subject=adapter)
        return {"from_adapter": adapter, "from_adapter_path": str(self.adapters.path(adapter))}

    def export_merged(self, name: str, folder: str | Path) -> Path:
        """The base model with the adapter merged in, saved as a full-precision model folder (loadable with plain
        transformers, no peft). Refused for adapters trained on a 4-bit base: they learned to correct the 4-bit
        weights, so merged into the full-precision ones they would answer differently from what was evaluated."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        info = self.adapters.info(name)
        if info.get("quantized_4bit"):
            raise InputError("trained on a 4-bit base model: it learned to correct the 4-bit weights, so merged "
                             "into the full-precision model it would answer differently from what you evaluated; "
                             "export the adapter zip instead and load it on the 4-bit base", subject=name)
        target = Path(folder)
        if target.exists() and any(target.iterdir()):
            raise InputError("the folder exists and is not empty", subject=str(target))
        if (info.get("settings") or {}).get("tuning") == "full":  # already a whole model: its files as they are
            shutil.copytree(self.adapters.path(name), target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("lab_adapter.json"))
            return target
        source = resolve_base_model(info["base_model"], self.settings)
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)  # a fresh copy: the served one stays
        merged = PeftModel.from_pretrained(base, str(self.adapters.path(name))).merge_and_unload()
        merged.save_pretrained(str(target))
        AutoTokenizer.from_pretrained(source).save_pretrained(str(target))
        return target
