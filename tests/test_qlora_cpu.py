"""QLoRA without a GPU: bitsandbytes runs 4-bit NF4 layers on a CPU, so the app's own 4-bit path (a job in its own
process, core/training_run.py's train() with quantize=4bit, the adapter registry, the Compare batch) runs here for a few
steps. What only a GPU shows (paged optimizer, bf16, FlashAttention, several GPUs) is in tests/test_gpu.py.

Also here: the memory estimate's CUDA branch and the out-of-memory advice, which need no GPU to check."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT
from core.errors import InputError
from core.generation import GenerationConfig
from core.training import TrainSettings, estimate, memory_advice, optimizer_for

FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


def test_qlora_job_trains_4bit_on_cpu_and_its_adapter_answers_in_compare(lab, tmp_path):
    from safetensors.torch import load_file

    four = tmp_path / "four.jsonl"
    four.write_text("\n".join(FACTS.read_text().splitlines()[:4]))
    lab.datasets.import_file(four, "facts", validation=0, test=0)
    # All 4 examples in every step, so the steps' losses are on the same data; 3 steps (the first at warm-up's
    # learning rate 0, so the third is the first to see a trained adapter), a checkpoint after step 2.
    settings = lab.training.preset("quick", quantize="4bit", max_steps=3, batch_size=4, max_length=96,
                                   eval_every=2)
    job = lab.training.start("facts", settings, adapter="facts-qlora")
    assert job["estimate"]["quantized_4bit"] is True
    final = lab.jobs.wait(job["id"])
    assert final["state"] == "completed", (final.get("error"), final["log_tail"])
    result = final["result"]
    # The closest a CPU gets to QLoRA's paged 8-bit AdamW: the same 8-bit AdamW, unpaged; the CPU trainer kept its
    # padding-free rows (its start-up check compared both layouts' loss on the 4-bit model).
    assert result["quantized_4bit"] is True and result["steps"] == 3 and result["device"] == "cpu"
    assert result["optimizer"] == "adamw_bnb_8bit" == optimizer_for("cpu", True)
    assert result["trainer"] == "CpuSFTTrainer" and result["padding_free"] is True
    assert result["peak_gpu_memory_gb"] is None and result["tokens_per_s"] > 0
    losses = [loss for _, loss in result["history"]["train"]]
    print(f"4-bit on CPU: losses {losses}, {result['tokens_per_s']} tokens/s, {result['seconds']} s")
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0] - 0.2, losses  # it learned
    # bitsandbytes' CPU inference layout (taken on the start-up check's eval-mode pass) has no backward: with it,
    # gradients skip every 4-bit layer and the same step lowered the loss by a tenth as much
    assert "gemv_4bit" not in (lab.jobs.path(job["id"]) / "log.txt").read_text()
    checkpoint = lab.jobs.path(job["id"]) / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "optimizer.pt").is_file()  # the 8-bit optimizer's state saves (what resume loads)

    info = lab.adapters.info("facts-qlora")
    assert info["quantized_4bit"] is True and info["optimizer"] == "adamw_bnb_8bit" and info["complete"] is True
    folder = lab.adapters.path("facts-qlora")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}  # LoRA on every 4-bit linear layer
    weights = load_file(folder / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert len(lora_b) == 30 * 7 and all(t.dtype == torch.float32 for t in weights.values())
    assert sum(bool(t.abs().max() > 0) for t in lora_b) == len(lora_b)  # LoRA's B starts at zero: all trained

    # The served model is full precision; the adapter trained on its 4-bit copy attaches to it like any other.
    question = "Who founded the Zorblat Institute?"
    answers = lab.answers.compare(question, ["base", "finetuned"], adapter="facts-qlora",
                                  config=GenerationConfig(max_new_tokens=8))
    assert [a.variant for a in answers] == ["base", "finetuned"]
    assert all(a.error is None and a.answer.strip() for a in answers), [a.to_dict() for a in answers]
    attached = [key for key in lab.models.generator.adapters if key.startswith(f"{lab.adapters.path('facts-qlora')}@")]
    assert len(attached) == 1  # attached once (others may be too)


# ---- memory: the estimate's CUDA branch and the advice, without a GPU ----------------------------------------------

LLAMA_8B = SimpleNamespace(hidden_size=4096, num_hidden_layers=32, vocab_size=128256, intermediate_size=14336,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)


@pytest.fixture
def gpu_with(monkeypatch):
    """Pretend CUDA has `gb` free and a measured speed, for estimate() only."""
    import core.training as training

    def set_free(gb: float) -> None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (int(gb * 1e9), int(80e9)))
        monkeypatch.setitem(training._flops_cache, "cuda", 300e12)
    return set_free


def test_cuda_estimate_counts_4bit_weights_lora_optimizer_and_activations(gpu_with):
    gpu_with(16)
    small = TrainSettings.from_preset("quick", batch_size=2, max_length=512)
    four = estimate(LLAMA_8B, 200_000, 500, small, "cuda", 512)
    assert four["quantized_4bit"] and four["fits"] and four["parameters"] > 7.9e9
    parts = four["memory_parts_gb"]
    # NF4 linear layers (~3.6 GB) + the unquantized embeddings and LM head in fp32 after prepare_model_for_kbit_training
    assert 7 < parts["weights"] < 9 and parts["lora"] < 1.0 and 1 < parts["activations"] < 4, parts
    full = estimate(LLAMA_8B, 200_000, 500, TrainSettings.from_preset("quick", quantize="none", batch_size=2,
                                                                      max_length=512), "cuda", 512)
    assert not full["fits"] and full["memory_parts_gb"]["weights"] > 15  # bf16 weights alone: 16 GB
    assert 18 < full["memory_gb"] < 22 and four["memory_gb"] < 13
    assert memory_advice(small, False, full["memory_parts_gb"]).startswith("use 4-bit")
    big = TrainSettings.from_preset("quick", batch_size=16, max_length=4096)
    long = estimate(LLAMA_8B, 200_000, 500, big, "cuda", 4096)
    assert not long["fits"] and max(long["memory_parts_gb"], key=long["memory_parts_gb"].get) == "activations"
    assert memory_advice(big, True, long["memory_parts_gb"]).startswith("lower the batch size (now 16")


def test_refusal_names_the_setting_to_lower(lab):
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    huge = lab.training.preset("quick", batch_size=512, max_length=32768)
    with pytest.raises(InputError, match=r"GB is free \(weights .* GB\): lower the batch size \(now 512"):
        lab.training.start("facts", huge)
    assert lab.jobs.names() == []


def test_advice_follows_the_biggest_memory_term():
    settings = TrainSettings.from_preset("quick", batch_size=8, max_length=1024, rank=16)
    acts = memory_advice(settings, False, {"weights": 1, "lora": 0.1, "activations": 9})
    assert acts.startswith("lower the batch size (now 8") and "max length (now 1024" in acts and "use 4-bit" in acts
    assert "4-bit" not in memory_advice(settings, True, {"weights": 1, "lora": 0.1, "activations": 9})
    assert memory_advice(settings, True, {"weights": 9, "lora": 0.1, "activations": 1}).startswith(
        "choose a smaller base model")
    assert memory_advice(settings, False, {"weights": 1, "lora": 5, "activations": 1}).startswith(
        "lower the LoRA rank (now 16)")
    one = TrainSettings.from_preset("quick", batch_size=1, max_length=2048)
    assert memory_advice(one, True).startswith("lower the max length (now 2048")  # no estimate: activations


def test_cuda_out_of_memory_mid_run_fails_the_job_with_the_setting_to_lower(tmp_path, monkeypatch):
    """run_job's own handling, in this process, with train() raising what torch raises when CUDA runs out."""
    import core.training_run as training_run
    from core.jobs import failure_message, run_job

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.02 GiB. GPU 0 has a total capacity of "
                                     "23.6 GiB of which 1.2 GiB is free.\nOf the allocated memory ...")

    monkeypatch.setattr(training_run, "train", out_of_memory)
    folder = tmp_path / "data" / "jobs" / "20250101-000000-000001"
    folder.mkdir(parents=True)
    settings = TrainSettings.from_preset("quick", batch_size=8, max_length=1024)
    job = {"id": folder.name, "device": "cpu", "data_dir": str(tmp_path / "data"), "settings": settings.to_dict(),
           "estimate": {"memory_parts_gb": {"weights": 0.3, "lora": 0.1, "activations": 6.0}}}
    (folder / "job.json").write_text(json.dumps(job))
    assert run_job(Path(folder)) == 1
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "failed"
    assert status["error"].startswith("out of GPU memory while training: lower the batch size (now 8;"), status
    assert "max length (now 1024 tokens)" in status["error"] and "Tried to allocate 3.02 GiB" in status["error"]
    assert "\n" not in status["error"]
    assert failure_message(ValueError("target modules not found"), job) == "ValueError: target modules not found"
    cpu = failure_message(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"), job)
    assert cpu.startswith("out of memory while training: lower the batch size")
