"""The comparison arena's engine: one decode batch for all columns, multi-turn columns, blind mode, durable
votes, the leaderboard and the DPO export, with the real bundled model."""
import json

import pytest

from core.arena import ArenaSession
from core.comparison import Comparison
from core.errors import InputError
from core.generation import GenerationConfig, RowDone, stream_chat
from core.votes import ALL_BAD, TIE, VoteStore

SHORT = GenerationConfig(max_new_tokens=16)


# On CUDA the served model is 16-bit, and a batch of other shapes rounds differently from a row alone: greedy decoding
# may then pick the other of two tokens whose logits are this close, and go its own way from there.
NEAR_TIE_LOGITS = 1.0


def parts_only_at_a_near_tie(generator, joint: str, alone_ids, scores) -> bool:
    """Whether the joint answer follows the row-alone greedy tokens up to a step where the alone run's two best
    logits were within NEAR_TIE_LOGITS (or all the way)."""
    decode = generator.tokenizer.decode
    step = len(alone_ids) - 1
    for k in range(len(alone_ids)):
        if not joint.startswith(decode(alone_ids[: k + 1], skip_special_tokens=True)):
            step = k
            break
    best, second = scores[step][0].float().topk(2).values.tolist()
    return best - second <= NEAR_TIE_LOGITS


def test_joint_decode_gives_what_separate_generate_calls_give(lab):
    """Rows of very different lengths are prefilled apart and decoded together; greedy answers must be exactly
    what a plain `generate` gives for each row alone (in fp32 on CPU), including a row that stops early. On CUDA
    (16-bit) a row may part from its alone answer only at a near-tie of the two best tokens."""
    generator = lab.models.generator
    exact = generator.device == "cpu"
    conversations = [
        [{"role": "user", "content": "What is the capital of France? Answer in three words."}],
        [{"role": "user", "content": "Summarise this in one line: " + "the river floods every spring. " * 40}],
        [{"role": "user", "content": "Name three colours."}],
    ]
    plain = GenerationConfig(max_new_tokens=20, stop_loops=False)  # `generate` has no loop stop
    together = {e.row: e for e in stream_chat(generator, conversations, plain) if isinstance(e, RowDone)}
    for row, conversation in enumerate(conversations):
        encoded = generator.tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                          return_tensors="pt", return_dict=True).to(generator.device)
        output = generator.model.generate(**encoded, max_new_tokens=20, do_sample=False, output_scores=not exact,
                                          return_dict_in_generate=True)
        alone_ids = output.sequences[0, encoded["input_ids"].shape[1]:]
        alone = generator.tokenizer.decode(alone_ids, skip_special_tokens=True)
        if exact:
            assert together[row].text == alone, row
        elif together[row].text != alone:
            assert parts_only_at_a_near_tie(generator, together[row].text, alone_ids, output.scores), \
                (row, together[row].text, alone)
    if exact:
        assert together[0].stats.new_tokens < 20  # stopped by its end token, the others went on without it
    assert together[1].stats.prompt_tokens > 5 * together[0].stats.prompt_tokens


def test_sampling_is_repeatable_with_a_seed_and_varies_without(lab):
    conversation = [[{"role": "user", "content": "Invent a name for a cat."}]]
    sampled = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=7)
    first = [e.text for e in stream_chat(lab.models.generator, conversation, sampled) if isinstance(e, RowDone)]
    again = [e.text for e in stream_chat(lab.models.generator, conversation, sampled) if isinstance(e, RowDone)]
    assert first == again
    others = {e.text for seed in range(5) for e in stream_chat(
        lab.models.generator, conversation, GenerationConfig(max_new_tokens=12, temperature=1.0, seed=seed))
        if isinstance(e, RowDone)}
    assert len(others) > 1


