"""Choosing the base model: a Hugging Face folder and a .gguf file in the models folder are listed, switched to,
answer in Compare and train adapters that are refused on the other base; a Hub id offline is refused with nothing
written; a download cut off mid-file resumes (against a stand-in Hub on 127.0.0.1, with the real client)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import BUNDLED_BASE_MODEL, load_settings
from core.errors import InputError
from core.generation import GenerationConfig
from core.lab import Lab
from conftest import ROOT, cli_here, run_cli, subprocess_env, tiny_chat_model
from hub_server import FakeHub

FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


@pytest.fixture
def models_lab(lab: Lab) -> Lab:
    tiny_chat_model(lab.base_models.root / "tiny", lab.models.generator.tokenizer)
    return Lab(load_settings(data_dir=lab.settings.data_dir, model_cache_dir=lab.settings.model_cache_dir))


def answer(lab: Lab, adapter: str | None = None) -> str:
    variant = "finetuned" if adapter else "base"
    rows = lab.answers.compare_many(["When was the Zorblat Institute founded?"], [variant], adapter=adapter,
                                    config=GenerationConfig(max_new_tokens=6))
    return rows[0][0].answer


def test_a_local_folder_and_a_gguf_file_are_listed_switched_to_answer_and_train(models_lab: Lab):
    lab = models_lab
    from core.gguf_export import write_gguf

    write_gguf(lab.base_models.root / "tiny", lab.base_models.root / "tiny.gguf", "f16", "tiny")
    listed = {e.name: e for e in lab.base_models.list(hub=False)}
    assert set(listed) == {BUNDLED_BASE_MODEL, "local:tiny", "local:tiny.gguf"}
    assert listed[BUNDLED_BASE_MODEL].current and not listed["local:tiny"].current
    assert listed["local:tiny"].kind == "folder" and listed["local:tiny.gguf"].kind == "gguf"
    for name in ("local:tiny", "local:tiny.gguf"):  # sizes and memory read from the config before loading
        assert 3e6 < listed[name].parameters < 4e6, listed[name]
        assert 0 < listed[name].answer_gb < listed[BUNDLED_BASE_MODEL].answer_gb

    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    bundled_adapter = "on-bundled"
    lab.adapters.add(bundled_adapter, _empty_adapter(lab), {"base_model": BUNDLED_BASE_MODEL, "dataset": "facts"})

    # Switch to the folder: every service now uses it, and the choice is kept for the next start.
    result = lab.use_model("tiny")
    assert result["name"] == "local:tiny" and result["current"]
    assert lab.settings.base_model == "local:tiny" == lab.answers.settings.base_model
    assert load_settings(data_dir=lab.settings.data_dir).base_model == "local:tiny"
    assert lab.models.generator.model.config.hidden_size == 64
    assert isinstance(answer(lab), str)
    with pytest.raises(InputError, match="trained on SmolLM2-135M-Instruct \\(bundled\\), but the app uses tiny"):
        lab.answers.use_adapter(bundled_adapter)

    # A job trains on the model in use and records it; its adapter answers on it and is refused on another base.
    settings = lab.training.preset("quick", "facts", max_steps=3)
    job = lab.jobs.wait(lab.training.start("facts", settings, "on-tiny")["id"])
    assert job["state"] == "completed", job.get("error")
    assert lab.adapters.info("on-tiny")["base_model"] == "local:tiny"
    assert isinstance(answer(lab, "on-tiny"), str)

    # The .gguf file: converted once, then the same as any model; the tiny folder's adapter is refused on it.
    lab.use_model("local:tiny.gguf")
    assert lab.models.generator.model.config.hidden_size == 64 and isinstance(answer(lab), str)
    with pytest.raises(InputError, match="trained on tiny, but the app uses tiny.gguf"):
        lab.answers.use_adapter("on-tiny")
    with pytest.raises(InputError, match="not on the base model in use"):
        lab.training.start("facts", settings, "again", from_adapter="on-tiny")
    from ui.choices import adapter_choices

    assert adapter_choices(lab, matching=True) == [] and set(adapter_choices(lab)) == {"on-tiny", bundled_adapter}

    # Back to the bundled model from the CLI, which names what it switched to.
    run = cli_here(["models", "use", "bundled"], lab.settings.data_dir)
    assert run.returncode == 0 and "now using SmolLM2-135M-Instruct (bundled)" in run.stdout, run.stderr
    assert load_settings(data_dir=lab.settings.data_dir).base_model == BUNDLED_BASE_MODEL

    # Removing: not the model in use; a model of the folder goes with its files.
    lab.use_model("bundled:SmolLM2-135M-Instruct")
    assert lab.base_models.remove("tiny.gguf")["removed"] == "local:tiny.gguf"
    assert not (lab.base_models.root / "tiny.gguf").exists()
    with pytest.raises(InputError, match="the model in use"):
        lab.base_models.remove(BUNDLED_BASE_MODEL)


def _empty_adapter(lab: Lab) -> Path:
    folder = lab.settings.data_dir / "scratch-adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_bad_choices_are_refused_and_change_nothing(models_lab: Lab):
    lab = models_lab
    (lab.base_models.root / "bigger").mkdir()  # the config of a ~400B-parameter model, no weights
    (lab.base_models.root / "bigger" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
         "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256}))
    with pytest.raises(InputError, match="bigger: answering with it needs about [0-9.]+ GB and [0-9.]+ GB is free"):
        lab.use_model("bigger")
    with pytest.raises(InputError, match="no such model: the models here are SmolLM2-135M-Instruct \\(bundled\\), bigger, tiny"):
        lab.use_model("nope")
    (lab.base_models.root / "broken").mkdir()  # a config and no weights: listed, but does not load
    (lab.base_models.root / "tiny" / "config.json").rename(lab.base_models.root / "broken" / "config.json")
    with pytest.raises(Exception, match="Could not load the model 'local:broken'"):
        lab.use_model("broken")
    assert lab.settings.base_model == BUNDLED_BASE_MODEL
    assert not (lab.settings.data_dir / "model.json").exists()
    # Offline, a Hub id is refused at once, and nothing is written in the models folder.
    before = sorted(p.name for p in lab.base_models.root.iterdir())
    run = cli_here(["models", "download", "HuggingFaceTB/SmolLM2-360M-Instruct"], lab.settings.data_dir)
    assert run.returncode == 1 and "offline: HF_HUB_OFFLINE=1" in run.stderr, run.stderr
    assert sorted(p.name for p in lab.base_models.root.iterdir()) == before
    run = cli_here(["models", "use", "HuggingFaceTB/SmolLM2-360M-Instruct"], lab.settings.data_dir)
    assert run.returncode == 1 and "it is not downloaded and the Hub is offline" in run.stderr, run.stderr
    run = cli_here(["models", "download", "not a repo"], lab.settings.data_dir)
    assert run.returncode == 1 and "a Hub model is written OWNER/NAME" in run.stderr
    # Demo mode keeps the model fixed.
    from core.limits import DemoLimits

    demo = Lab(lab.settings, limits=DemoLimits())
    with pytest.raises(InputError, match="this demo keeps its model fixed"):
        demo.use_model("tiny")
    assert [e.name for e in demo.base_models.list()] == [BUNDLED_BASE_MODEL, "local:bigger", "local:broken"]  # nothing to fetch


def test_a_download_cut_off_mid_file_resumes_where_it_stopped(models_lab: Lab, tmp_path: Path):
    lab = models_lab
    source = lab.base_models.root / "tiny"
    (source / "model.py").write_text("raise SystemExit('remote code must never be fetched')\n")
    weights = source / "model.safetensors"
    size = weights.stat().st_size
    cut = 8 * 1024 * 1024  # the connection goes quiet after 8 MiB of the 13 MB weights
    hub = FakeHub("lab-tests/tiny-chat", source, stall_at={"model.safetensors": cut})
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    data_dir = lab.settings.data_dir
    try:
        first = subprocess.Popen([sys.executable, "-m", "core", "models", "download", "lab-tests/tiny-chat"],
                                 cwd=ROOT, env=subprocess_env(data_dir, **env), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        partial = data_dir / "models" / ".downloading" / "lab-tests--tiny-chat"
        deadline = time.time() + 120
        while time.time() < deadline and _bytes_under(partial) < cut:
            time.sleep(0.1)
        first.kill()  # the connection went quiet; the user gives up (or the machine stops)
        first.wait()
        kept = (partial / "model.safetensors.part").stat().st_size  # the weights, part-written
        assert kept == cut
        assert not (data_dir / "models" / "lab-tests--tiny-chat").exists()  # never half a model in the folder
        assert "lab-tests/tiny-chat" not in [e.name for e in lab.base_models.list(hub=False)]

        run = run_cli(["models", "download", "lab-tests/tiny-chat", "--json"], data_dir, **env)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["name"] == "lab-tests/tiny-chat"
    finally:
        hub.close()
    asked = [r for name, r in hub.ranges if name == "model.safetensors"]
    assert asked[0] is None and asked[-1] == f"bytes={kept}-", hub.ranges  # the rest only, not again
    target = data_dir / "models" / "lab-tests--tiny-chat"
    assert (target / "model.safetensors").read_bytes() == weights.read_bytes()
    assert not (target / "model.py").exists() and not partial.exists()
    record = json.loads((target / "download.json").read_text())
    assert record["repo_id"] == "lab-tests/tiny-chat" and "model.py" not in record["files"]
    listed = {e.name: e for e in lab.base_models.list(hub=False)}
    assert listed["lab-tests/tiny-chat"].kind == "hub" and listed["lab-tests/tiny-chat"].downloaded
    lab.use_model("lab-tests/tiny-chat")  # the Hub id resolves to its download: no network needed
    assert lab.models.generator.model.config.hidden_size == 64
    lab.use_model(BUNDLED_BASE_MODEL)


def _bytes_under(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
