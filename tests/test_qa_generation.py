"""Training data generated from a knowledge base: grounded Q&A pairs and RAFT examples."""
import re

import pytest

from conftest import HANDBOOK, SHARED_DATA, write_pdf
from core.errors import InputError
from core.qa_generation import fact_sentences
from core.variants import RAG_SYSTEM_PROMPT

BERKELEY = SHARED_DATA / "pdfs" / "UC_Berkeley_short.pdf"

# A fictional annual report, four PDF pages of fact sentences (with Wikipedia-like footnote marks and the line
# wraps fpdf2 makes), so that the tests below have plenty of chunks and facts without ../shared.
REPORT_PAGES = [
    "The Zorblat Institute opened its second campus in 2004 in the harbour town of Lindqvar.[1] "
    "The Lindqvar campus is run by the geologist Teodor Ambrecht. "
    "Its main building was designed by the architect Sunniva Oderlund in 2002. "
    "The campus library holds 48,000 volumes on river geology. "
    "In 2019 the institute had 412 members of staff across both campuses.[2] "
    "The annual budget was 31 million krona in 2021. "
    "The staff choir is called the Heron Singers and performs every December. "
    "The Lindqvar ferry to the campus leaves the harbour every 40 minutes.",
    "The institute's research vessel is named Pim Two and was launched in 2011. "
    "The vessel was built at the Marnholt shipyard on the river Vel.[3] "
    "Its first expedition mapped the sandbanks of the Oda estuary in 2012. "
    "The expedition was led by the marine biologist Ingrid Solberg-Kaal. "
    "The Quorvin Bridge, which links the two campuses, was designed by Hanne Brandt. "
    "The bridge was opened by the mayor of Vettelborg in 1996. "
    "The Vettelborg observatory was donated to the institute in 1999 by the Ellery family. "
    "Its telescope is a 60 centimetre reflector named Vigil.",
    "The institute publishes a quarterly journal called the Vettelborg Review. "
    "The first issue of the journal appeared in the spring of 1990. "
    "The journal's editor is the historian Arvid Tolleshaug.[4] "
    "The institute awards the Quanz Medal every two years for work on river towns. "
    "The first Quanz Medal was given to the engineer Maris Ekdahl in 1993. "
    "Visitors can tour the Vettelborg campus on the first Saturday of every month. "
    "The visitor centre is located in the old grain store beside the river Oda. "
    "The grain store was restored in 2008 with a grant from the Orsk Foundation.",
    "The institute's archive keeps the letters of Mirela Quanz from 1960 to 1995. "
    "The archive is housed in the cellar of the old customs house in Vettelborg. "
    "Its reading room is open to the public on Thursday afternoons. "
    "The archivist Leopold Varga catalogued the letters between 2014 and 2017.[5] "
    "The institute's orchard grows a pear variety named Vettel Gold. "
    "The orchard was planted by the gardener Selma Rudbeck in 1988. "
    "Every autumn the staff hold a pear festival on the orchard lawn. "
    "The festival's prize for the best pear cake is a copper heron.",
]
# What the knowledge base must at least hold, or the tests below would check less than they say.
MIN_CHUNKS, MIN_FACTS = 8, 30


@pytest.fixture
def kb(lab, handbook, tmp_path):
    report = write_pdf(tmp_path / "annual_report.pdf", REPORT_PAGES)
    lab.kbs.ingest([handbook, report], "docs", chunk_size=64, chunk_overlap=0)
    chunks = lab.kbs.store.listed_chunks("docs")
    facts = sum(len(fact_sentences(c["text"], limit=3)) for c in chunks)
    assert len(chunks) >= MIN_CHUNKS and facts >= MIN_FACTS, (len(chunks), facts)
    return "docs"


def assert_grounded(lab, kb: str, dataset: str) -> set[str]:
    """Every answer is a sentence of the chunk its example cites (footnote marks aside); returns the files cited."""
    chunks = {c["id"]: c for c in lab.kbs.store.listed_chunks(kb)}
    files = set()
    for example in lab.datasets.examples(dataset):
        question, answer = (m["content"] for m in example["messages"])
        source = chunks[example["source"]["chunk_id"]]
        assert " ".join(answer.split()) in " ".join(re.sub(r"\[\d+\]", "", source["text"]).split())
        assert example["source"]["file"] == source["file"] and example["source"]["page"] == source["page"]
        assert question.endswith("?") and not answer.startswith("#") and "[" not in answer
        files.add(source["file"])
    return files


def test_pairs_are_grounded_in_the_chunks_they_cite(lab, kb):
    info = lab.datasets.generate(kb, "pairs", count=12, use_model=False, validation=0, test=0)
    assert info["examples"] == 12 and info["questions_by_template"] == 12
    assert assert_grounded(lab, kb, "pairs") == {"handbook.md", "annual_report.pdf"}  # spread over the files
    pages = {e["source"]["page"] for e in lab.datasets.examples("pairs") if e["source"]["file"] == "annual_report.pdf"}
    assert len(pages) >= 2  # and over the pages


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


@pytest.mark.skipif(not BERKELEY.exists(), reason=f"{BERKELEY} is not there (../shared/data is not beside this "
                                                  "checkout)")
def test_pairs_and_raft_from_a_real_wikipedia_pdf(lab):
    """A real print of a Wikipedia article (infobox, footnote marks, wrapped lines) gives grounded pairs too."""
    lab.kbs.ingest([BERKELEY], "wiki", chunk_size=64, chunk_overlap=0)
    info = lab.datasets.generate("wiki", "wiki-pairs", count=12, use_model=False, validation=0, test=0)
    assert info["examples"] == 12
    assert assert_grounded(lab, "wiki", "wiki-pairs") == {BERKELEY.name}
    raft = lab.datasets.generate("wiki", "wiki-raft", count=12, raft=True, distractors=3, use_model=False,
                                 validation=0, test=0)
    assert raft["examples"] == 12
    for example in lab.datasets.examples("wiki-raft"):
        assert len(re.findall(r"^\[\d+\] \(", example["messages"][1]["content"], flags=re.M)) >= 3


def test_fact_sentences_skip_headings_and_join_wrapped_lines():
    text = "# Leave\nEvery member of staff gets 31 days\nof paid leave per year.\n## Food\nok."
    assert fact_sentences(text) == ["Every member of staff gets 31 days of paid leave per year."]
    assert fact_sentences(HANDBOOK, limit=5)[0].startswith("The Zorblat Institute was founded in 1987")