def test_each_column_keeps_its_own_conversation(lab, handbook):
    lab.kbs.ingest([handbook])
    session = ArenaSession()
    list(session.ask(lab.answers, lab.quota, "Who founded the Zorblat Institute?", ["base", "rag"], SHORT, kb="default"))
    first_rag = session.columns["rag"].messages[-1]["content"]
    assert "Quanz" in first_rag
    list(session.ask(lab.answers, lab.quota, "In which year?", ["base", "rag"], SHORT, kb="default"))
    for variant in ("base", "rag"):
        column = session.columns[variant]
        assert [m["role"] for m in column.messages] == ["user", "assistant"] * 2
        assert column.history == column.messages  # the model is given the whole conversation next time
    assert session.columns["rag"].history[1]["content"] == first_rag  # its own answer, not the base model's
    assert "1987" in session.columns["rag"].messages[-1]["content"]
    turn = Comparison.from_dict(session.turn)
    assert turn.question == "In which year?" and turn.history["rag"][1]["content"] == first_rag
    # The earlier turn reaches the model: the follow-up prompt is longer than the question alone would be.
    answers = {a["variant"]: a for a in turn.answers}
    alone = lab.answers.compare("In which year?", ["base"], config=SHORT)[0]
    assert answers["base"]["timings"]["prompt_tokens"] > alone.timings["prompt_tokens"] + 10
    session.clear()
    assert session.columns == {} and session.turn is None


def test_blind_mode_hides_names_until_the_vote_and_a_turn_gets_one_vote(lab, handbook):
    lab.kbs.ingest([handbook])
    session = ArenaSession()
    list(session.ask(lab.answers, lab.quota, "What is the mascot of the institute?", ["base", "rag"], SHORT, kb="default", blind=True))
    titles = [session.title(v) for v in session.order]
    assert titles == ["Answer A", "Answer B"]
    assert set(session.labels.values()) == {"base", "rag"} and session.can_vote
    with pytest.raises(InputError, match="vote first"):
        session.comparison()  # an export would name the columns
    vote = session.vote(lab.votes, session.labels["B"], "B cites the handbook")
    assert session.title(session.labels["B"]).startswith("Answer B: ")
    assert vote["blind"] is True and vote["labels"] == session.labels and vote["comment"] == "B cites the handbook"
    with pytest.raises(InputError, match="already voted"):
        session.vote(lab.votes, TIE)
    # Asking one column again gives a new answer set to vote on; greedy settings are sampled for it.
    list(session.ask_again(lab.answers, lab.quota, "base", SHORT, kb="default"))
    assert session.can_vote and "temperature 0.7" in session.columns["base"].note
    assert session.columns["rag"].messages[-1]["content"]  # the other column is untouched
    session.vote(lab.votes, ALL_BAD)
    assert [v["choice"] for v in lab.votes.all()] == [vote["choice"], ALL_BAD]


def test_a_vote_needs_two_answers_and_a_known_choice(lab):
    session = ArenaSession()
    with pytest.raises(InputError, match="ask a question first"):
        session.vote(lab.votes, TIE)
    list(session.ask(lab.answers, lab.quota, "Hi", ["base", "finetuned"], SHORT, kb="default"))  # no adapter: one answer only
    assert "Pick a fine-tuned adapter" in session.columns["finetuned"].messages[-1]["content"]
    assert not session.can_vote
    with pytest.raises(InputError, match="at least two answers"):
        session.vote(lab.votes, "base")
    comparison = Comparison(question="q", answers=[{"variant": "base", "answer": "x"},
                                                   {"variant": "rag", "answer": "y"}])
    with pytest.raises(InputError, match="choose one of"):
        lab.votes.record(comparison, "finetuned")


def _comparison(question: str, kb: str, base: str, rag: str, system_prompt: str | None = None) -> Comparison:
    return Comparison(question=question, kb=kb, settings={"system_prompt": system_prompt},
                      answers=[{"variant": "base", "answer": base}, {"variant": "rag", "answer": rag},
                               {"variant": "finetuned", "answer": "", "error": "no adapter"}])


