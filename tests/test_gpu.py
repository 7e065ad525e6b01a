"""The CUDA path, through the same engine calls as on CPU. Skipped cleanly on machines without a GPU."""
import pytest
import torch

from core.config import load_settings, pick_device
from core.generation import GenerationConfig
from core.lab import Lab

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_device_picks_cuda():
    assert pick_device("auto") == "cuda"


def test_rag_answer_on_gpu(tmp_path, handbook):
    lab = Lab(load_settings(data_dir=tmp_path / "data", device="cuda"))
    lab.kbs.ingest([handbook])
    assert lab.models.generator.model.device.type == "cuda"
    assert lab.models.generator.model.dtype in (torch.bfloat16, torch.float16)
    answer = lab.answers.ask("Who founded the Zorblat Institute?", "rag", config=GenerationConfig(max_new_tokens=32))
    assert "Quanz" in answer.answer and answer.timings["tokens_per_s"] > 0
