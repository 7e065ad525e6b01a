"""Continued pre-training for real: a knowledge base's passages become a text dataset, a job learns every token
of them (loss falling over the run), and the adapter answers in Compare; the wrong method for the data is refused."""
import json

import pytest

from conftest import cli_here
from core.errors import InputError
from core.generation import GenerationConfig


def test_a_knowledge_base_is_read_in_training_and_the_adapter_answers(lab, handbook):
    lab.kbs.ingest([handbook], kb="notes")
    chunks = lab.kbs.fact_chunks("notes")
    trained = cli_here(["train", "--kb", "notes", "--adapter", "notes-read", "--epochs", "4", "--json"],
                       lab.settings.data_dir)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    result = json.loads(trained.stdout)["result"]
    info = lab.datasets.info("notes-text")
    assert (info.kind, info.examples, info.source) == ("text", len(chunks), "knowledge base notes")
    assert lab.datasets.examples("notes-text")[0]["source"]["chunk_id"] in {c["id"] for c in chunks}
    assert result["method"] == "continued" and result["trainer"] == "CpuSFTTrainer"
    losses = [loss for _, loss in result["history"]["train"]]
    assert losses[-1] < losses[0] * 0.9, losses  # it learns the passages' own words
    assert lab.adapters.info("notes-read")["method"] == "continued"
    [[answer]] = lab.answers.compare_many(["Who founded the Zorblat Institute?"], ["finetuned"], adapter="notes-read",
                                          config=GenerationConfig(max_new_tokens=16))
    assert answer.answer and not answer.error

    with pytest.raises(InputError, match="method sft learns from Q&A examples, and this dataset holds passages of text: train it with continued"):
        lab.training.start("notes-text", lab.training.preset("quick", method="sft"))
    with pytest.raises(InputError, match="has no questions to evaluate on"):
        lab.evaluation.items(dataset="notes-text", part="train")
    again = lab.datasets.from_kb("notes")  # made again from the knowledge base as it is now
    assert again["name"] == "notes-text" and again["examples"] == len(chunks)
