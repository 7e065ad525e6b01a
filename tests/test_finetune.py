"""Fine-tuning for real on CPU: training data import and split, a LoRA job in its own process, the adapter registry,
and the fine-tuned variants answering what the base model cannot."""
import json
import math
import os
import re
import time
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, cli_here
from core.config import load_settings
from core.datasets import parse_examples
from core.errors import InputError
from core.generation import GenerationConfig
from core.lab import Lab

FACTS = ROOT / "tests" / "data" / "zorblat_facts.jsonl"


def facts() -> list[dict]:
    return [json.loads(line) for line in FACTS.read_text().splitlines()]


def correct(lab: Lab, adapter: str) -> dict[str, int]:
    """How many of the 12 facts the base model and the fine-tuned one answer: every question and both columns in
    one decode batch."""
    right = {"base": 0, "finetuned": 0}
    rows = facts()
    answered = lab.answers.compare_many([row["messages"][0]["content"] for row in rows], ["base", "finetuned"],
                                        adapter=adapter, config=GenerationConfig(max_new_tokens=24))
    for row, answers in zip(rows, answered):
        for answer in answers:
            right[answer.variant] += row["gold"].lower() in answer.answer.lower()
    return right


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One adapter trained on the facts with the Quick preset as a user gets it (12 examples at batch 4 for 10
    epochs: 30 steps), shared by the tests below, and trained the way a user might: `python -m core train` in its
    own process, stopped by Ctrl-C a few steps in while a second job waits for the device (and is cancelled the way
    the app's Cancel button does it), then resumed from its checkpoint to the end. Returns what was seen on the way
    (for the Ctrl-C test) and the finished job."""
    import signal
    import subprocess
    import sys

    from conftest import subprocess_env

    data_dir = tmp_path_factory.mktemp("finetune") / "data"
    imported = cli_here(["dataset", "import", str(FACTS), "--name", "facts", "--validation", "0", "--test", "0",
                        "--json"], data_dir)
    assert imported.returncode == 0, imported.stderr
    lab = Lab(load_settings(data_dir=data_dir, model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"])))
    process = subprocess.Popen(
        [sys.executable, "-m", "core", "train", "--dataset", "facts", "--preset", "quick", "--adapter", "facts-lora"],
        cwd=ROOT, env=subprocess_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C reaches it as in a terminal, even when the suite itself runs in the background (a shell without
        # job control starts background commands with SIGINT ignored, and the child would inherit that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not lab.jobs.names():
        assert time.time() < deadline and process.poll() is None, process.stderr.read() if process.poll() else ""
        time.sleep(0.2)
    [first] = lab.jobs.names()
    second = lab.training.start("facts", lab.training.preset("quick"), adapter="waits")
    seen = {"job": first}
    # One job per device: the second waits, visibly, for the first.
    while lab.jobs.get(second["id"]).get("waiting_for") != first:
        assert time.time() < deadline and lab.jobs.get(second["id"])["state"] == "queued"
        time.sleep(0.5)
    seen["second_cancelled"] = lab.jobs.cancel(second["id"]) and lab.jobs.wait(second["id"])["state"]
    while (lab.jobs.get(first).get("step") or 0) < 3:
        assert time.time() < deadline and process.poll() is None, process.stderr.read() if process.poll() else ""
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    seen["out"], seen["err"] = process.communicate(timeout=300)
    seen["returncode"] = process.returncode
    seen["stopped"] = lab.jobs.get(first)
    seen["adapters_at_stop"] = lab.adapters.names()
    seen["info_at_stop"] = lab.adapters.info("facts-lora") if "facts-lora" in lab.adapters.names() else None
    if seen["info_at_stop"]:  # the checkpoint loads and answers
        seen["answer_at_stop"] = lab.answers.ask("Who founded the Zorblat Institute?", "finetuned",
                                                 adapter="facts-lora", config=GenerationConfig(max_new_tokens=8))
    lab.jobs.resume(first)
    finished = lab.jobs.wait(first)
    assert finished["state"] == "completed" and finished["adapter"] == "facts-lora", finished.get("error")
    seen["adapters_after_resume"] = lab.adapters.names()
    return lab, finished, seen


@pytest.fixture(scope="module")
def trained(quick_run):
    lab, finished, _ = quick_run
    return lab, finished


def test_ctrl_c_cancels_the_job_which_keeps_a_usable_adapter_and_resume_finishes(quick_run):
    """Ctrl-C on `python -m core train` (its own process, as a user runs it) stops the training, not just the
    watching, and the job keeps its last checkpoint as an adapter that loads and answers. Meanwhile a second job
    waits for the device, visibly, and is cancelled the way the app's Cancel button does it. Resuming the first
    continues from its checkpoint and finishes."""
    lab, finished, seen = quick_run
    assert seen["returncode"] == 0, seen["err"][-2000:]
    # Live progress on stderr (the watcher polls each second: a fast step can pass unseen), then the stop.
    assert re.search(r"step [1-9]\d*/30", seen["err"]) and "cancelling" in seen["err"], seen["err"]
    assert seen["out"].startswith("cancelled: adapter facts-lora")
    assert seen["second_cancelled"] == "cancelled"
    stopped = seen["stopped"]
    assert stopped["state"] == "cancelled" and stopped["adapter"] == "facts-lora", stopped.get("error")
    assert seen["adapters_at_stop"] == ["facts-lora"]
    assert seen["info_at_stop"]["complete"] is False and 3 <= seen["info_at_stop"]["steps"] < 30
    assert seen["answer_at_stop"].answer
    assert seen["adapters_after_resume"] == ["facts-lora"]  # the resumed run replaced its own earlier adapter
    info = lab.adapters.info("facts-lora")
    assert info["complete"] is True and info["steps"] == 30 and finished["result"]["steps"] == 30
    assert info["history"]["train"][0][0] > 3  # continued from the checkpoint, not from step 1
    assert finished["result"]["resumed_from_step"] == seen["info_at_stop"]["steps"]


def test_fine_tuned_model_answers_facts_the_base_model_does_not_know(trained):
    lab, result = trained
    assert result["result"]["train_loss"] < 0.5, result["result"]
    right = correct(lab, "facts-lora")
    base, tuned = right["base"], right["finetuned"]
    print(f"facts answered: base {base}/12, fine-tuned {tuned}/12")
    assert base <= 1 and tuned >= 10


def test_bf16_answers_keep_the_facts_with_and_without_the_adapter(trained, tmp_path):
    """bf16 weights (the default on a CPU with native bf16: 1.4-1.65x faster answers here, the answer rate on the
    reading sets within 2 of 179 of fp32's): the base model in bf16 and the fp32 LoRA adapter on it answer the
    facts as well as in fp32 (>= 10 of 12), the base still knows none, and most answers are word for word fp32's
    (the stated tolerance: 10 of the 12)."""
    import torch

    lab, _ = trained
    fast, exact = (Lab(lab.settings.with_(decode_weights=w)) for w in ("bf16", "fp32"))
    assert fast.models.generator.model.dtype == torch.bfloat16 and exact.models.generator.model.dtype == torch.float32
    right = correct(fast, "facts-lora")
    print(f"facts answered in bf16: base {right['base']}/12, fine-tuned {right['finetuned']}/12")
    assert right["base"] <= 1 and right["finetuned"] >= 10
    questions = [row["messages"][0]["content"] for row in facts()]
    config = GenerationConfig(max_new_tokens=24)
    answers = {name: [a[0].answer for a in each.answers.compare_many(questions, ["finetuned"], adapter="facts-lora",
                                                                     config=config)]
               for name, each in (("fp32", exact), ("bf16", fast))}
    same = sum(a == b for a, b in zip(answers["fp32"], answers["bf16"]))
    print(f"fine-tuned answers word for word the same in bf16: {same}/12")
    assert same >= 10, answers
    # The GGUF export's check compares the file with the variant as fp32 readers compute it, whatever the app uses.
    exported = fast.exports.gguf("facts-lora", tmp_path / "gguf", kinds=("f16",))
    assert exported["files"][0]["same_answers"] == exported["files"][0]["checked"], exported


def test_a_dora_adapter_learns_the_facts_and_answers_in_one_call_with_lora_rows(trained):
    """DoRA (the Advanced panel's adapter type) trains with the Quick preset and learns the facts. peft cannot mix a
    DoRA adapter's rows into a batch that names each row's adapter, so they decode as a batch of their own: the
    base, LoRA and DoRA rows of one call each answer exactly as they do alone."""
    from core.generation import stream_chat

    lab, _ = trained
    # 18 of Quick's 30 steps: the loss is below 0.02 by step 16 (measured), and the suite stays short
    job = lab.training.start("facts", lab.training.preset("quick", tuning="dora", max_steps=18), adapter="facts-dora")
    final = lab.jobs.wait(job["id"])
    assert final["state"] == "completed", (final.get("error"), final["log_tail"])
    info = lab.adapters.info("facts-dora")
    assert (info["method"], info["tuning"]) == ("sft", "dora")
    assert json.loads((lab.adapters.path("facts-dora") / "adapter_config.json").read_text())["use_dora"] is True
    right = correct(lab, "facts-dora")
    print(f"facts answered with DoRA: base {right['base']}/12, fine-tuned {right['finetuned']}/12")
    assert right["finetuned"] >= 10

    question = [{"role": "user", "content": facts()[0]["messages"][0]["content"]}]
    keys = [None, lab.answers.use_adapter("facts-lora"), lab.answers.use_adapter("facts-dora")]
    config = GenerationConfig(max_new_tokens=16)

    def texts(rows):
        done = [e for e in stream_chat(lab.models.generator, [question] * len(rows), config, rows)
                if type(e).__name__ == "RowDone"]
        return [e.text for e in sorted(done, key=lambda e: e.row)]

    together = texts(keys)
    assert together == [texts([key])[0] for key in keys], together
    assert "Quanz" not in together[0] and "Quanz" in together[1] and "Quanz" in together[2], together


def test_a_full_fine_tune_learns_the_facts_and_answers_beside_the_base(trained):
    """Adapter type "full": every weight trains at the preset's gentler pace, the result is a whole model folder
    registered like an adapter, and Compare answers with it (a model of its own beside the base) in one call."""
    from core.training import memory_advice

    lab, _ = trained
    settings = lab.training.preset("quick", tuning="full")  # 30 steps: 20 learned only 4 of the 12
    assert settings.learning_rate == 5e-5  # not the adapter's 2e-3
    plan = lab.training.estimate("facts", settings)
    assert plan["lora_parameters"] > 100e6 and plan["memory_parts_gb"]["optimizer"] > plan["memory_parts_gb"]["weights"]
    final = lab.jobs.wait(lab.training.start("facts", settings, adapter="facts-full")["id"])
    assert final["state"] == "completed", (final.get("error"), final["log_tail"])
    folder = lab.adapters.path("facts-full")
    assert (folder / "model.safetensors").exists() and not (folder / "adapter_config.json").exists()
    assert lab.adapters.info("facts-full")["tuning"] == "full"
    right = correct(lab, "facts-full")
    print(f"facts answered after a full fine-tune: base {right['base']}/12, fine-tuned {right['finetuned']}/12")
    assert right["base"] <= 1 and right["finetuned"] >= 10
    with pytest.raises(InputError, match="cannot start from an adapter"):
        lab.training.start("facts", settings, from_adapter="facts-lora")
    with pytest.raises(InputError, match="is a fully fine-tuned model, not an adapter"):
        lab.training.start("facts", lab.training.preset("quick"), from_adapter="facts-full")
    assert "LoRA or DoRA adapter instead" in memory_advice(settings, False, {"weights": 1, "optimizer": 5,
                                                                              "activations": 2})


def test_adapter_records_what_made_it_and_exports(trained, tmp_path):
    lab, _ = trained
    info = lab.adapters.info("facts-lora")
    assert info["dataset"] == "facts" and info["dataset_sha256"] == lab.datasets.info("facts").sha256
    assert info["base_model"] == lab.settings.base_model and info["complete"] is True
    assert info["settings"]["preset"] == "quick" and info["steps"] == info["total_steps"] == 30
    assert info["history"]["train"][0][1] > info["history"]["train"][-1][1]  # the loss went down
    zipped = lab.adapters.export_zip("facts-lora", tmp_path)
    names = zipfile.ZipFile(zipped).namelist()
    assert "facts-lora/adapter_config.json" in names and "facts-lora/adapter_model.safetensors" in names


def test_merged_export_answers_like_the_adapter_without_peft(trained, tmp_path):
    """The merged full-precision model loads with plain transformers and knows the facts. On CUDA the Quick preset
    trains on a 4-bit base (quantize "auto"), and a merged export of such an adapter is refused instead."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lab, result = trained
    quantized = lab.settings.resolved_device.startswith("cuda")
    assert lab.adapters.info("facts-lora")["quantized_4bit"] is result["result"]["quantized_4bit"] is quantized
    # The refusal, on any device: an adapter recorded as trained on a 4-bit base.
    meta = json.loads((lab.adapters.path("facts-lora") / "lab_adapter.json").read_text())
    lab.adapters.add("facts-4bit", lab.adapters.path("facts-lora"), {**meta, "quantized_4bit": True})
    try:
        with pytest.raises(InputError, match="trained on a 4-bit base model: .*answer differently .*export the "
                                             "adapter zip instead"):
            lab.training.export_merged("facts-4bit", tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
    finally:
        lab.adapters.delete("facts-4bit")
    if quantized:
        refused = cli_here(["adapters", "export", "facts-lora", str(tmp_path / "merged"), "--merged", "--json"],
                           lab.settings.data_dir)
        assert refused.returncode == 1 and "4-bit" in json.loads(refused.stdout)["error"]
        return
    folder = lab.training.export_merged("facts-lora", tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who designed the Quorvin Bridge?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    assert "Brandt" in tokenizer.decode(out[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    with pytest.raises(InputError, match="not empty"):
        lab.training.export_merged("facts-lora", folder)


def towns_kb(lab, folder: Path) -> None:
    notes = folder / "towns.txt"
    notes.write_text("Vettelborg lies on the river Oda. The town hall has a green copper roof.")
    lab.kbs.ingest([notes], kb="towns")  # unchanged when already there


def test_gguf_export_answers_like_the_app_when_loaded_back_and_carries_its_chat_template(trained, tmp_path):
    """`adapters export --gguf`: f16 and Q8_0 files and an Ollama Modelfile. Loaded back by transformers (as
    another tool would read them: model, tokenizer and chat template from the file), each gives the in-app
    fine-tuned variant's greedy answers. What cannot be exported is refused before anything is written."""
    from gguf import GGUFReader
    from transformers import GPT2Config

    from core.gguf_export import check_exportable

    lab, _ = trained
    folder = tmp_path / "gguf"
    exported = cli_here(["adapters", "export", "facts-lora", str(folder), "--gguf", "--json"], lab.settings.data_dir)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    f16, q8 = json.loads(exported.stdout)["files"]
    print(f"GGUF f16 {f16['size_mb']} MB {f16['seconds']} s, q8_0 {q8['size_mb']} MB {q8['seconds']} s; same answers "
          f"{f16['same_answers']}/{f16['checked']} and {q8['same_answers']}/{q8['checked']}")
    assert f16["checked"] == 5 and f16["same_answers"] == 5, f16["differences"]
    assert q8["same_answers"] >= 4, q8["differences"]  # 8-bit weights may part at a near-tie
    assert q8["size_mb"] < 0.6 * f16["size_mb"]
    fields = GGUFReader(q8["path"]).fields
    tokenizer = lab.models.generator.tokenizer
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert fields["general.architecture"].contents() == "llama"
    modelfile = (folder / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./facts-lora-q8_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile

    again = cli_here(["adapters", "export", "facts-lora", str(folder), "--gguf", "--no-check"], lab.settings.data_dir)
    assert again.returncode == 1 and "the folder exists and is not empty" in again.stderr + again.stdout
    with pytest.raises(InputError, match="GGUF export supports .* this model is GPT2LMHeadModel"):
        check_exportable(GPT2Config(architectures=["GPT2LMHeadModel"]))
    refused = cli_here(["adapters", "export", "facts-lora", str(tmp_path / "q4"), "--gguf", "--types", "q4_k"],
                       lab.settings.data_dir)
    assert refused.returncode == 1 and "GGUF types are f16, q8_0" in refused.stderr + refused.stdout
    assert not (tmp_path / "q4").exists()


def test_one_batch_serves_all_four_columns(trained, tmp_path):
    """The base model is loaded once; the adapter is switched per row inside one decode batch, and each column
    says exactly what it says when asked alone."""
    lab, _ = trained
    towns_kb(lab, tmp_path)
    question = "Which river runs past Vettelborg?"
    short = GenerationConfig(max_new_tokens=16)
    together = {a.variant: a for a in lab.answers.compare(question, ["base", "finetuned", "rag", "finetuned+rag"],
                                                  kb="towns", adapter="facts-lora", config=short)}
    assert "Oda" in together["finetuned"].answer and "Oda" not in together["base"].answer
    for variant, answer in together.items():
        alone = lab.answers.ask(question, variant, kb="towns", adapter="facts-lora", config=short)
        if lab.models.generator.device == "cpu":  # a batch of four rounds like each row alone (fp32, and bf16: row attention)
            assert answer.answer == alone.answer, variant
        else:  # 16-bit on CUDA: other batch shapes round differently, and greedy may part at a near-tie (the decode
            # batch's agreement up to near-ties is test_arena.py's); here each column only has to answer both ways
            assert answer.answer and alone.answer and not answer.error and not alone.error, variant
    assert together["finetuned+rag"].sources and together["base"].sources == []
    # One attached adapter, no second copy of the model: the version cut short by Ctrl-C (attached by the Ctrl-C
    # test) was detached when the finished one replaced it.
    attached = [identity for identity in lab.models.generator.adapters if "/facts-lora@" in identity]
    assert len(attached) == 1, lab.models.generator.adapters


def test_cli_compares_four_columns_and_exports_votes(trained, tmp_path):
    lab, _ = trained
    towns_kb(lab, tmp_path)
    compared = cli_here(["compare", "Who designed the Quorvin Bridge?", "--adapter", "facts-lora", "--kb", "towns",
                        "--max-new-tokens", "16", "--json", "--markdown", str(tmp_path / "c.md")],
                       lab.settings.data_dir)
    assert compared.returncode == 0, compared.stderr
    record = json.loads(compared.stdout)
    answers = {a["variant"]: a for a in record["answers"]}
    assert list(answers) == ["base", "rag", "finetuned", "finetuned+rag"]
    assert "Brandt" in answers["finetuned"]["answer"] and all("ttft_ms" in a["timings"] for a in answers.values())
    assert record["adapter"] == "facts-lora" and record["adapter_info"]["dataset"] == "facts"
    assert "## Fine-tuned + RAG" in (tmp_path / "c.md").read_text()
    from core.comparison import Comparison

    lab.votes.record(Comparison.from_dict(record), "finetuned")
    exported = cli_here(["votes", "export", "--format", "dpo", str(tmp_path / "prefs.jsonl"), "--json"],
                       lab.settings.data_dir)
    assert exported.returncode == 0, exported.stderr
    chosen = answers["finetuned"]["answer"]
    others = [a["answer"] for v, a in answers.items() if v != "finetuned" and a["answer"].strip() != chosen.strip()]
    assert json.loads(exported.stdout)["rows"] == len(others) >= 1  # the winner against each different answer
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert all(r["chosen"][0]["content"] == chosen for r in rows)
    assert sorted(r["rejected"][0]["content"] for r in rows) == sorted(others)
    board = cli_here(["votes", "leaderboard"], lab.settings.data_dir)
    assert board.returncode == 0 and "Fine-tuned" in board.stdout and "100%" in board.stdout, board.stdout


def test_cli_asks_the_fine_tuned_variant(trained):
    lab, _ = trained
    asked = cli_here(["ask", "Who designed the Quorvin Bridge?", "--variant", "finetuned", "--adapter", "facts-lora",
                     "--max-new-tokens", "20", "--json"], lab.settings.data_dir)
    assert asked.returncode == 0, asked.stderr
    assert "Brandt" in json.loads(asked.stdout)["answer"]
    missing = cli_here(["ask", "Who?", "--variant", "finetuned", "--json"], lab.settings.data_dir)
    assert missing.returncode == 1 and "choose a fine-tuned adapter" in missing.stderr


def test_an_adapter_for_another_base_model_is_refused(trained):
    lab, _ = trained
    meta_path = lab.adapters.path("facts-lora") / "lab_adapter.json"
    lab.adapters.add("foreign", lab.adapters.path("facts-lora"),
                     {**json.loads(meta_path.read_text()), "base_model": "meta-llama/Llama-3.2-1B-Instruct"})
    [answer] = lab.answers.compare("Who founded the Zorblat Institute?", ["finetuned"], adapter="foreign")
    assert "trained on meta-llama/Llama-3.2-1B-Instruct" in answer.error


def test_adapters_are_renamed_and_deleted_with_clear_errors(trained):
    lab, _ = trained
    before = lab.adapters.names()
    meta = json.loads((lab.adapters.path("facts-lora") / "lab_adapter.json").read_text())
    lab.adapters.add("spare", lab.adapters.path("facts-lora"), meta)
    assert lab.adapters.rename("spare", "spare-renamed") == "spare-renamed"
    assert sorted(lab.adapters.names()) == sorted(before + ["spare-renamed"])
    assert lab.adapters.info("spare-renamed") == {**meta, "name": "spare-renamed"}  # what made it goes with it
    with pytest.raises(InputError, match=r"spare: no such adapter \(existing: .*facts-lora"):
        lab.adapters.info("spare")
    with pytest.raises(InputError, match="already exists"):
        lab.adapters.rename("spare-renamed", "facts-lora")
    with pytest.raises(InputError, match="adapter name is 1-62 letters"):
        lab.adapters.rename("spare-renamed", "../escape")
    with pytest.raises(InputError, match="no such adapter"):
        lab.adapters.rename("spare", "anything")
    # The renamed folder is a whole adapter: it loads and knows the facts.
    answer = lab.answers.ask("Who designed the Quorvin Bridge?", "finetuned", adapter="spare-renamed",
                             config=GenerationConfig(max_new_tokens=16))
    assert "Brandt" in answer.answer, answer.answer

    data_dir = lab.settings.data_dir
    renamed = cli_here(["adapters", "rename", "spare-renamed", "spare-cli", "--json"], data_dir)
    assert renamed.returncode == 0, renamed.stderr
    assert json.loads(renamed.stdout) == {"renamed": "spare-renamed", "to": "spare-cli"}
    deleted = cli_here(["adapters", "delete", "spare-cli", "--json"], data_dir)
    assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"deleted": "spare-cli"}, deleted.stderr
    assert sorted(lab.adapters.names()) == sorted(before)
    assert not [p for p in lab.adapters.root.iterdir() if p.name.startswith(("spare", ".spare"))]  # nothing left
    for args in (["adapters", "delete", "spare-cli"], ["adapters", "rename", "spare-cli", "other"]):
        missing = cli_here([*args, "--json"], data_dir)
        assert missing.returncode == 1, missing.stdout
        error = json.loads(missing.stdout)["error"]
        assert error.startswith("spare-cli: no such adapter (existing: ") and "facts-lora" in error
    with pytest.raises(InputError, match="no such adapter"):
        lab.adapters.delete("spare-cli")
    assert sorted(lab.adapters.names()) == sorted(before)


def test_evaluating_the_fine_tuned_variants_warns_of_questions_it_trained_on(trained):
    lab, _ = trained
    trained_on = [row for row in facts() if row["gold"] in ("Brandt", "Oda")]
    items = [{"question": r["messages"][0]["content"], "answer": r["gold"]} for r in trained_on]
    items.append({"question": "What colour is the roof of the Vettelborg town hall?", "answer": "green"})
    run = lab.evaluation.run(items, "facts+1", ["base", "finetuned"], adapter="facts-lora",
                             config=GenerationConfig(max_new_tokens=16))
    assert run["state"] == "completed" and run["adapter"] == "facts-lora" and len(trained_on) == 2
    assert run["adapter_info"] == {"dataset": "facts", "steps": 30,
                                   "seconds": lab.adapters.info("facts-lora")["seconds"]}
    assert run["warnings"] == ["2 of 3 test questions are in the adapter's training data (facts): the fine-tuned "
                               "scores on them measure recall, not generalisation"]
    summary = run["summary"]
    assert set(summary) == {"base", "finetuned"} and summary["finetuned"]["errors"] == summary["base"]["errors"] == 0
    assert summary["finetuned"]["contains"]["mean"] >= 2 / 3 > summary["base"]["contains"]["mean"]
    assert run["costs"]["adapter_mb"] > 0
    results = lab.evals.load(run["id"])  # saved with it, for a restart or an export
    assert results["warnings"] == run["warnings"] and results["adapter_info"] == run["adapter_info"]
    assert [r["answers"]["finetuned"]["answer"] for r in results["results"]] == \
        [r["answers"]["finetuned"]["answer"] for r in run["results"]]


def test_the_hub_folder_has_the_adapter_and_a_model_card_of_where_it_came_from(trained, tmp_path):
    """`adapters push --to-folder`: the files an upload would send, and a model card with the provenance (base,
    dataset and its hash, method, settings, losses) and the evaluation run above. Offline, or with a bad repo
    name, the upload is refused at once."""
    from conftest import run_cli

    lab, _ = trained
    folder = tmp_path / "hub"
    made = cli_here(["adapters", "push", "facts-lora", "--to-folder", str(folder), "--repo", "me/facts-lora",
                     "--json"], lab.settings.data_dir)
    assert made.returncode == 0, made.stdout + made.stderr
    assert json.loads(made.stdout)["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    source = lab.adapters.path("facts-lora")
    assert (folder / "adapter_model.safetensors").read_bytes() == (source / "adapter_model.safetensors").read_bytes()
    card = (folder / "README.md").read_text()
    info = lab.adapters.info("facts-lora")
    assert card.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlibrary_name: peft\n")
    for expected in ("# me/facts-lora", "| Dataset | `facts` |", f"| Dataset SHA-256 | `{info['dataset_sha256']}` |",
                     "| Method | sft |", f"| Train loss | {info['train_loss']} |", '"learning_rate": 0.002',
                     "Test set `facts+1`, 3 questions", "| finetuned |", "Q4_1 GGUF build"):
        assert expected in card, expected
    assert info["dataset_sha256"] == lab.datasets.info("facts").sha256

    offline = cli_here(["adapters", "push", "facts-lora", "--repo", "me/facts-lora"], lab.settings.data_dir)
    assert offline.returncode == 1 and "offline: HF_HUB_OFFLINE=1" in offline.stderr + offline.stdout
    bad = cli_here(["adapters", "push", "facts-lora", "--repo", "not a repo"], lab.settings.data_dir)
    assert bad.returncode == 1 and "USER/REPO" in bad.stderr + bad.stdout
    # Online but without a token (a fresh process, a Hugging Face home with none in it): refused before any upload.
    no_token = run_cli(["adapters", "push", "facts-lora", "--repo", "me/facts-lora"], lab.settings.data_dir,
                       HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="")
    assert no_token.returncode == 1 and "no Hugging Face token" in no_token.stderr + no_token.stdout, no_token.stderr


def test_a_run_whose_validation_loss_stops_improving_stops_early(lab):
    """Validation after every step with a patience of 2: a learning rate this high wrecks the model after its first
    (warm-up) step, the validation loss never gets back to where it started, and the run ends two checks later
    with the best checkpoint, long before its 30 steps."""
    lab.datasets.import_file(FACTS, "facts", validation=0.25, test=0)  # 9 to train on, 3 to validate
    settings = lab.training.preset("quick", learning_rate=0.5, batch_size=3, rank=4, eval_every=1,
                                   early_stopping_patience=2)
    job = lab.training.start("facts", settings, adapter="stopped-early")
    final = lab.jobs.wait(job["id"])
    assert final["state"] == "completed", (final.get("error"), final["log_tail"])
    result = final["result"]
    assert result["stopped_early"] is True and result["total_steps"] == 30 and result["steps"] < 30, result
    # One validation check per step, then one more of the adapter kept: the best checkpoint, reloaded at the end.
    *checks, (last_step, kept) = result["history"]["eval"]
    losses = [loss for _, loss in checks]
    best = losses.index(min(losses))
    assert [step for step, _ in checks] == list(range(1, result["steps"] + 1)) and last_step == result["steps"]
    assert len(losses) == best + 1 + settings.early_stopping_patience  # `patience` checks without gain, then stop
    assert kept == pytest.approx(losses[best], abs=1e-3) and result["eval_loss"] == pytest.approx(kept, abs=1e-3)
    info = lab.adapters.info("stopped-early")
    assert info["complete"] is True and info["steps"] == result["steps"]


def test_a_failing_job_fails_alone_with_its_reason(lab):
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    settings = lab.training.preset("quick", max_steps=2, target_modules="no_such_proj")
    job = lab.training.start("facts", settings)
    final = lab.jobs.wait(job["id"])
    assert final["state"] == "failed" and "no_such_proj" in final["error"]
    assert re.search(r'File ".*/core/\w+\.py", line \d+', final["log_tail"])  # the traceback is in the job's log
    assert lab.adapters.names() == []


def test_a_killed_worker_says_how_it_ended_in_the_job_and_the_cli(lab):
    """A training process killed from outside (here SIGKILL, as the kernel's out-of-memory killer does) leaves no
    status of its own: the job says it was killed, what that usually means, and its log's last line."""
    import signal

    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    job = lab.training.start("facts", lab.training.preset("quick"))
    folder = lab.jobs.path(job["id"])
    deadline = time.time() + 120
    while lab.jobs.get(job["id"])["state"] != "running" and time.time() < deadline:
        time.sleep(0.2)
    os.kill(int((folder / "pid").read_text()), signal.SIGKILL)
    final = lab.jobs.wait(job["id"], poll_s=0.2)
    assert final["state"] == "failed"
    assert final["error"].startswith("the training process was killed (SIGKILL): most often the system ran out of "
                                     "memory"), final["error"]
    shown = cli_here(["jobs", "show", job["id"]], lab.settings.data_dir)
    assert "killed (SIGKILL)" in shown.stdout, shown.stdout


def test_estimate_refuses_what_cannot_fit(lab, tmp_path):
    """A fine-tune that needs clearly more memory than this machine has (measured by the estimate itself, so a large
    GPU or a big server gets a bigger one) is refused before any job starts, with both numbers."""
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    small = lab.training.estimate("facts", lab.training.preset("quick"))
    assert small["fits"] and 0 < small["memory_gb"] < 4 and small["steps"] == 30
    dora = lab.training.estimate("facts", lab.training.preset("quick", tuning="dora"))
    assert dora["minutes"] > small["minutes"]  # DoRA's norms cost time each step (measured 1.65x here)
    # Long examples (about 30,000 tokens each), so that the batch size alone can ask for any amount of memory.
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"instruction": f"Recite list {i}.", "output": "word" + " word" * 30000}) + "\n"
                            for i in range(4)))
    lab.datasets.import_file(long, "long", validation=0, test=0)
    one = lab.training.estimate("long", lab.training.preset("quick", batch_size=1, max_length=32768))
    two = lab.training.estimate("long", lab.training.preset("quick", batch_size=2, max_length=32768))
    per_example = two["memory_gb"] - one["memory_gb"]
    assert per_example > 0
    wanted = 3 * one["available_gb"]  # clearly more than what is free here
    batch = min(512, max(1, math.ceil((wanted - one["memory_gb"]) / per_example) + 1))
    huge = lab.training.preset("quick", batch_size=batch, max_length=32768)
    plan = lab.training.estimate("long", huge)
    assert plan["memory_gb"] > 2 * plan["available_gb"] and not plan["fits"], plan
    assert small["advice"] is None and "lower the batch size (now" in plan["advice"]  # activations dominate
    shown = cli_here(["train", "--dataset", "long", "--batch-size", str(batch), "--max-length", "32768", "--estimate"],
                     lab.settings.data_dir)
    assert shown.returncode == 1 and "does NOT fit: lower the batch size" in shown.stdout, shown.stdout
    assert "activations" in shown.stdout and "weights" in shown.stdout  # the memory it adds up
    with pytest.raises(InputError, match=r"needs about [\d.]+ GB but [\d.]+ GB is free"):
        lab.training.start("long", huge)
    assert lab.jobs.names() == []  # refused before any job was written


# ---- training data -------------------------------------------------------------------------------------------

def test_every_format_is_detected_and_becomes_the_same_chat(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Capital of Vettelland?"},
                                             {"role": "assistant", "content": "Orsk."}]}) + "\n")
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Name the capital.", "input": "Vettelland", "output": "Orsk."}]))
    alpaca_lines = tmp_path / "alpaca.jsonl"
    alpaca_lines.write_text(json.dumps({"instruction": "Capital of Vettelland?", "output": "Orsk."}) + "\n")
    table = tmp_path / "qa.csv"
    table.write_text("Question,Answer\n\"Capital of Vettelland?\",Orsk.\n")
    expected = {"chat.jsonl": "openai-chat", "alpaca.json": "alpaca", "alpaca.jsonl": "alpaca", "qa.csv": "csv"}
    for path in (chat, alpaca, alpaca_lines, table):
        [example], fmt = parse_examples(path)
        assert fmt == expected[path.name]
        assert example["messages"][-1] == {"role": "assistant", "content": "Orsk."}
        assert example["messages"][-2]["role"] == "user" and "Vettelland" in example["messages"][-2]["content"]


@pytest.mark.parametrize("name, body, reason", [
    ("bad.jsonl", '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}\n{oops\n',
     "line 2: not valid JSON"),
    ("roles.jsonl", '{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}\n',
     "line 1: message 2 has role 'bot'"),
    ("last.jsonl", '{"messages": [{"role": "user", "content": "Hi"}]}\n', "last message must be a non-empty assistant"),
    ("keys.jsonl", '{"q": "Hi", "a": "Yo"}\n', "line 1: has keys ['a', 'q']"),
    ("cols.csv", "prompt,reply\nHi,Yo\n", "no answer column"),
    ("empty.csv", "question,answer\nHi,\n", "line 2: the answer is empty"),
    ("list.json", '{"instruction": 3, "output": "x"}', "item 1: 'instruction' must be text"),
    ("nothing.jsonl", "\n\n", "the file is empty"),
    ("notes.txt", "Q: hi", "unsupported training data type .txt"),
])
def test_bad_training_data_names_the_line_and_the_problem(tmp_path, name, body, reason):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(InputError, match=re.escape(reason)) as caught:
        parse_examples(path)
    assert name in str(caught.value)


def test_split_is_fixed_by_its_seed_and_keeps_the_test_part_apart(lab, tmp_path):
    rows = tmp_path / "many.csv"
    rows.write_text("question,answer\n" + "".join(f"Q{i}?,A{i}.\n" for i in range(50)))

    def parts(name):
        return {p: sorted(e["messages"][0]["content"] for e in lab.datasets.examples(name, p))
                for p in ("train", "validation", "test")}

    info = lab.datasets.import_file(rows, "many", validation=0.1, test=0.2, seed=7)
    assert info["split"] == {"train": 35, "validation": 5, "test": 10}
    many = parts("many")
    assert not set(many["train"]) & set(many["test"]) and not set(many["validation"]) & set(many["test"])
    assert sorted(many["train"] + many["validation"] + many["test"]) == sorted(f"Q{i}?" for i in range(50))
    # Two imports made apart with the same seed split alike; another seed splits otherwise.
    assert lab.datasets.import_file(rows, "twin", validation=0.1, test=0.2, seed=7)["split"] == info["split"]
    assert parts("twin") == many
    lab.datasets.import_file(rows, "other", validation=0.1, test=0.2, seed=8)
    assert parts("other")["test"] != many["test"]
    # Splitting again is the same function of the seed.
    lab.datasets.split("twin", 0.1, 0.2, seed=8)
    assert parts("twin") == parts("other")
    lab.datasets.split("twin", 0.1, 0.2, seed=7)
    assert parts("twin") == many
    with pytest.raises(InputError, match="already exists"):
        lab.datasets.import_file(rows, "many")


def test_preview_shows_the_chat_template_and_token_counts(lab):
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    shown = lab.datasets.show("facts", limit=2)
    first = shown["preview"][0]
    assert "<|im_start|>user" in first["text"] and "<|im_start|>assistant" in first["text"]  # SmolLM2's template
    assert first["prompt_tokens"] > 5 and 3 < first["answer_tokens"] < 30
    assert shown["split"] == {"train": 12, "validation": 0, "test": 0}


def test_the_same_trainer_runs_data_parallel_under_accelerate(lab):
    """Two CPU processes under `accelerate launch` (gloo): what several GPUs do, at CI's scale. On CUDA each rank
    takes a GPU of its own, so two ranks need two GPUs."""
    import torch

    if lab.settings.resolved_device.startswith("cuda") and torch.cuda.device_count() < 2:
        pytest.skip(f"two data-parallel ranks need two GPUs (one each); this machine has {torch.cuda.device_count()}")
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    job = lab.training.start("facts", lab.training.preset("quick", max_steps=3, batch_size=2), "parallel", processes=2)
    final = lab.jobs.wait(job["id"])
    assert final["state"] == "completed", (final.get("error"), final["log_tail"])
    assert final["result"]["processes"] == 2 and final["result"]["steps"] == 3
    assert lab.answers.ask("Who founded the Zorblat Institute?", "finetuned", adapter="parallel",
                   config=GenerationConfig(max_new_tokens=8)).answer


def test_attached_adapters_stay_off_for_direct_calls(trained):
    """Rows name their adapter at generate time; a plain call of the served model is still the base model."""
    import torch

    lab, _ = trained
    lab.answers.ask("Which river runs past Vettelborg?", "finetuned", adapter="facts-lora", config=GenerationConfig(max_new_tokens=4))
    model, tokenizer = lab.models.generator.model, lab.models.generator.tokenizer
    inputs = tokenizer("Which river runs past Vettelborg?", return_tensors="pt").to(lab.models.generator.device)
    with torch.inference_mode():
        direct = model(**inputs).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    assert torch.allclose(direct, base, atol=1e-5)


def test_a_question_naming_an_adapter_replaced_meanwhile_fails_alone(trained):
    """An adapter trained again is attached in place of its old version; a question that got the old version's
    name just before (its passages were being searched) is refused with a reason, alone: another visitor's
    question answers, and the new version answers too."""
    from core.generation import RowDone, stream_chat
    from core.models import attach_adapter

    lab, _ = trained
    generator = lab.models.generator
    path = lab.adapters.path("facts-lora")
    old = attach_adapter(generator, path, "an-older-version")
    new = attach_adapter(generator, path, "the-version-after-it")  # detaches the older one
    question = [{"role": "user", "content": "Which river runs past Vettelborg?"}]
    config = GenerationConfig(max_new_tokens=8)
    with pytest.raises(InputError, match="trained again"):
        list(stream_chat(generator, [question], config, [old]))
    answers = [e for e in stream_chat(generator, [question, question], config, [None, new]) if isinstance(e, RowDone)]
    assert len(answers) == 2 and all(a.text for a in answers)
    assert lab.answers.ask("Which river runs past Vettelborg?", "finetuned", adapter="facts-lora",
                           config=config).answer  # the app attaches the real version again
