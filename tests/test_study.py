"""The study: its questions, its fair split (proved on the saved training sets), its bad-input messages, and (in
test_study_run.py) the whole run, resumed after its runner is killed."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from core.errors import InputError
from core.metrics import normalise
from core.study_plan import fact_examples, overlap_check, raft_examples, split_facts, held_out_items
from core.study_questions import answer_spans, build_facts, echo_question, model_question, question_problem

DEMO = ROOT / "assets" / "demo"


def paragraph_chunks() -> list[dict]:
    """The demo pack's paragraphs as passages: enough of them for a split with several passages a side."""
    chunks = []
    for name in ("handbook.md", "policies.md", "products.md"):
        paragraphs = [p.strip() for p in (DEMO / name).read_text().split("\n\n") if p.strip()]
        chunks += [{"id": f"{name}:{n}", "text": p, "file": name, "page": ""} for n, p in enumerate(paragraphs)]
    return chunks


def test_questions_have_short_answers_found_in_their_passage_and_do_not_give_them_away():
    facts, stats = build_facts(paragraph_chunks())
    by_answer = {f.answer: f for f in facts}
    assert {"1911", "Flicker", "27 days", "Maren Okonjo-Vale", "41 hours", "180 grams"} <= set(by_answer)
    assert by_answer["27 days"].question == "Every employee gets how many days of paid leave per year?"
    assert by_answer["1911"].question.startswith("The Brindlewick Lantern Company was founded in which year")
    passages = {c["id"]: c["text"] for c in paragraph_chunks()}
    for fact in facts:
        assert normalise(fact.answer) in normalise(passages[fact.chunk_id])
        assert normalise(fact.answer) not in normalise(fact.question), fact.question
        assert fact.question not in fact.phrasings and "___" in fact.phrasings[0]
    assert stats["kept"] == len(facts) and stats["candidates"] >= len(facts)
    assert sum(stats["dropped"].values()) == stats["candidates"] - stats["kept"]


def test_the_filter_says_why_a_question_is_unusable():
    sentence = "The Gullwing lantern burns for 41 hours on one filling of oil."
    assert question_problem("How long does the Gullwing burn on 41 hours?", "41 hours", sentence) == \
        "gives the answer away"
    assert question_problem("What is it?", "41 hours", sentence) == "too short or too long"
    assert question_problem("Who painted the famous ceiling fresco?", "41 hours", sentence) == "not about the sentence"
    assert question_problem("How long does the Gullwing lantern burn?", "41 hours", sentence) is None
    # Seen from the bundled model: a possessive or a hyphenated number gives the answer away too, and a question
    # about the sentence is not a question about the fact.
    assert question_problem("What is the chief executive Maren Okonjo-Vale's name?", "Maren Okonjo-Vale",
                            "The chief executive is Maren Okonjo-Vale.") == "gives the answer away"
    assert question_problem("What would a 180-gram pocket ember look like?", "180 grams",
                            "The Pocket Ember weighs 180 grams.") == "gives the answer away"
    assert question_problem("Can you provide a question about the head office in Port Ellery?",
                            "14 Candlewharf Lane", "The head office is at 14 Candlewharf Lane, Port Ellery.") == \
        "about the sentence, not the fact"
    assert model_question('A question about this sentence would be: "What year did the company begin?"') == \
        "What year did the company begin?"
    start, end, kind = answer_spans(sentence)[0]
    assert (sentence[start:end], kind) == ("41 hours", "count")
    assert echo_question(sentence, start, end, kind) == "The Gullwing lantern burns for how many hours on one " \
                                                        "filling of oil?"


