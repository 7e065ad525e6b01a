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
from core.sft import PER_EXAMPLE, CheapDropout, CpuSFTTrainer, keep_frozen_lora_weights_in, sdpa_per_example
from core.config import cpu_computes_bf16

FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


def make_trainer(trainer_class, dropout: float, examples: int = 12, long_answer: bool = True, **config):
    """A trainer on the first `examples` facts (with `long_answer`, the second answer six times longer, so that
    padding matters more) with a fresh copy of the base model and a LoRA adapter on every linear layer."""
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
    if long_answer:
        rows[1]["completion"][0]["content"] *= 6
    rows = rows[:examples]
    # No gradient checkpointing, as core/training_run.py sets it on CPU, and fp32 unless asked (the layouts compare
    # exactly there; the app trains in bf16 mixed precision where the CPU has native bf16, core.config.cpu_computes_bf16).
    config = SFTConfig(output_dir=tempfile.mkdtemp(), max_length=384, completion_only_loss=True, use_cpu=True,
                       gradient_checkpointing=False, report_to=[], disable_tqdm=True,
                       include_num_input_tokens_seen="no", **{"max_steps": 1, "bf16": False, **config})
    return trainer_class(model=model, args=config, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))


@pytest.fixture(scope="module")
def trainer():
    return make_trainer(CpuSFTTrainer, dropout=0.1)


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


def lora_gradients(trainer, inputs) -> dict:
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, dict(inputs)).backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.model.zero_grad()
    return grads


def test_a_training_step_gets_the_padded_batch_s_gradients_and_counts_every_real_token(trainer):
    examples = [trainer.train_dataset[i] for i in range(4)]
    real = sum(len(e["input_ids"]) for e in examples)
    assert trainer.data_collator is trainer.flat_collator
    trainer.model.train()
    dropouts = [m for m in trainer.model.modules() if isinstance(m, CheapDropout)]
    for dropout in dropouts:
        dropout.eval()  # a training step without dropout: the two layouts must then give the same gradients
    try:
        padded = lora_gradients(trainer, trainer.padded_collator(examples))
        before = trainer.state.num_input_tokens_seen
        flat = lora_gradients(trainer, trainer.data_collator(examples))
        counted = trainer.state.num_input_tokens_seen - before
    finally:
        for dropout in dropouts:
            dropout.train()
    assert padded.keys() == flat.keys() and len(padded) == 2 * 7 * trainer.model.config.num_hidden_layers
    assert any(g.abs().sum() > 0 for n, g in padded.items() if "lora_B" in n)  # B starts at zero, A gets none yet
    for name, grad in padded.items():
        scale = grad.abs().max().item()
        assert torch.allclose(flat[name], grad, rtol=1e-3, atol=1e-4 * scale + 1e-12), name
    everything = lambda grads: torch.cat([g.flatten() for g in grads.values()])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(everything(padded), everything(flat), dim=0) > 0.99999
    # The end-of-turn token is also the pad token here: a count of non-pad tokens would miss it.
    assert counted == real


def test_training_tracks_stock_trl_step_by_step():
    """The same data, seed and settings through TRL's own SFTTrainer (padded batches, its fused LM head) and through
    CpuSFTTrainer (one padding-free row, the answer-only head): the loss of every step agrees, and both learn. LoRA
    dropout is 0 here: the CPU trainer's dropout draws its masks differently by design (tested on its own below)."""
    from trl import SFTTrainer

    # 4 examples of different lengths at batch 2: two epochs in 4 steps, so the second sees the same examples.
    settings = dict(examples=4, long_answer=False, max_steps=4, per_device_train_batch_size=2, learning_rate=2e-3,
                    lr_scheduler_type="constant", logging_steps=1, seed=3, data_seed=3, save_strategy="no")
    losses = {}
    # The app's own precision on this CPU too, when it differs from fp32 (bf16 mixed where the CPU has it natively)
    runs = [(SFTTrainer, False), (CpuSFTTrainer, False)] + ([(CpuSFTTrainer, True)] if cpu_computes_bf16() else [])
    for trainer_class, bf16 in runs:
        run = make_trainer(trainer_class, dropout=0.0, bf16=bf16, **settings)
        if trainer_class is CpuSFTTrainer:
            assert run.data_collator is run.flat_collator  # the padding-free layout is the one compared
        run.train()
        losses[trainer_class.__name__ + " bf16" * bf16] = [log["loss"] for log in run.state.log_history if "loss" in log]
    stock, ours = losses["SFTTrainer"], losses["CpuSFTTrainer"]
    print("losses per step:", losses)
    assert len(stock) == len(ours) == 4
    assert ours == pytest.approx(stock, rel=1e-4)  # measured: within 1e-5 (fp32 on both sides)
    assert sum(ours[2:]) < 0.75 * sum(ours[:2])  # the second pass over the same examples costs clearly less
    if "CpuSFTTrainer bf16" in losses:  # bf16 products round: close to fp32's losses, and it learns as well
        mixed = losses["CpuSFTTrainer bf16"]
        assert mixed == pytest.approx(stock, rel=0.05) and sum(mixed[2:]) < 0.75 * sum(mixed[:2])