def test_votes_survive_a_restart_and_become_a_leaderboard_and_dpo_pairs(tmp_path):
    store = VoteStore(tmp_path)
    store.record(_comparison("Who founded it?", "hr", "Nobody knows.", "Mirela Quanz [1]."), "rag")
    store.record(_comparison("Mascot?", "hr", "A lion.", "Pim, a purple heron [1].", "Be brief."), "rag")
    store.record(_comparison("Leave?", "hr", "20 days.", "31 days [1]."), "base")
    store.record(_comparison("Porridge?", "hr", "Oats.", "Cardamom."), TIE)
    store.record(_comparison("Other kb", "legal", "A", "B"), ALL_BAD)
    with open(store.path, "a") as f:
        f.write('{"torn": ')  # a crash in the middle of writing a vote

    reopened = VoteStore(tmp_path)  # what the app sees after a restart
    assert len(reopened.all()) == 5
    board = {r["variant"]: r for r in reopened.leaderboard("hr")}
    assert board["rag"] == {"variant": "rag", "votes": 4, "wins": 2, "ties": 1, "all_bad": 0, "win_rate": 0.5}
    assert board["base"]["wins"] == 1 and board["base"]["win_rate"] == 0.25
    assert "finetuned" not in board  # it failed to answer, so it was never in the running
    assert {r["variant"]: r["all_bad"] for r in reopened.leaderboard()} == {"rag": 1, "base": 1}

    result = reopened.export(tmp_path / "out" / "prefs.jsonl", "dpo", kb="hr")
    rows = [json.loads(line) for line in (tmp_path / "out" / "prefs.jsonl").read_text().splitlines()]
    assert result["rows"] == len(rows) == 3  # the tie gives no pair; the other knowledge base is left out
    assert rows[0] == {"prompt": [{"role": "user", "content": "Who founded it?"}],
                       "chosen": [{"role": "assistant", "content": "Mirela Quanz [1]."}],
                       "rejected": [{"role": "assistant", "content": "Nobody knows."}]}
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert rows[2]["chosen"][0]["content"] == "20 days."
    with pytest.raises(InputError, match="'dpo' or 'jsonl'"):
        reopened.export(tmp_path / "x.jsonl", "csv")


def test_the_dpo_export_is_what_trl_reads(lab, tmp_path):
    """The file loads with `datasets` and TRL turns each row into prompt/chosen/rejected text with the chat
    template, as its DPO trainer does."""
    from datasets import load_dataset
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    store = VoteStore(tmp_path)
    store.record(_comparison("Who founded it?", "hr", "Nobody knows.", "Mirela Quanz."), "rag")
    store.export(tmp_path / "prefs.jsonl")
    dataset = load_dataset("json", data_files=str(tmp_path / "prefs.jsonl"), split="train")
    row = dataset[0]
    assert is_conversational(row)
    text = maybe_apply_chat_template(row, lab.models.generator.tokenizer)
    assert "Who founded it?" in text["prompt"] and text["prompt"].rstrip().endswith("assistant")
    assert text["chosen"].startswith("Mirela Quanz.") and text["rejected"].startswith("Nobody knows.")


def test_comparison_exports_as_markdown_and_json(lab, handbook):
    lab.kbs.ingest([handbook])
    answers = lab.answers.compare("Who founded the Zorblat Institute?", ["base", "rag"], config=SHORT)
    comparison = lab.answers.record("Who founded the Zorblat Institute?", answers, kb="default",
                                settings={"temperature": 0.0})
    markdown = comparison.to_markdown()
    assert "## Base model" in markdown and "## RAG" in markdown and "> [1] handbook.md" in markdown
    assert "tokens/s" in markdown and "Knowledge base: default" in markdown
    data = json.loads(comparison.to_json())
    assert [a["variant"] for a in data["answers"]] == ["base", "rag"]
    assert data["model"] == lab.settings.base_model and data["answers"][1]["sources"][0]["file"] == "handbook.md"


def test_long_and_foreign_questions_do_not_break_a_comparison(lab, handbook):
    lab.kbs.ingest([handbook])
    long_question = "Please tell me about the institute. " * 100 + "Who founded it?"  # ~3,700 characters
    answers = lab.answers.compare(long_question, ["base", "rag"], config=GenerationConfig(max_new_tokens=4))
    assert all(a.answer and not a.error for a in answers)
    answers = lab.answers.compare("Wer hat das Zorblat-Institut gegründet? 誰が設立した？", ["base", "rag"], config=SHORT)
    assert all(a.answer and not a.error for a in answers)
    with pytest.raises(InputError, match="limit is 4000"):
        lab.answers.compare("x" * 4001, ["base"])


def test_generation_settings_out_of_range_are_refused_by_name():
    with pytest.raises(InputError, match="temperature"):
        GenerationConfig(temperature=3).checked()
    with pytest.raises(InputError, match="top-p"):
        GenerationConfig(top_p=0).checked()
    with pytest.raises(InputError, match="answer length"):
        GenerationConfig(max_new_tokens=0).checked()
