"""Decode steps straight through the model's modules (core/lean_step.py) give what transformers' forward gives, bit
for bit: the engine's greedy answers are the same with the lean steps on and off, for the bundled model in bf16 alone,
in a padded batch, with prompt lookup, and with LoRA adapters (one, and a mixed batch); a Qwen2 model takes them too;
a layer the lean step does not compute (Qwen3's query/key norms) fails its probe and keeps transformers' forward."""
import pytest
import torch

from conftest import lean_steps_counted
from core import lean_step
from core.generation import GenerationConfig, RowDone, stream_chat

CONFIG = GenerationConfig(max_new_tokens=32, stop_loops=False)
PASSAGE = ("The Brindlewick Lantern Company was founded in 1911 by Oswin Thackery in Port Ellery. Its first lantern, "
           "the Thackery Mark One, burned whale oil and sold for four shillings. ")
QUESTIONS = ["Name three colours.", PASSAGE * 3 + "\nWho founded the Brindlewick Lantern Company, and where?",
             PASSAGE + "\nWhat did the first lantern burn?", "Explain photosynthesis briefly."]


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def bf16_generator(tmp_path_factory):
    """The bundled model as the app loads it for a CPU in bf16 (its own copy: adapters are attached to it here)."""
    from core.config import load_settings
    from core.models import _load_chat_model, resolve_base_model

    settings = load_settings(data_dir=tmp_path_factory.mktemp("lean"))
    if settings.resolved_device != "cpu":
        pytest.skip("the lean step is the CPU's (row attention); a GPU decodes with its own kernels")
    source = resolve_base_model(settings.base_model, settings)
    return _load_chat_model(source, "bundled-bf16", "cpu", "bf16"), source


def answers(generator, adapters=None, each_alone: bool = False) -> list[str]:
    def texts(call, names):
        done = {e.row: e.text for e in stream_chat(generator, call, CONFIG, adapters=names) if isinstance(e, RowDone)}
        return [done[i] for i in range(len(call))]

    names = adapters or [None] * len(QUESTIONS)
    if each_alone:
        return [texts([chat(q)], [a])[0] for q, a in zip(QUESTIONS, names)]
    return texts([chat(q) for q in QUESTIONS], names)


def with_and_without_lean(monkeypatch, run) -> tuple[list[str], list[str], int]:
    """`run()` with lean steps on (counting the steps they computed) and off."""
    with lean_steps_counted(monkeypatch, []) as taken:
        lean = run()
    monkeypatch.setattr(lean_step, "LEAN_STEPS", False)
    plain = run()
    return lean, plain, len(taken)


def test_lean_steps_answer_as_transformers_forward_does(bf16_generator, monkeypatch):
    generator, _ = bf16_generator
    assert lean_step.usable(generator.model)  # the probe passed on this model
    lean, plain, steps = with_and_without_lean(monkeypatch, lambda: answers(generator) +
                                               answers(generator, each_alone=True))
    assert lean == plain
    assert steps > 4 * 20  # most of the answers' tokens came from lean steps (alone: with prompt lookup)
    assert len(set(lean[:4])) == 4 and all(lean)


def test_the_probe_tells_a_step_that_rounds_once_differently(bf16_generator, monkeypatch):
    """A lean step whose norm multiplies by its weight before rounding to bf16 instead of after (within one bf16
    rounding of the model's) fails the probe, so the model keeps transformers' forward."""
    generator, _ = bf16_generator
    assert lean_step._probe(generator.model)

    def rounded_once(norm, x):
        return (norm.weight.float() * torch.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon)).to(x.dtype)

    monkeypatch.setattr(lean_step, "_norm", rounded_once)
    assert not lean_step._probe(generator.model)


def test_lean_steps_with_lora_adapters(bf16_generator, monkeypatch, tmp_path):
    """A random (non-zero) LoRA adapter on every linear layer: its rows alone take lean steps through peft's layers;
    a batch mixing it with base rows takes peft's forward; either way the answers are the forward's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.models import attach_adapter

    generator, source = bf16_generator
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(source), lora).save_pretrained(tmp_path / "adapter")
    name = attach_adapter(generator, tmp_path / "adapter", "v1")
    mixed = [name, None, name, None]
    lean, plain, steps = with_and_without_lean(
        monkeypatch, lambda: answers(generator, [name] * 4) + answers(generator, mixed))
    assert lean == plain
    assert steps > 20
    base = answers(generator)
    assert lean[:4] != base  # the adapter changes the answers: its layers were in the steps


def tiny_model(folder, kind: str):
    """A small random model of `kind` ("qwen2", "qwen3") with the bundled model's tokenizer, saved to `folder`."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from core.config import load_settings
    from core.models import resolve_base_model

    settings = load_settings(data_dir=folder / "data")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(settings.base_model, settings))
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[kind]
    config = config_class(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                          tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model_class(config).save_pretrained(folder / kind)
    tokenizer.save_pretrained(folder / kind)
    return folder / kind


def test_a_qwen2_model_takes_lean_steps_and_a_qwen3_model_fails_the_probe(tmp_path, monkeypatch):
    from core.models import _load_chat_model

    qwen2 = _load_chat_model(str(tiny_model(tmp_path, "qwen2")), "tiny-qwen2", "cpu", "bf16")
    assert qwen2.model.model.layers[0].self_attn.q_proj.bias is not None  # its biases ride in the modules
    assert lean_step.usable(qwen2.model)
    lean, plain, steps = with_and_without_lean(monkeypatch, lambda: answers(qwen2))
    assert steps > 20 and lean == plain
    monkeypatch.setattr(lean_step, "LEAN_STEPS", True)
    # where torch's fused norm rounded differently, the written-out norm is taken: the same logits again
    monkeypatch.setattr(lean_step, "_fused_norms", {})
    monkeypatch.setattr(lean_step, "_fused_norm_agrees", lambda *args: False)
    assert lean_step._probe(qwen2.model) and not any(lean_step._fused_norms.values())

    qwen3 = _load_chat_model(str(tiny_model(tmp_path, "qwen3")), "tiny-qwen3", "cpu", "bf16")
    assert not lean_step.usable(qwen3.model)  # not a layer it computes
    monkeypatch.setattr(lean_step, "LAYERS", lean_step.LAYERS | {"Qwen3DecoderLayer"})
    assert lean_step._shaped(qwen3.model) and not lean_step._probe(qwen3.model)  # the probe sees the difference
