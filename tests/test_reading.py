"""What RAG reads: passages ranked by their sentence nearest the question, as many as suit the model, and a plain
"not in your documents" when nothing retrieved is close to the question. Real store, real bundled models."""
import json
import os
from pathlib import Path

from conftest import cli_here
from core.demo import DEMO_DIR
from core.config import load_settings
from core.generation import GenerationConfig
from core.lab import Lab
from core.models import parameter_count
from core.reading import NOT_IN_DOCUMENTS, SMALL_MODEL_PARAMETERS, read, sentences
from core.retrieval import Hit

SHORT = GenerationConfig(max_new_tokens=24)


def hit(text: str, score: float = 0.5, n: int = 0) -> Hit:
    return Hit(text, "notes.md", "", score, f"chunk-{n}")


def test_sentences_split_at_ends_and_blank_lines_not_inside_numbers():
    text = "The river is 3.5 km long. It floods in May!\n\nThe ferry costs 2 krona? Yes. \"Quoted start.\" end"
    assert sentences(text) == ["The river is 3.5 km long.", "It floods in May!", "The ferry costs 2 krona?", "Yes.",
                               "\"Quoted start.\" end"]


def test_the_passage_with_the_sentence_nearest_the_question_is_read_first(lab):
    # The first passage is about the harbour in general (closer as a whole); the second holds the one sentence
    # that answers, among unrelated ones.
    general = hit("The harbour of Vettelborg is busy. Ships of the harbour bring grain. The harbour has cranes and "
                  "quays along the harbour wall, and the harbour master keeps the harbour records.", 0.6, 1)
    answering = hit("Bread is baked at dawn. The harbour fee for a small boat is 12 krona per night. Goats graze "
                    "on the hills.", 0.4, 2)
    reading = read("How much is the harbour fee for a small boat?", [general, answering], lab.models.encode, 1, 0.5)
    assert [h.chunk_id for h in reading.shown] == ["chunk-2"] and [h.chunk_id for h in reading.others] == ["chunk-1"]
    assert reading.covered and reading.best_similarity > 0.5
    both = read("How much is the harbour fee for a small boat?", [general, answering], lab.models.encode, 0, 0.5)
    assert [h.chunk_id for h in both.shown] == ["chunk-2", "chunk-1"] and both.others == []


def test_sentences_read_again_are_not_encoded_again(lab):
    """The passages an evaluation's questions find recur from question to question: their sentences' vectors are
    kept, so a second question over the same passages encodes only itself, with the ranking and vectors unchanged."""
    import numpy as np

    cargo = {"Albatross": "salted herring", "Heron": "oak timber", "Kestrel": "wool bales", "Plover": "lamp oil"}
    passages = [hit(f"The {ship} left the harbour of Quellmark at dawn. Its hold carried {load}. The crew sang on "
                    "the quay.", 0.5, n) for n, (ship, load) in enumerate(cargo.items())]
    from core import kept_vectors

    kept_vectors.forget()  # what earlier tests kept
    embedder = lab.models.embedder
    encoded: list[str] = []
    real = embedder.encode

    def counting(texts, **kwargs):  # the real embedder, with the texts it is given written down
        encoded.extend(texts)
        return real(texts, **kwargs)

    embedder.encode = counting
    try:
        first = read("What did the Kestrel carry in its hold?", passages, lab.models.encode, 1, 0.3)
        before = len(encoded)
        second = read("Which ship carried lamp oil?", passages, lab.models.encode, 1, 0.3)
        again = lab.models.encode(["Its hold carried oak timber."])
    finally:
        del embedder.encode
    # The question and each passage's sentences (the last one is the same in all four) the first time; then only
    # the new question.
    assert len(encoded) - 1 == before >= 1 + 2 * len(passages) and encoded[before:] == ["Which ship carried lamp oil?"]
    assert first.shown[0].chunk_id == "chunk-2" and second.shown[0].chunk_id == "chunk-3"
    fresh = real(["Its hold carried oak timber."], normalize_embeddings=True, convert_to_numpy=True)
    assert np.allclose(again, fresh, atol=1e-5)


def demo_documents() -> list[Path]:
    return sorted(p for p in DEMO_DIR.glob("*.md") if p.name != "README.md")


def test_the_bundled_model_reads_one_passage_and_the_rest_are_listed_unread(lab):
    lab.kbs.ingest(demo_documents())
    assert parameter_count(lab.models.generator.model) < SMALL_MODEL_PARAMETERS
    answer = lab.answers.ask("Who founded the Brindlewick Lantern Company?", "rag", config=SHORT, top_k=4)
    assert "Thackery" in answer.answer
    read_flags = [s["read"] for s in answer.sources]
    assert len(read_flags) >= 3 and read_flags[0] is True and read_flags.count(True) == 1, read_flags
    assert "Thackery" in answer.sources[0]["text"]
    more = lab.answers.ask("Who founded the Brindlewick Lantern Company?", "rag", config=SHORT, top_k=4,
                           read_passages=3)
    assert [s["read"] for s in more.sources] == [True] * 3 + [False] * (len(more.sources) - 3)


