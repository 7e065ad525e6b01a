"""Learning from preferences for real: preference files in every layout, the Compare tab's votes as a preference
dataset, and a DPO run (TRL's DPOTrainer, in its own process) that makes the chosen answers more likely than the
rejected ones and moves the model's own greedy answers toward the chosen."""
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import cli_here
from core.comparison import Comparison
from core.datasets import parse_examples
from core.errors import InputError
from core.generation import GenerationConfig

FACTS = Path(__file__).parent / "data" / "zorblat_facts.jsonl"
PAIR = {"prompt": [{"role": "user", "content": "Who founded the Zorblat Institute?"}],
        "chosen": [{"role": "assistant", "content": "Mirela Quanz founded it."}],
        "rejected": [{"role": "assistant", "content": "Nobody knows."}]}


def write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("layout, record", [
    ("conversational", PAIR),
    ("plain", {"prompt": "Who founded the Zorblat Institute?", "chosen": "Mirela Quanz founded it.",
               "rejected": "Nobody knows."}),
    ("implicit-prompt", {"chosen": PAIR["prompt"] + PAIR["chosen"], "rejected": PAIR["prompt"] + PAIR["rejected"]}),
    ("conversational", {**PAIR, "chosen": PAIR["chosen"][0], "rejected": PAIR["rejected"][0]}),  # one message each
])
def test_preference_files_in_every_layout_become_the_same_pairs(tmp_path, layout, record):
    examples, fmt = parse_examples(write(tmp_path / "prefs.jsonl", [record, record]))
    assert examples == [PAIR, PAIR] and fmt == f"preference-{layout}"


def test_a_preference_csv_and_a_system_prompt_are_kept(tmp_path):
    csv = tmp_path / "prefs.csv"
    csv.write_text('prompt,chosen,rejected\n"Who founded the Zorblat Institute?",Mirela Quanz founded it.,Nobody '
                   'knows.\n')
    assert parse_examples(csv) == ([PAIR], "preference-csv")
    system = {"role": "system", "content": "Be brief."}
    examples, _ = parse_examples(write(tmp_path / "s.jsonl", [{**PAIR, "prompt": [system, *PAIR["prompt"]]}]))
    assert examples[0]["prompt"][0] == system


@pytest.mark.parametrize("rows, reason", [
    ([PAIR, "{not json"], "line 2: not valid JSON"),
    ([PAIR, {"prompt": "Q?", "chosen": "A."}], "line 2: has no 'rejected'"),
    ([{"prompt": "Q?", "rejected": "B."}], "line 1: has no 'chosen'"),
    ([PAIR, {"prompt": "Q?", "chosen": "Same.", "rejected": " Same. "}], "line 2: 'chosen' and 'rejected' are the same"),
    ([PAIR, {"prompt": "Q?", "chosen": "", "rejected": "B."}], "line 2: 'chosen' is empty"),
    ([PAIR, {"question": "Q?", "answer": "A."}], "line 2: a Q&A example, but line 1 is a preference pair"),
    ([{"chosen": [{"role": "user", "content": "Q?"}], "rejected": [{"role": "user", "content": "R?"}]}],
     "line 1: 'chosen' and 'rejected' do not start with the same prompt"),
])
def test_bad_preference_files_name_the_line_and_the_problem(tmp_path, rows, reason):
    with pytest.raises(InputError, match=re.escape(reason)):
        parse_examples(write(tmp_path / "bad.jsonl", rows))


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def f1(answer: str, reference: str) -> float:
    common = sum((Counter(words(answer)) & Counter(words(reference))).values())
    return 2 * common / (len(words(answer)) + len(words(reference))) if common else 0.0