def test_the_split_keeps_every_test_question_and_every_new_passage_out_of_training():
    chunks = paragraph_chunks()
    passages = {c["id"]: c for c in chunks}
    facts, _ = build_facts(chunks)
    by_id = {f.id: f for f in facts}
    split = split_facts(facts, seed=3)
    assert not set(split["trained_chunks"]) & set(split["new_chunks"])
    assert len(split["trained"]) >= 3 and len(split["new"]) >= 3
    trained = [by_id[i] for i in split["trained"]]
    items = held_out_items(by_id, split)
    sets = {"facts": fact_examples(trained),
            "raft": raft_examples(trained, passages, split["trained_chunks"], shown=2, seed=3)}
    # Checked here directly on the examples, not only through overlap_check.
    every_message = [normalise(m["content"]) for examples in sets.values() for e in examples for m in e["messages"]]
    for item in items:
        assert not any(normalise(item["question"]) in text for text in every_message), item["question"]
    for chunk_id in split["new_chunks"]:
        assert not any(normalise(passages[chunk_id]["text"]) in text for text in every_message), chunk_id
    assert all("Passages:\n[1]" in e["messages"][-2]["content"] for e in sets["raft"])
    assert {len(e["source"]["passages"]) for e in sets["raft"]} == {2}  # as many as RAG shows
    shown = [e for e in sets["raft"] if e["source"]["oracle_shown"]]
    assert 0 < len(shown) < len(sets["raft"])  # RAFT's two kinds of example
    assert all(f'says: "' in e["messages"][-1]["content"] for e in shown)
    check = overlap_check(items, sets, passages)
    assert check["fair"] and check["test_questions_in_training"] == 0 and check["new_fact_passages_in_training"] == 0
    # The check can fail: a test question slipped into training is found.
    leaked = {**sets, "facts": sets["facts"] + [{"messages": [{"role": "user", "content": items[-1]["question"]},
                                                               {"role": "assistant", "content": "x"}]}]}
    assert overlap_check(items, leaked, passages)["test_questions_in_training"] == 1
    leaked = {**sets, "raft": raft_examples(trained, passages, chunks and [c["id"] for c in chunks], 3, 0.0, seed=3)}
    assert overlap_check(items, leaked, passages)["new_fact_passages_in_training"] > 0


def test_a_knowledge_base_too_small_for_a_fair_split_is_refused_with_what_it_needs():
    facts, _ = build_facts([{"id": "one", "text": (DEMO / "handbook.md").read_text(), "file": "handbook.md",
                             "page": ""}])
    with pytest.raises(InputError, match=r"at least 2 passages with facts and 3 facts on each side.*gave \d+ usable "
                                         r"facts in 1 passage"):
        split_facts(facts)


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "LAB_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_study_bad_input_gets_clear_messages_and_starts_nothing(lab, data_dir, tmp_path, handbook):
    lab.kbs.ingest([handbook], kb="one")
    lab.kbs.ingest([handbook, DEMO / "policies.md"], kb="small")
    bad_qa = tmp_path / "qa.jsonl"
    bad_qa.write_text('{"question": "Who?", "answer": "Pim"}\n{"question": "Where?"\n')
    with pytest.raises(InputError, match="line 2: not valid JSON"):
        lab.studies.start("small", qa_file=bad_qa)
    with pytest.raises(InputError, match="between 5 and 1440 minutes.*no time to train"):
        lab.studies.start("small", minutes=2)
    with pytest.raises(InputError, match="no such knowledge base"):
        lab.studies.start("nothing-here")
    with pytest.raises(InputError, match="needs at least 2 passages .*this knowledge base has 1: add documents"):
        lab.studies.start("one")
    assert lab.studies.names() == []
    result = run_cli(data_dir, "study", "run", "--kb", "small", "--minutes", "1", "--json")
    assert result.returncode == 1
    assert "between 5 and 1440 minutes" in json.loads(result.stdout)["error"]
    result = run_cli(data_dir, "study", "show", "nope")
    assert result.returncode == 1 and re.search(r"no such study \(existing: none yet", result.stderr)


def test_your_own_questions_are_tested_in_your_wording_and_trained_on_their_passage_sentence(lab, tmp_path, handbook):
    from types import SimpleNamespace

    from core.study_stages import facts_from_qa_file

    lab.kbs.ingest([handbook], kb="own")
    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nWho founded the Zorblat Institute?,Mirela Quanz\n"
                  "What does the cafeteria serve on Tuesdays?,cardamom porridge\n"
                  "What is the capital of France?,Paris\n")
    chunks = {c["id"]: c for c in lab.kbs.fact_chunks("own")}
    facts, stats = facts_from_qa_file(SimpleNamespace(lab=lab, study={"kb": "own"}), str(qa), chunks)
    assert stats == {"pairs": 3, "kept": 2, "dropped": {"answer not found in the knowledge base": 1}}
    founder = facts[0]
    assert founder.question == "Who founded the Zorblat Institute?" and founder.answer == "Mirela Quanz"
    assert founder.sentence.startswith("The Zorblat Institute was founded in 1987 by Mirela Quanz")
    assert founder.phrasings == ["Fill in the blank: The Zorblat Institute was founded in 1987 by ___ in the town of "
                                 "Vettelborg."]
    assert founder.chunk_id in chunks
