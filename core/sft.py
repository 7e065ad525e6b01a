"""How a training batch is laid out and scored on a CPU: TRL's SFTTrainer with four measured changes.

1. No padding: each batch is one padding-free row (TRL's own padding-free collator; position ids restart per
   example) and attention runs on each example by itself (`sdpa_per_example`, in fp32), so a batch costs what its
   real tokens cost. A check at start-up compares the loss of one batch in both layouts and keeps padding if they
   differ (a model that cannot tell the examples of a flat row apart).
2. LoRA's dropout draws its mask from a quarter of the random numbers. torch's CPU generator draws one number at a
   time, and a stock dropout mask cost 18% of a training step here, about as much as the LoRA matrices themselves.
3. The loss projects only the positions whose next token is learned (the answer) through the LM head. TRL's fused
   head scores every position unless Triton is there, and recomputes the logits in the backward pass; both cost real
   time on a CPU, where the memory it saves does not matter.
4. In bf16 mixed precision, the frozen weights of the LoRA layers are kept in bf16: autocast casts a weight that
   does not train anew at every forward pass (it caches only the casts of trainable leaves), and the matrix product
   reads the bf16 copy either way, so the loss and gradients stay bit for bit the same.

On CUDA the engine keeps TRL's defaults: unmeasured there, and TRL's compact path already runs where Triton does.
bench/bench_training.py measures the difference against a plain transformers Trainer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from core.models import accepts_logits_to_keep


PER_EXAMPLE = "sdpa_per_example"
_BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def sdpa_per_example(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, run on each example of a padding-free row by itself (causal, no mask): the cost
    of the examples' own lengths, not of the whole row. Anything else (padded batches, sliding windows) goes to SDPA
    as usual."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or getattr(module, "sliding_window", None):
        rest = {k: v for k, v in kwargs.items() if k not in _BOUNDARY_KEYS}
        return sdpa_attention_forward(module, query, key, value, attention_mask, **rest)
    rest = {k: v for k, v in kwargs.items() if k not in _BOUNDARY_KEYS and k != "is_causal"}
    cuts = bounds.tolist()
    dtype = query.dtype
    # On a CPU in fp32, outside autocast (which would run it in bf16): torch's CPU flash kernel took about half the
    # time forward and backward in fp32 as in bf16 for examples of 60-180 tokens here (12% less at 400).
    if query.device.type == "cpu":
        query, key, value = query.float(), key.float(), value.float()  # no-ops for fp32
    with torch.autocast("cpu", enabled=False):  # CPU autocast only: nothing on another device
        parts = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                        None, is_causal=True, **rest)[0] for start, end in zip(cuts, cuts[1:])]
    return torch.cat(parts, dim=1).to(dtype), None


def _register_per_example_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PER_EXAMPLE, sdpa_per_example)
    AttentionMaskInterface.register(PER_EXAMPLE, sdpa_mask)  # padded batches still get their mask


class CpuSFTTrainer(SFTTrainer):
    """SFTTrainer with the four changes of the module doc. Counts real tokens itself: a padding-free row has no
    attention mask, and this model's pad token is its end-of-turn token, which a padding count would skip."""

    def __init__(self, *args, processing_class, model, **kwargs):
        self.padded_collator = DataCollatorForLanguageModeling(pad_token_id=processing_class.pad_token_id)
        self.flat_collator = DataCollatorForLanguageModeling(pad_token_id=processing_class.pad_token_id,
                                                             padding_free=True)
        if model.config._attn_implementation == "sdpa":
            _register_per_example_attention()
            model.config._attn_implementation = PER_EXAMPLE
        kwargs.setdefault("data_collator", self.flat_collator)
        super().__init__(*args, model=model, processing_class=processing_class, **kwargs)
        use_cheap_lora_dropout(self.model)
        self._keeps_logits = accepts_logits_to_keep(self.model)
        if self.data_collator is self.flat_collator and not self._flat_rows_keep_examples_apart():
            self.data_collator = self.padded_collator
        if self.args.bf16:  # after the check above, which runs without autocast
            keep_frozen_lora_weights_in(self.model, torch.bfloat16)

    def _flat_rows_keep_examples_apart(self) -> bool:
        """One batch's loss in both layouts: equal where the model keeps the examples of a flat row apart."""
        examples = [self.train_dataset[i] for i in range(min(3, len(self.train_dataset)))]
        if len(examples) < 2:
            return True
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                padded, flat = (F.cross_entropy(*self._learned_logits(self.model, self._prepare_inputs(collate(examples))),
                                                reduction="sum", ignore_index=-100)
                                for collate in (self.padded_collator, self.flat_collator))
        finally:
            self.model.train(was_training)
        return bool(torch.isclose(padded, flat, rtol=1e-3))

    def _learned_logits(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and next-token labels, flattened, at the positions (in any row) whose next token is learned; only
        these reach the LM head."""
        inputs = dict(inputs)
        next_labels = inputs.pop("labels")[:, 1:]
        if self._keeps_logits:
            keep = (next_labels != -100).any(0).nonzero().flatten()
            logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        else:  # a model without logits_to_keep: every position (only the start-up check comes here)
            keep = slice(None)
            logits = model(**inputs, use_cache=False).logits[:, :-1]
        return logits.float().flatten(0, 1), next_labels[:, keep].flatten()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self._keeps_logits or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        logits, targets = self._learned_logits(model, inputs)
        learned = targets != -100
        loss_sum = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
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


def keep_frozen_lora_weights_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast the frozen fp32 base weight (and bias) of every LoRA layer to `dtype`, the dtype autocast computes them
    in; how many layers. Only for training under autocast: outside it an fp32 input no longer meets its weight's
    dtype. DoRA layers keep theirs (their weight norm adds the base weight to the LoRA product in fp32), and so does
    anything shared or trained (embeddings, a full fine-tune)."""
    cast = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        dora = getattr(module, "lora_magnitude_vector", None)
        if not isinstance(base, nn.Linear) or dora or base.weight.dtype != torch.float32 or base.weight.requires_grad:
            continue
        for param in (base.weight, base.bias):
            if param is not None:
                param.data = param.data.to(dtype)
        cast += 1
    return cast


def use_cheap_lora_dropout(model: nn.Module) -> None:
    """Swap every LoRA dropout (peft's nn.Dropout per adapter) for CheapDropout with the same p."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in list(dropouts.items()):
                if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                    dropouts[name] = CheapDropout(dropout.p)
