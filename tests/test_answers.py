"""Answers from the real bundled model: RAG uses and cites the document, base does not have it."""
import pytest

from core.errors import InputError, LabError
from core.generation import GenerationConfig, RowDone, loop_start, stream_chat

SHORT = GenerationConfig(max_new_tokens=40)


def test_rag_answers_from_the_document_and_base_does_not(lab, handbook):
    lab.kbs.ingest([handbook])
    answers = {a.variant: a for a in lab.answers.compare("Who founded the Zorblat Institute?", ["base", "rag"], config=SHORT)}
    rag, base = answers["rag"], answers["base"]
    assert "Quanz" in rag.answer
    assert rag.sources and rag.sources[0]["file"] == "handbook.md"
    assert "Quanz" not in base.answer and base.sources == []
    for answer in (rag, base):
        t = answer.timings
        assert 0 < t["ttft_ms"] <= t["total_ms"] and t["new_tokens"] > 0 and t["tokens_per_s"] > 0
    assert rag.timings["retrieval_ms"] > 0 and "retrieval_ms" not in base.timings


def test_stream_order_sources_then_text_then_done(lab, handbook):
    lab.kbs.ingest([handbook])
    events = list(lab.answers.ask_stream("How many days of paid leave do staff get?", ["base", "rag"], config=SHORT))
    kinds = {name: [e.kind for e in events if e.variant == name] for name in ("base", "rag")}
    assert kinds["rag"][0] == "sources" and kinds["rag"][-1] == "done"
    assert kinds["base"][-1] == "done" and "delta" in kinds["base"]
    streamed = "".join(e.text for e in events if e.variant == "rag" and e.kind == "delta")
    final = next(e.answer.answer for e in events if e.variant == "rag" and e.kind == "done")
    assert streamed.strip() == final and final


def test_rag_without_documents_explains_and_base_still_answers(lab):
    answers = {a.variant: a for a in lab.answers.compare("What is the capital of France?", ["base", "rag"], config=SHORT)}
    assert "no documents" in answers["rag"].error or "no such knowledge base" in answers["rag"].error
    assert answers["base"].error is None and answers["base"].answer


def test_weak_passages_are_left_out(lab, handbook, tmp_path):
    unrelated = tmp_path / "tomatoes.txt"
    unrelated.write_text("Tomatoes grow best in warm soil with plenty of sun and regular watering.")
    lab.kbs.ingest([handbook, unrelated])
    answer = lab.answers.ask("Who founded the Zorblat Institute?", "rag", config=GenerationConfig(max_new_tokens=8))
    assert [s["file"] for s in answer.sources] == ["handbook.md"]


def test_bad_questions_and_variants(lab, handbook):
    lab.kbs.ingest([handbook])
    with pytest.raises(InputError, match="empty"):
        lab.answers.ask("   ", "rag")
    with pytest.raises(InputError, match="limit"):
        lab.answers.ask("why? " * 2000, "rag")
    with pytest.raises(InputError, match="unknown variant"):
        lab.answers.ask("hello", "telepathy")
    with pytest.raises(LabError, match="no such knowledge base"):
        lab.answers.ask("hello", "rag", kb="missing")


def test_non_english_question_is_answered(lab, handbook):
    lab.kbs.ingest([handbook])
    answer = lab.answers.ask("¿Quién fundó el Instituto Zorblat? 谁创立了它？", "rag", config=GenerationConfig(max_new_tokens=16))
    assert answer.answer and answer.sources


def test_prefill_groups_short_similar_prompts_on_cpu_and_everything_on_gpu():
    from core.generation import plan_batches

    assert plan_batches([30, 1000], "cpu") == [[0], [1]]  # padding 30 -> 1000 would redo a long prefill
    # Short prompts share a prefill; long ones go one at a time (no gain together), shortest first.
    assert plan_batches([30, 1000, 35, 990], "cpu") == [[0, 2], [3], [1]]
    assert plan_batches([200, 210], "cpu") == [[0, 1]]
    assert plan_batches([500, 520], "cpu") == [[0], [1]]
    assert plan_batches([30, 1000], "cuda") == [[0, 1]]


def test_side_by_side_answers_match_single_answers(lab, handbook):
    """Batching and grouping must not change what each variant says (greedy decoding)."""
    lab.kbs.ingest([handbook])
    question = "What is the mascot of the Zorblat Institute?"
    alone = {v: lab.answers.ask(question, v, config=SHORT).answer for v in ("base", "rag")}
    together = {a.variant: a.answer for a in lab.answers.compare(question, ["base", "rag"], config=SHORT)}
    assert together == alone


