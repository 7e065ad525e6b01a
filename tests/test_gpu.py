"""The CUDA path, through the same engine calls as on CPU: skipped cleanly on machines without a GPU (run them with
bench/gpu_check.sh there). The one test here that needs no GPU checks that bench/gpu_check.sh refuses to start
without one."""
import math
import subprocess
import time

import pytest
import torch

from conftest import ROOT
from core.config import load_settings, pick_device
from core.generation import GenerationConfig
from core.lab import Lab

needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


def gpu(test):
    for mark in needs_gpu:
        test = mark(test)
    return test


@gpu
def test_auto_device_picks_cuda():
    assert pick_device("auto") == "cuda"


@gpu
def test_rag_answer_on_gpu(tmp_path, handbook):
    lab = Lab(load_settings(data_dir=tmp_path / "data", device="cuda"))
    lab.kbs.ingest([handbook])
    assert lab.models.generator.model.device.type == "cuda"
    assert lab.models.generator.model.dtype in (torch.bfloat16, torch.float16)
    answer = lab.answers.ask("Who founded the Zorblat Institute?", "rag", config=GenerationConfig(max_new_tokens=32))
    assert "Quanz" in answer.answer and answer.timings["tokens_per_s"] > 0


@gpu
def test_qlora_job_on_gpu_trains_4bit_and_its_adapter_answers(tmp_path):
    """QLoRA as the app runs it on CUDA: `auto` means 4-bit NF4 there, TRL's SFTTrainer, paged 8-bit AdamW, bf16,
    gradient checkpointing (FlashAttention and packing when flash_attn is installed); then the Compare batch."""
    import importlib.util

    lab = Lab(load_settings(data_dir=tmp_path / "data", device="cuda"))
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    settings = lab.training.preset("quick", max_steps=4, batch_size=12)  # every step on the same 12 examples
    plan = lab.training.estimate("facts", settings)
    assert plan["quantized_4bit"] and plan["fits"] and plan["memory_parts_gb"]["weights"] < 0.3
    job = lab.training.start("facts", settings, adapter="facts-qlora")
    final = lab.jobs.wait(job["id"])
    assert final["state"] == "completed", (final.get("error"), final["log_tail"])
    result = final["result"]
    assert result["quantized_4bit"] is True and result["device"].startswith("cuda") and result["steps"] == 4
    assert result["optimizer"] == "paged_adamw_8bit" and result["trainer"] == "SFTTrainer"
    assert result["packing"] == (importlib.util.find_spec("flash_attn") is not None)
    assert 0 < result["peak_gpu_memory_gb"] < plan["memory_gb"], (result, plan)  # the estimate does not under-count
    assert result["tokens_per_s"] > 0
    losses = [loss for _, loss in result["history"]["train"]]
    print(f"QLoRA on {torch.cuda.get_device_name()}: losses {losses}, {result['tokens_per_s']} tokens/s, "
          f"peak {result['peak_gpu_memory_gb']} GB (estimate {plan['memory_gb']} GB: {plan['memory_parts_gb']})")
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    info = lab.adapters.info("facts-qlora")
    assert info["quantized_4bit"] is True and info["optimizer"] == "paged_adamw_8bit"
    answers = lab.answers.compare("Who founded the Zorblat Institute?", ["base", "finetuned"], adapter="facts-qlora",
                                  config=GenerationConfig(max_new_tokens=8))
    assert all(a.error is None and a.answer.strip() for a in answers), [a.to_dict() for a in answers]
    assert lab.models.generator.model.device.type == "cuda"


@gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_qlora_runs_data_parallel_on_two_gpus(tmp_path):
    """Each worker quantizes the model onto its own GPU (LOCAL_RANK), not all onto the first."""
    lab = Lab(load_settings(data_dir=tmp_path / "data", device="cuda"))
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    job = lab.training.start("facts", lab.training.preset("quick", max_steps=3, batch_size=2), "parallel",
                             processes=2)
    final = lab.jobs.wait(job["id"])
    assert final["state"] == "completed", (final.get("error"), final["log_tail"])
    assert final["result"]["processes"] == 2 and final["result"]["quantized_4bit"] is True
    assert lab.answers.ask("Who founded the Zorblat Institute?", "finetuned", adapter="parallel",
                           config=GenerationConfig(max_new_tokens=8)).answer


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_refuses_to_start_without_a_gpu(tmp_path):
    started = time.monotonic()
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "GPU_CHECK_LOG": str(tmp_path / "gpu_check.log")})
    assert done.returncode == 2 and time.monotonic() - started < 10
    assert done.stdout == "" and done.stderr.splitlines() == [
        "gpu_check: no NVIDIA GPU here (nvidia-smi lists none); run it on a machine with a CUDA GPU"]
    assert not (tmp_path / "gpu_check.log").exists()  # refused before anything else: no log, no install
