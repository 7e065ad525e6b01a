"""How a training batch is laid out and scored on a CPU: TRL's SFTTrainer with two measured changes.

1. Each batch is either padded (TRL's usual layout) or flattened into one padding-free row (TRL's own padding-free
   layout: position ids restart per example and transformers builds a block-diagonal causal mask from them), whichever
   costs fewer FLOPs. Without varlen kernels a flat row's attention covers the whole row, so flat wins for short
   examples of mixed lengths (no padding to compute) and loses for long ones.
2. LoRA's dropout draws its mask from a quarter of the random numbers. torch's CPU generator draws one number at a
   time, and a stock dropout mask cost 16% of a training step here, about as much as the LoRA matrices themselves.
3. The loss projects only the positions whose next token is learned (the answer) through the LM head. TRL's fused
   head scores every position unless Triton is there, and recomputes the logits in the backward pass; both cost real
   time on a CPU, where the memory it saves does not matter.

On CUDA the engine keeps TRL's defaults: unmeasured there, and TRL's compact path already runs where Triton does.
bench/bench_training.py measures the difference against a plain transformers Trainer.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


def attention_cost_per_pair(model_config) -> float:
    """FLOPs of attention for one (query, key) pair, relative to the FLOPs of the linear layers for one token.

    Per layer: QK^T and the weighted sum of V cost 4 * heads * head_dim per pair; the projections and the MLP cost
    2 FLOPs per weight per token. Forward and backward scale both by about the same factor, so the ratio is enough."""
    hidden = model_config.hidden_size
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    projections = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * model_config.intermediate_size
    return 4 * heads * head_dim / (2 * (projections + mlp))


class CheapestLayoutCollator:
    """Pads the batch or flattens it into one padding-free row, whichever costs fewer FLOPs (see the module doc)."""

    def __init__(self, pad_token_id: int, pair_cost: float):
        self.padded = DataCollatorForLanguageModeling(pad_token_id=pad_token_id)
        self.flat = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)
        self.pair_cost = pair_cost

    def flat_is_cheaper(self, lengths: list[int]) -> bool:
        rows, longest, total = len(lengths), max(lengths), sum(lengths)
        flat = total + self.pair_cost * total ** 2
        padded = rows * longest + self.pair_cost * rows * longest ** 2
        return flat < padded

    def __call__(self, examples: list[dict]) -> dict:
        lengths = [len(example["input_ids"]) for example in examples]
        return (self.flat if self.flat_is_cheaper(lengths) else self.padded)(examples)


class CpuSFTTrainer(SFTTrainer):
    """SFTTrainer with the three changes of the module doc. Counts real tokens itself: a padding-free row has no
    attention mask, and this model's pad token is its end-of-turn token, which a padding count would skip."""

    def __init__(self, *args, processing_class, model, **kwargs):
        kwargs.setdefault("data_collator", CheapestLayoutCollator(processing_class.pad_token_id,
                                                                  attention_cost_per_pair(model.config)))
        super().__init__(*args, model=model, processing_class=processing_class, **kwargs)
        use_cheap_lora_dropout(self.model)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._keeps_logits = "logits_to_keep" in inspect.signature(type(base).forward).parameters

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._keeps_logits or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        next_labels = labels[:, 1:]
        # Positions (in any row) whose next token is learned; only these reach the LM head.
        keep = (next_labels != -100).any(0).nonzero().flatten()
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
        targets = next_labels[:, keep]
        logits = outputs.logits.float()
        learned = targets != -100
        loss_sum = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        count = learned.sum()
        loss = loss_sum / (count.clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        # As TRL and Trainer do: num_items_in_batch counts every rank's tokens and DDP averages the gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        with torch.no_grad():
            correct = ((logits.argmax(-1) == targets) & learned).sum()
            correct, count = self.accelerator.gather(torch.stack([correct, count]).view(1, 2)).sum(0)
            self._metrics[mode]["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)
            if mode == "train":
                real = inputs["attention_mask"].sum() if "attention_mask" in inputs else inputs["input_ids"].new_tensor(
                    inputs["input_ids"].numel())
                self.state.num_input_tokens_seen += int(self.accelerator.gather(real.view(1)).sum().item())
        return loss


class CheapDropout(nn.Module):
    """Dropout whose mask takes 16 random bits per element, four elements from each 64-bit draw, instead of one draw
    per element; the drop probability is kept to 1/32768 (0.05 becomes 0.049988). 4.7x faster than nn.Dropout
    here on a 412x576 input."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        # random_() fills int64 with [0, 2^63); shifted left by one, every 16-bit lane is uniform over the even or
        # over all int16 values, and an even threshold gives both the same probability.
        self.threshold = 2 * round(p * 32768) - 32768

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        draws <<= 1
        keep = (draws.view(torch.int16)[:n] >= self.threshold).view(x.shape)
        return torch.where(keep, x * (1 / (1 - self.p)), 0.0)


def use_cheap_lora_dropout(model: nn.Module) -> int:
    """Swap every LoRA dropout (peft's nn.Dropout per adapter) for CheapDropout with the same p; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in list(dropouts.items()):
                if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                    dropouts[name] = CheapDropout(dropout.p)
                    swapped += 1
    return swapped