def test_in_bf16_mixed_the_frozen_weights_are_kept_in_bf16_and_the_step_is_bit_for_bit_the_same():
    """bf16 mixed precision: the LoRA layers' frozen base weights are held in bf16 (autocast would cast them at every
    step), everything that trains or is shared stays fp32, and a training step's loss and LoRA gradients under
    autocast are exactly those of the same model with fp32 base weights. DoRA layers keep fp32."""
    from peft import LoraConfig

    mixed, plain = make_trainer(CpuSFTTrainer, dropout=0.0, bf16=True), make_trainer(CpuSFTTrainer, dropout=0.0)
    mixed.model.load_state_dict({k: v for k, v in plain.model.state_dict().items() if "lora_" in k}, strict=False)
    layers = 7 * plain.model.config.num_hidden_layers
    bases = [m.base_layer.weight for m in mixed.model.modules() if hasattr(m, "base_layer")]
    assert len(bases) == layers and all(w.dtype == torch.bfloat16 for w in bases)
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters() if p.requires_grad)
    assert mixed.model.get_input_embeddings().weight.dtype == torch.float32
    assert all(m.base_layer.weight.dtype == torch.float32 for m in plain.model.modules() if hasattr(m, "base_layer"))
    batch = mixed.data_collator([mixed.train_dataset[i] for i in range(4)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, reference = lora_gradients(mixed, batch), lora_gradients(plain, batch)
    assert ours.keys() == reference.keys() and len(ours) == 2 * layers
    assert any(g.abs().sum() > 0 for n, g in ours.items() if "lora_B" in n)
    assert all(torch.equal(ours[name], reference[name]) for name in ours)
    plain.model.add_adapter("dora", LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    assert keep_frozen_lora_weights_in(plain.model, torch.bfloat16) == layers - plain.model.config.num_hidden_layers
    kept = {name: m.base_layer.weight.dtype for name, m in plain.model.named_modules() if hasattr(m, "base_layer")}
    assert all((dtype == torch.float32) == name.endswith("q_proj") for name, dtype in kept.items())


def test_per_example_attention_runs_in_fp32_under_autocast():
    """Under bf16 autocast each example's attention is computed in fp32 (twice as fast on this CPU as autocast's
    bf16, and exact to its inputs): the same numbers as fp32 attention per example, not autocast's, and gradients
    reach a bf16 value (as v_proj gives it under autocast)."""
    import torch.nn.functional as F

    class Attention:  # what transformers' SDPA function reads of the module
        is_causal, num_key_value_groups, training = True, 3, True

    torch.manual_seed(0)
    query, key = torch.randn(1, 9, 50, 64), torch.randn(1, 3, 50, 64)
    value = torch.randn(1, 3, 50, 64, dtype=torch.bfloat16, requires_grad=True)
    bounds = torch.tensor([0, 20, 50])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_per_example(Attention(), query, key, value, None, cu_seq_lens_q=bounds, scaling=0.125)
        autocast_bf16 = F.scaled_dot_product_attention(query[:, :, :20], key[:, :, :20], value[:, :, :20],
                                                       is_causal=True, scale=0.125, enable_gqa=True)
    expected = torch.cat([F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b].float(),
                                                         is_causal=True, scale=0.125, enable_gqa=True)
                          for a, b in ((0, 20), (20, 50))], dim=2).transpose(1, 2)
    assert out.dtype == torch.float32 and autocast_bf16.dtype == torch.bfloat16
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out[:, :20], autocast_bf16.transpose(1, 2).float(), atol=1e-4)
    out.sum().backward()
    assert value.grad.dtype == torch.bfloat16 and value.grad.abs().sum() > 0


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
