"""The CPU trainer's shortcuts (core/sft.py) change how a batch is laid out and scored, never what it learns: the
same loss as TRL's own path in both layouts, padding kept for a model that cannot tell the examples of a flat row
apart, and a dropout that drops at the rate asked."""
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from core.config import load_settings
from core.models import resolve_base_model
from core.sft import PER_EXAMPLE, CheapDropout, CpuSFTTrainer

FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


@pytest.fixture(scope="module")
def trainer():
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from core.training import to_prompt_completion

    settings = load_settings(data_dir=Path(tempfile.mkdtemp()), model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"]))
    source = resolve_base_model(settings.base_model, settings)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    rows = [to_prompt_completion(json.loads(line)) for line in FACTS.read_text().splitlines()]
    # Answers of very different lengths, so that padding matters.
    rows[1]["completion"][0]["content"] *= 6
    config = SFTConfig(output_dir=tempfile.mkdtemp(), max_length=384, completion_only_loss=True, use_cpu=True,
                       report_to=[], disable_tqdm=True, include_num_input_tokens_seen="no", max_steps=1)
    return CpuSFTTrainer(model=model, args=config, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))


def test_both_layouts_give_trl_s_own_loss(trainer):
    """Padded or padding-free, the answer-only LM head gives the loss TRL's fused head gives on the padded batch."""
    from trl import SFTTrainer

    examples = [trainer.train_dataset[i] for i in range(4)]
    assert trainer.data_collator is trainer.flat_collator  # the start-up check passed for this model
    assert trainer.model.config._attn_implementation == PER_EXAMPLE
    padded, flat = trainer.padded_collator(examples), trainer.flat_collator(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert padded["input_ids"].numel() > flat["input_ids"].numel()  # the flat row has no padding
    trainer.model.eval()  # no dropout, so the three are comparable
    with torch.no_grad():
        reference = SFTTrainer.compute_loss(trainer, trainer.model, dict(padded)).item()
        ours_padded = trainer.compute_loss(trainer.model, dict(padded)).item()
        ours_flat = trainer.compute_loss(trainer.model, dict(flat)).item()
    assert reference > 0.1
    assert ours_padded == pytest.approx(reference, rel=1e-4)
    assert ours_flat == pytest.approx(reference, rel=1e-4)


def test_a_training_step_learns_and_counts_every_real_token(trainer):
    trainer.model.train()
    before = trainer.state.num_input_tokens_seen
    examples = [trainer.train_dataset[i] for i in range(4)]
    real = sum(len(e["input_ids"]) for e in examples)
    inputs = trainer.data_collator(examples)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = [p.grad for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # The end-of-turn token is also the pad token here: a count of non-pad tokens would miss it.
    assert trainer.state.num_input_tokens_seen - before == real
    trainer.model.zero_grad()


def test_the_start_up_check_catches_a_flat_row_whose_examples_see_each_other(trainer):
    assert trainer._flat_rows_keep_examples_apart()
    keeps_apart = trainer.flat_collator
    try:  # without position ids (and boundaries) the examples of a flat row attend to each other
        trainer.flat_collator = lambda examples: {k: v for k, v in keeps_apart(examples).items()
                                                  if k in ("input_ids", "labels")}
        assert not trainer._flat_rows_keep_examples_apart()
    finally:
        trainer.flat_collator = keeps_apart


def test_lora_dropout_is_swapped_and_drops_at_the_rate_asked(trainer):
    swapped = [m for m in trainer.model.modules() if isinstance(m, CheapDropout)]
    assert len(swapped) == 7 * trainer.model.config.num_hidden_layers  # every LoRA layer of every block
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in trainer.model.modules())
    for p in (0.05, 0.3):
        dropout = CheapDropout(p).train()
        x = torch.ones(1001, 999, requires_grad=True)  # an odd size: not a multiple of the 4 lanes per draw
        y = dropout(x)
        dropped = (y == 0).float().mean().item()
        assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5  # within 5 standard deviations
        assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - p))))
        y.sum().backward()
        assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask and scale
        assert not torch.equal(dropout(x), y)  # a fresh mask every call
    assert CheapDropout(0.3).eval()(x) is x