def test_a_question_the_documents_do_not_cover_is_said_so_plainly(lab, handbook):
    lab.kbs.ingest([handbook])
    answers = {a.variant: a for a in lab.answers.compare("What is the boiling point of mercury?", ["base", "rag"],
                                                        config=SHORT)}
    rag = answers["rag"]
    assert rag.answer == NOT_IN_DOCUMENTS and rag.timings["new_tokens"] == 0
    assert rag.sources and not any(s["read"] for s in rag.sources)  # the nearest passages are still listed
    assert answers["base"].answer and answers["base"].answer != NOT_IN_DOCUMENTS  # base answers as ever
    # The threshold is a setting: 0 answers from whatever was found.
    anyway = lab.answers.ask("What is the boiling point of mercury?", "rag", config=SHORT, min_relevance=0)
    assert anyway.answer != NOT_IN_DOCUMENTS and anyway.timings["new_tokens"] > 0
    # A question the handbook answers is not refused.
    assert lab.answers.ask("How many days of paid leave do staff get?", "rag", config=SHORT).answer != NOT_IN_DOCUMENTS


def test_a_follow_up_question_is_searched_with_the_one_before(lab, handbook):
    lab.kbs.ingest([handbook])
    first = lab.answers.ask("Who founded the Zorblat Institute?", "rag", config=SHORT)
    history = {"rag": [{"role": "user", "content": "Who founded the Zorblat Institute?"},
                       {"role": "assistant", "content": first.answer}]}
    alone = lab.answers.ask("In which year?", "rag", config=SHORT)
    follow = lab.answers.ask("In which year?", "rag", config=SHORT, history=history)
    assert alone.answer == NOT_IN_DOCUMENTS  # on its own it names nothing in the documents
    assert "1987" in follow.answer and "1987" in follow.sources[0]["text"]


def test_cli_reading_flags(data_dir):
    assert cli_here(["ingest", *map(str, demo_documents())], data_dir).returncode == 0
    done = cli_here(["ask", "Who founded the Brindlewick Lantern Company?", "--read-passages", "2",
                     "--max-new-tokens", "16", "--top-k", "3", "--json"], data_dir)
    assert done.returncode == 0, done.stderr
    assert [s["read"] for s in json.loads(done.stdout)["sources"]] == [True, True, False]
    refused = cli_here(["ask", "What is the boiling point of mercury?", "--max-new-tokens", "16"], data_dir)
    assert refused.returncode == 0 and NOT_IN_DOCUMENTS in refused.stdout
    assert "not shown to the model" in refused.stdout
    for flags, wanted in ((["--read-passages", "-1"], "passages to read must be 0"),
                          (["--min-relevance", "1.5"], "a similarity from 0 to 1, not 1.5")):
        bad = cli_here(["ask", "Who founded the Brindlewick Lantern Company?", *flags], data_dir)
        assert bad.returncode != 0 and wanted in bad.stderr, bad.stderr


def test_a_cross_encoder_in_lab_rerank_model_orders_the_passages(tmp_path, data_dir, handbook):
    """LAB_RERANK_MODEL: a sentence-transformers cross-encoder ranks the passages (a small one built here from
    the bundled embedder's tokenizer, with random weights: the order must be its scores' order, whatever they are)."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from core.models import bundled_embedder_dir

    torch.manual_seed(3)
    folder = tmp_path / "tiny-cross-encoder"
    tokenizer = AutoTokenizer.from_pretrained(bundled_embedder_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    settings = load_settings(data_dir=data_dir, model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"]),
                             rerank_model=str(folder), min_relevance=0.0)
    towns = ["Vettelborg", "Ardmere", "Quillon", "Saltreach", "Morrow", "Fenwick"]
    guide = tmp_path / "guide.md"
    guide.write_text("\n\n".join(
        f"## {town}\n" + f"The market of {town} opens at dawn and sells river fish, wool and lamp oil. " * 14
        for town in towns))
    lab = Lab(settings)
    lab.kbs.ingest([guide])
    question = "What does the market sell?"
    config = GenerationConfig(max_new_tokens=4)
    answer = lab.answers.ask(question, "rag", config=config, top_k=5, read_passages=5)
    texts = [s["text"] for s in answer.sources]
    assert len(texts) >= 4
    scores = CrossEncoder(str(folder)).predict([(question, t) for t in texts])
    assert list(scores) == sorted(scores, reverse=True), scores
    plain = Lab(settings.with_(rerank_model=None)).answers.ask(question, "rag", config=config, top_k=5,
                                                              read_passages=5)
    assert [s["text"] for s in plain.sources] != texts  # the cross-encoder, not the sentence ranking, decided
