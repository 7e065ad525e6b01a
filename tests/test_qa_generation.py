"""Training data generated from a knowledge base: grounded Q&A pairs and RAFT examples."""
import re

import pytest

from conftest import HANDBOOK, SHARED_DATA
from core.errors import InputError
from core.qa_generation import fact_sentences
from core.variants import RAG_SYSTEM_PROMPT

BERKELEY = SHARED_DATA / "pdfs" / "UC_Berkeley_short.pdf"


@pytest.fixture
def kb(lab, handbook):
    paths = [handbook] + ([BERKELEY] if BERKELEY.exists() else [])
    lab.kbs.ingest(paths, "docs", chunk_size=64, chunk_overlap=0)
    return "docs"


def test_pairs_are_grounded_in_the_chunks_they_cite(lab, kb):
    info = lab.datasets.generate(kb, "pairs", count=12, use_model=False, validation=0, test=0)
    assert info["examples"] == 12 and info["questions_by_template"] == 12
    chunks = {c["id"]: c for c in lab.kbs.store.listed_chunks(kb)}
    for example in lab.datasets.examples("pairs"):
        question, answer = (m["content"] for m in example["messages"])
        source = chunks[example["source"]["chunk_id"]]
        assert " ".join(answer.split()) in " ".join(re.sub(r"\[\d+\]", "", source["text"]).split())
        assert example["source"]["file"] == source["file"] and question.endswith("?")
        assert not answer.startswith("#")


def test_the_bundled_model_writes_some_of_the_questions(lab, kb):
    info = lab.datasets.generate(kb, "model-pairs", count=8, validation=0, test=0)
    assert info["questions_by_model"] >= 1, info
    for example in lab.datasets.examples("model-pairs"):
        assert example["messages"][0]["content"].endswith("?")


def test_raft_examples_mix_oracle_and_distractors_like_the_rag_prompt(lab, kb):
    info = lab.datasets.generate(kb, "raft", count=30, raft=True, distractors=3, oracle_share=0.8, use_model=False,
                                validation=0, test=0)
    examples = lab.datasets.examples("raft")
    assert info["format"] == "raft" and len(examples) == info["examples"] >= 20
    chunks = {c["id"]: c for c in lab.kbs.store.listed_chunks(kb)}
    with_oracle = 0
    for example in examples:
        system, user, target = example["messages"]
        assert system == {"role": "system", "content": RAG_SYSTEM_PROMPT}
        assert user["content"].startswith("Passages:\n[1] (") and "\n\nQuestion: " in user["content"]
        passages = re.findall(r"^\[\d+\] \(", user["content"], flags=re.M)
        oracle_shown = example["source"]["oracle_shown"]
        assert len(passages) == 3 + oracle_shown
        assert (chunks[example["source"]["chunk_id"]]["text"] in user["content"]) == oracle_shown
        assert all(chunks[d]["text"] in user["content"] for d in example["source"]["distractors"])
        assert f'says: "{example["gold"]}"' in target["content"] and target["content"].endswith(example["gold"])
        with_oracle += oracle_shown
    assert 0.6 <= with_oracle / len(examples) <= 0.95  # P = 0.8


def test_generation_refuses_bad_requests_clearly(lab, kb):
    with pytest.raises(InputError, match="no such knowledge base"):
        lab.datasets.generate("missing", "x")
    with pytest.raises(InputError, match="distractors must be between 0 and"):
        lab.datasets.generate(kb, "x", count=3, raft=True, distractors=100000, use_model=False)
    with pytest.raises(InputError, match="oracle share"):
        lab.datasets.generate(kb, "x", count=3, raft=True, oracle_share=1.5, use_model=False)
    assert "x" not in lab.datasets.names()


def test_fact_sentences_skip_headings_and_join_wrapped_lines():
    text = "# Leave\nEvery member of staff gets 31 days\nof paid leave per year.\n## Food\nok."
    assert fact_sentences(text) == ["Every member of staff gets 31 days of paid leave per year."]
    assert fact_sentences(HANDBOOK, limit=5)[0].startswith("The Zorblat Institute was founded in 1987")