def test_votes_train_dpo_which_prefers_the_chosen_answers_and_answers_more_like_them(lab, tmp_path):
    """The user's path: in Compare the base model's answers lose to the right ones; the votes become a preference
    dataset; DPO (auto-picked for it) runs in its own process. Its margin of chosen over rejected rises on the pairs
    it trained on, and the model's own greedy answers move toward the chosen ones. A second run goes on from that
    adapter (its starting margin is where the first ended) and keeps only its own adapter, not DPO's reference."""
    rows = [json.loads(line) for line in FACTS.read_text().splitlines()]
    questions = [row["messages"][0]["content"] for row in rows]
    config = GenerationConfig(max_new_tokens=24)
    base = [answers[0].answer for answers in lab.answers.compare_many(questions, ["base"], config=config)]
    chosen = [row["messages"][1]["content"] for row in rows]
    for question, lost, won in zip(questions, base, chosen):
        comparison = Comparison(question=question, kb="demo", answers=[
            {"variant": "base", "answer": lost}, {"variant": "rag", "answer": won}])
        lab.votes.record(comparison, "rag")
    made = cli_here(["dataset", "from-votes", "--json"], lab.settings.data_dir)
    assert made.returncode == 0, made.stderr
    dataset = json.loads(made.stdout)
    assert (dataset["name"], dataset["kind"], dataset["examples"]) == ("votes", "preference", 12)

    with pytest.raises(InputError, match="method sft learns from Q&A examples, and this dataset holds preference pairs: train it with dpo"):  # the method fits the data
        lab.training.start("votes", lab.training.preset("quick", method="sft"))
    trained = cli_here(["train", "--dataset", "votes", "--adapter", "votes-dpo", "--json"], lab.settings.data_dir)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    result = json.loads(trained.stdout)["result"]
    assert result["method"] == "dpo" and result["steps"] == 9  # 11 training pairs at batch 4 for Quick's 3 epochs
    before, after = result["margins"]["train_before"], result["margins"]["train_after"]
    assert before["pairs"] == 11 and after["mean_margin"] > before["mean_margin"] + 5, result["margins"]
    assert after["chosen_more_likely"] > before["chosen_more_likely"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = EventAccumulator(result["tensorboard"])  # the run's curves, for TensorBoard
    curves.Reload()
    tags = set(curves.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/tokens_per_s", "train/dpo_reward_margin"} <= tags, tags
    assert [event.step for event in curves.Scalars("train/loss")] == list(range(1, 10))
    info = lab.adapters.info("votes-dpo")
    assert (info["method"], info["dataset"], info["settings"]["learning_rate"]) == ("dpo", "votes", 5e-4)

    tuned = [answers[0].answer for answers in lab.answers.compare_many(questions, ["finetuned"], adapter="votes-dpo",
                                                                       config=config)]
    closer = sum(f1(t, c) > f1(b, c) for t, b, c in zip(tuned, base, chosen))
    mean = lambda answers: sum(f1(a, c) for a, c in zip(answers, chosen)) / len(chosen)  # noqa: E731
    assert mean(tuned) > mean(base) + 0.1 and closer >= 7, list(zip(base, tuned))

    again = cli_here(["train", "--dataset", "votes", "--from-adapter", "votes-dpo", "--adapter", "votes-dpo-2",
                      "--max-steps", "1", "--json"], lab.settings.data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    second = json.loads(again.stdout)["result"]
    assert second["from_adapter"] == "votes-dpo"
    assert second["margins"]["train_before"]["mean_margin"] == pytest.approx(after["mean_margin"], abs=0.05)
    saved = lab.adapters.path("votes-dpo-2")
    assert (saved / "adapter_model.safetensors").exists() and not (saved / "ref").exists()


def test_dpo_needs_enough_pairs_and_a_preference_dataset(lab, tmp_path):
    lab.datasets.import_file(write(tmp_path / "few.jsonl", [PAIR] * 3), "few", validation=0, test=0)
    with pytest.raises(InputError, match="at least 4 preference pairs .* has 3"):
        lab.training.start("few", lab.training.preset("quick", "few"))
    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    with pytest.raises(InputError, match=r"method dpo learns from preference pairs .* holds Q&A examples: train "
                                         r"it with sft .* make one from your votes"):
        lab.training.start("facts", lab.training.preset("quick", method="dpo"))
    with pytest.raises(InputError, match="no usable votes yet"):
        lab.datasets.from_votes()
    assert lab.training.preset("quick", "few").learning_rate == 5e-4  # DPO's pace, not SFT's
    assert lab.training.preset("quick", "facts").learning_rate == 2e-3