def test_many_questions_in_one_batch_answer_as_each_question_alone(lab, handbook):
    """compare_many (an evaluation's batches) gives each question's columns what compare gives them one question at
    a time (test_evaluation.py compares every batched question of a run); an answer that needs no model (passages
    that do not answer) comes back in its place."""
    from core.reading import NOT_IN_DOCUMENTS

    lab.kbs.ingest([handbook])
    questions = ["What is the mascot of the Zorblat Institute?", "Who founded the Zorblat Institute?",
                 "How many days of paid leave does staff get?", "What is the boiling point of tungsten?"]
    finished = []
    together = lab.answers.compare_many(questions, ["base", "rag"], config=SHORT, on_done=finished.append)
    assert [[(a.question, a.variant) for a in q] for q in together] == [[(q, "base"), (q, "rag")] for q in questions]
    assert sorted(id(a) for a in finished) == sorted(id(a) for q in together for a in q)  # each reported once
    assert all(a.answer and not a.error for q in together for a in q)
    assert together[3][1].answer == NOT_IN_DOCUMENTS and together[3][1].timings["new_tokens"] == 0
    alone = lab.answers.compare(questions[1], ["base", "rag"], config=SHORT)
    if lab.models.generator.device == "cpu":  # a bigger batch rounds like a smaller one (fp32, or bf16 row by row)
        assert [a.answer for a in alone] == [a.answer for a in together[1]]
    assert "Quanz" in together[1][1].answer and "Quanz" not in together[1][0].answer


def test_a_stopped_batch_marks_what_it_did_not_finish(lab):
    from core.answers import STOPPED

    done = []
    answers = lab.answers.compare_many(["Tell me a very long story.", "Hi"], ["base"],
                                       config=GenerationConfig(max_new_tokens=200), on_done=done.append,
                                       should_stop=lambda: len(done) >= 1)
    assert len(done) == 1 and not done[0].error
    assert [a.error for q in answers for a in q if a is not done[0]] == [STOPPED]


def test_closing_a_stream_stops_generation_and_frees_the_model(lab):
    import time

    from core.generation import stream_chat

    stream = stream_chat(lab.models.generator, [[{"role": "user", "content": "Tell me a very long story."}]],
                         GenerationConfig(max_new_tokens=400))
    for count, _ in enumerate(stream):
        if count == 3:
            break
    t0 = time.perf_counter()
    stream.close()  # what Gradio does when a user cancels or leaves
    next_answer = lab.answers.ask("Hi", "base", config=GenerationConfig(max_new_tokens=4))
    assert next_answer.answer and time.perf_counter() - t0 < 10  # not ~40 s of the abandoned 400 tokens


def test_loop_start_cuts_at_the_second_copy_of_a_thrice_repeated_run():
    assert loop_start(list(range(40))) is None
    assert loop_start([1, 2, 3, 4, 5, 6] * 2) is None  # twice is not yet a loop
    assert loop_start([1, 2, 3, 4, 5, 6, 9] * 2 + [1, 2, 3, 4, 5, 6]) == 7  # the first copy and its tail stay


def test_an_answer_that_goes_round_in_circles_stops_where_the_loop_began(lab):
    """The bundled model lists the same made-up compound over and over until the token limit; with the loop stop
    (the default) it ends after the first copy, on a whole line, having spent fewer tokens. In fp32: in bf16 it
    numbers its copies (1., 2., ...), which is not a loop of the same tokens."""
    from core.lab import Lab

    generator = Lab(lab.settings.with_(decode_weights="fp32")).models.generator
    conversation = [[{"role": "user", "content": "List the chemical stereoisomers of the ring."}]]

    def reply(stop_loops: bool) -> RowDone:
        config = GenerationConfig(max_new_tokens=96, stop_loops=stop_loops)
        return next(e for e in stream_chat(generator, conversation, config) if isinstance(e, RowDone))

    plain, stopped = reply(False), reply(True)
    if loop_start(generator.tokenizer(plain.text, add_special_tokens=False)["input_ids"]) is None:
        pytest.skip(f"on {generator.device} this prompt does not loop: {plain.text!r}")  # measured: it does on CPU
    assert GenerationConfig().stop_loops is True
    assert stopped.stats.new_tokens < plain.stats.new_tokens == 96
    assert plain.text.startswith(stopped.text) and plain.text[len(stopped.text)] == "\n", stopped.text
    assert loop_start(generator.tokenizer(stopped.text, add_special_tokens=False)["input_ids"]) is None
