"""Fine-tuning's settings and plan: the presets, TrainSettings (every knob, declared once), which optimizer and
whether 4-bit, and the memory and time estimate made before anything is loaded. The run itself (LoRA on CPU, QLoRA
on CUDA, TRL's SFTTrainer) is core/training_run.py, inside the job's own process (core/jobs.py)."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

from core.config import cpu_computes_bf16
from core.errors import InputError
from core.schema import setting

# Plain-language presets; every field can be overridden in the advanced panel or on the command line. "dpo" holds
# what a preference fine-tune changes: the SFT pace wrecks a model under DPO (Quick's 2e-3 x 10 epochs turned the
# 12 Zorblat pairs' answers into "answ answ answ"); 5e-4 x 3 epochs with the chosen answers learned too moved
# them from 0.35 to 0.65 word F1 against the chosen ones. Balanced and Thorough's are not calibrated. Continued
# pre-training keeps SFT's pace: on the demo's 3 passages, 5e-4 x 3 epochs barely moved the loss (3.50 -> 3.36) and
# 2e-3 x 10 read them (3.50 -> 0.62), answering 2 of the 16 demo questions without RAG (the base model: 0).
PRESETS: dict[str, dict] = {
    # Quick is calibrated: 12 short facts, 30 steps, 66 s on a 2-core CPU, all 12 learned (the first setting,
    # lr 1e-3 x 8 epochs at batch 8, learned 2 of 12). Balanced and Thorough are not calibrated yet.
    "quick": {
        "about": "A first try in minutes: learns short facts from a few dozen examples; may overfit.",
        "rank": 16, "alpha": 32, "learning_rate": 2e-3, "epochs": 10, "batch_size": 4, "max_length": 384,
        "dpo": {"learning_rate": 5e-4, "epochs": 3},
        "full": {"learning_rate": 5e-5},
    },
    "balanced": {
        "about": "The usual choice: more passes at a gentler pace, stops early when validation loss stops improving.",
        "rank": 16, "alpha": 32, "learning_rate": 5e-4, "epochs": 12, "batch_size": 8, "max_length": 512,
        "dpo": {"learning_rate": 2e-4, "epochs": 4},
        "full": {"learning_rate": 2e-5},
    },
    "thorough": {
        "about": "For larger datasets or style changes: a bigger adapter, slower and longer; best on a GPU.",
        "rank": 64, "alpha": 128, "learning_rate": 2e-4, "epochs": 20, "batch_size": 8, "max_length": 1024,
        "dpo": {"learning_rate": 1e-4, "epochs": 5},
        "full": {"learning_rate": 1e-5},
    },
}


METHODS = ("auto", "sft", "dpo", "continued")
OTHER_PACES = ("dpo",)  # the methods whose preset pace differs from SFT's
TUNINGS = ("lora", "dora", "full")


@dataclass
class TrainSettings:
    """Every training knob, declared once: the CLI's flags and the Fine-tune tab's Advanced panel are made from it."""

    preset: str = "quick"
    method: str = setting("auto", "Method", "sft: learn the answers of Q&A examples; dpo: learn to prefer the "
                          "chosen answers of preference pairs over the rejected ones; continued: read passages of "
                          "text (continued pre-training); auto: from the dataset", choices=METHODS)
    tuning: str = setting("lora", "Adapter type", "lora; dora (weight-decomposed LoRA, a magnitude per output "
                          "beside LoRA's direction: closer to full fine-tuning, slower per step); or full (every "
                          "weight: a whole model of its own, for small models; gentler learning rate)",
                          choices=TUNINGS)
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
    beta: float = setting(0.1, "DPO beta", "DPO: how far the preferences may pull the model from where it "
                          "started (lower: further)")
    dpo_sft_weight: float = setting(1.0, "DPO: learn the chosen answers too", "DPO: weight of also learning the "
                                    "chosen answers word for word (RPO), which keeps a small model's answers "
                                    "fluent; 0: DPO alone")
    quantize: str = setting("auto", "4-bit (QLoRA)", "auto: 4-bit NF4 on a GPU, full precision on CPU (4-bit is "
                            "about 20x slower there)", choices=("auto", "4bit", "none"))

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides) -> "TrainSettings":
        if preset not in PRESETS:
            raise InputError(f"unknown preset; choose from {', '.join(PRESETS)}", subject=repr(preset))
        values = {k: v for k, v in PRESETS[preset].items() if k not in ("about", "full", *OTHER_PACES)}
        if overrides.get("method") in OTHER_PACES:
            values.update(PRESETS[preset][overrides["method"]])
        if overrides.get("tuning") == "full":  # every weight moves: a far gentler learning rate than an adapter's
            values.update(PRESETS[preset]["full"])
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
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}"),
            (not (self.tuning == "full" and self.quantize == "4bit"), "a full fine-tune trains every weight, and "
             "4-bit weights cannot be trained: use quantize none (or auto), or a LoRA adapter for QLoRA"),
            (self.tuning in TUNINGS, f"adapter type must be one of {', '.join(TUNINGS)}"),
            (0 < self.beta <= 10, "DPO beta must be above 0 and at most 10 (e.g. 0.1)"),
            (0 <= self.dpo_sft_weight <= 10, "the DPO weight of the chosen answers must be between 0 and 10"),
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
    if settings.tuning == "full":  # every weight is trained: none can be 4-bit
        return False
    if settings.quantize == "4bit":
        return True
    return settings.quantize == "auto" and device.startswith("cuda")


def to_prompt_completion(example: dict) -> dict:
    """TRL's conversational prompt-completion form: the loss covers the completion (the answer) only."""
    messages = example["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def passage_windows(text: str, tokenizer, max_length: int) -> list[str]:
    """A passage cut, at token boundaries, into pieces of at most `max_length` tokens: continued pre-training
    reads all of a long passage instead of its first `max_length` tokens."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= max_length:
        return [text]
    starts = [offsets[i][0] for i in range(0, len(offsets), max_length)]
    return [text[start:end] for start, end in zip(starts, starts[1:] + [len(text)]) if text[start:end].strip()]


# ---- the estimate shown before launch ---------------------------------------------------------------------

def estimate(model_config, train_tokens: int, examples: int, settings: TrainSettings, device: str,
             longest: int, answer_tokens: int | None = None) -> dict:
    """Memory and time for this model, data and device, before anything is loaded. Rough by design (within ~2x):
    its job is to refuse what cannot fit (and say which setting to lower) and to say minutes vs hours."""
    import psutil
    import torch

    cuda = device.startswith("cuda")
    hidden, layers, vocab = model_config.hidden_size, model_config.num_hidden_layers, model_config.vocab_size
    params = parameters_of(model_config)
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
    full = settings.tuning == "full"
    if full:  # every weight trains: its gradient and AdamW's two moments, all fp32, beside the weights
        lora_params, lora = params, params * 12
    seq = min(longest, settings.max_length)
    if cuda:  # gradient checkpointing: one bf16 hidden state per layer kept, one layer recomputed at a time;
        # the logits over the vocabulary in bf16, their fp32 copy for the loss and its gradient
        per_token = (layers * hidden + 16 * hidden + 4 * mlp) * 2 + vocab * 10
    else:  # ~16 hidden-sized fp32 tensors per layer kept for the backward pass, and the logits
        per_token = (layers * hidden * 16 + vocab * 2) * 4
    parts = {"weights": weights, "optimizer" if full else "lora": lora,
             "activations": settings.batch_size * seq * per_token}
    need = sum(parts.values()) + (1.0e9 if cuda else 0.5e9)  # + framework overhead (on CUDA, the job's context)
    available = torch.cuda.mem_get_info()[0] if cuda else psutil.virtual_memory().available
    epochs_tokens = train_tokens * settings.epochs
    steps = math.ceil(examples / (settings.batch_size * settings.grad_accum)) * math.ceil(settings.epochs)
    if settings.max_steps:
        steps = min(steps, settings.max_steps)
        epochs_tokens = min(epochs_tokens, train_tokens / max(examples, 1) * settings.batch_size * settings.grad_accum
                            * settings.max_steps)
    step_floor_s = 0.0
    if cuda or quantized:  # forward + backward (+ the checkpointed recompute)
        flops = (8 if cuda else 6) * params * epochs_tokens
        rate = _measured_flops(device) * (0.35 if cuda else 0.25)
        # A small model's step on a GPU costs its kernel launches, not its arithmetic, and the job first loads and
        # quantizes: on an H200 the bundled 135M model ran 30 QLoRA steps in 24 s (docs/BENCHMARKS.md); the
        # floor is per micro-batch (gradient accumulation runs several a step).
        startup_s, step_floor_s = (15.0, 0.3) if cuda else (0.0, 0.0)
    else:
        # The CPU trainer (core/sft.py): the frozen base needs no weight gradients (forward + backward ~ 4 x params
        # per token), and the LM head runs on answer tokens only. Rate and start-up (the job's process, loading,
        # tokenizing) measured on a 2-core CPU, a job from start to completed (2026-12-05): 12 short facts (30
        # steps) 36 s, 48 PubMedQA Q&A (24 steps of 4) 46 s, 48 passage + question prompts (24 steps) 113 s;
        # estimated 0.6, 0.8 and 1.9 min.
        head = embeddings // (1 if getattr(model_config, "tie_word_embeddings", False) else 2)
        answers = (answer_tokens if answer_tokens is not None else train_tokens) * epochs_tokens / max(train_tokens, 1)
        # (+ the weights' own gradients, 2 x params per token, in a full fine-tune)
        flops = (6 if full else 4) * (params - head) * epochs_tokens + 4 * head * answers
        # bf16 mixed precision (cpu_computes_bf16): 1.65x the fp32 tokens/s, measured on a RAFT set
        rate = _measured_flops(device) * 0.5 * (1.65 if cpu_computes_bf16() else 1.0)
        startup_s = 18.0
    return {
        "parameters": params, "lora_parameters": lora_params, "quantized_4bit": quantized,
        "memory_gb": round(need / 1e9, 2), "available_gb": round(available / 1e9, 2),
        "memory_parts_gb": {k: round(v / 1e9, 2) for k, v in parts.items()},
        "fits": need < available * 0.9, "steps": steps, "train_tokens": int(epochs_tokens),
        "minutes": round((max(flops / rate, steps * settings.grad_accum * step_floor_s) + startup_s) / 60, 1),
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
    if biggest == "optimizer":
        return ("train a LoRA or DoRA adapter instead (adapter type lora: about 1% of the weights train), or choose "
                "a smaller base model")
    return smaller + (f", or {four_bit}" if four_bit else "")


def optimizer_for(device: str, quantized: bool) -> str:
    """QLoRA's paged 8-bit AdamW on CUDA. Paging needs CUDA's unified memory, so a 4-bit run on a CPU gets the same
    8-bit AdamW (bitsandbytes' CPU kernels) without it; a full-precision CPU run keeps torch's AdamW."""
    if device.startswith("cuda"):
        return "paged_adamw_8bit"
    return "adamw_bnb_8bit" if quantized else "adamw_torch"


def parameters_of(config) -> int:
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


def describe_presets() -> list[dict]:
    return [{"preset": name, **values} for name, values in PRESETS.items()]

