"""Evaluation: offline metrics with known values, and real runs of the bundled model, saved, cancelled,
reopened and exported."""
import csv
import json

import pytest

from conftest import HANDBOOK, cli_here
from core import metrics
from core.errors import InputError
from core.advisor import Situation
from core.evaluation import overlap_warnings
from core.verdict import verdict
from core.generation import GenerationConfig


def test_answer_metrics_on_known_cases():
    assert metrics.final_answer("Let me think. The answer is: Mirela Quanz [1]. She founded it.") == "Mirela Quanz."
    assert metrics.exact_match("Answer: The Mirela Quanz.", "Mirela Quanz") == 1.0
    assert metrics.exact_match("Mirela Quanz founded it in 1987.", "Mirela Quanz") == 0.0
    assert metrics.token_f1("Mirela Quanz founded it", "Mirela Quanz") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert metrics.contains("It was founded by Mirela Quanz in 1987.", "mirela quanz") == 1.0
    assert metrics.contains("Mirelax Quanzy", "Mirela Quanz") == 0.0  # whole words only
    assert metrics.rouge_l("31 days of leave", "31 days") == pytest.approx(2 * 0.5 * 1 / 1.5)
    # BLEU counts up to 4-grams: a right answer in a sentence around a one- or two-word gold answer scores near 0
    # (sacrebleu's sentence BLEU with effective order; plain BLEU gives exactly 0), which is why chrF is shown.
    assert metrics.bleu("The mascot is Pim.", "Pim") < 0.15 and metrics.chrf("The mascot is Pim.", "Pim") > 0.4
    assert metrics.bleu("Pim", "Pim") == pytest.approx(1.0) == metrics.chrf("Pim", "Pim")
    assert metrics.label_of("Maybe. The evidence is mixed; yes in some.") == "maybe"
    assert metrics.label_of("It depends.") is None
    assert metrics.macro_f1(["yes", "no", None, "yes"], ["yes", "no", "maybe", "no"]) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert metrics.groundedness("Pim is a purple heron", ["The mascot is a purple heron named Pim."]) == 1.0
    assert metrics.groundedness("Pim is a green parrot", ["The mascot is a purple heron named Pim."]) == pytest.approx(1 / 3)
    assert metrics.groundedness("anything", []) is None
    assert metrics.retrieval_ranks(["a.md", "b.md", "c.md"], "b.md") == (1.0, 0.5)
    assert metrics.retrieval_ranks(["a.md"], "z.md") == (0.0, 0.0)
    assert metrics.paired_difference_ci([1, 1, 1, 1], [0, 0, 0, 0]) == (1.0, 1.0, 1.0)
    diff, low, high = metrics.paired_difference_ci([1, 0, 1, 0] * 5, [0, 1, 1, 0] * 5)
    assert diff == 0 and low < 0 < high
    low, high = metrics.bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    assert low < 0.7 < high and 0 <= low and high <= 1


@pytest.fixture
def handbook_items():
    return [
        {"question": "Who founded the Zorblat Institute?", "answer": "Mirela Quanz", "source": "handbook.md"},
        {"question": "In which town was the Zorblat Institute founded?", "answer": "Vettelborg",
         "source": "handbook.md"},
    ]


def test_a_run_scores_saves_and_exports(lab, handbook, handbook_items, tmp_path):
    lab.kbs.ingest([handbook])
    run = lab.evaluation.run(handbook_items, "handbook", ["base", "rag"], kb="default",
                       config=GenerationConfig(max_new_tokens=24))
    assert run["state"] == "completed" and run["done"] == 2 and not run["classify"]
    rag, base = run["summary"]["rag"], run["summary"]["base"]
    assert rag["contains"]["mean"] > base["contains"]["mean"]  # only RAG has read the handbook
    assert rag["hit"]["mean"] == 1.0 and rag["rr"]["mean"] == 1.0  # the handbook is the only file
    assert 0 <= rag["groundedness"]["mean"] <= 1 and "groundedness" not in base
    for metric in ("contains", "f1", "rouge_l", "chrf"):
        assert rag[metric]["low"] <= rag[metric]["mean"] <= rag[metric]["high"]
    assert rag["latency_ms"] > 0 and rag["errors"] == 0
    assert "On these 2 questions: RAG" in verdict(run)
    costs = run["costs"]  # cost beside quality: weights in memory, the index, the search model
    # 135M parameters served on a CPU in fp32, or bf16 where it computes bf16 natively (LAB_DECODE_WEIGHTS=auto), in
    # 16-bit on CUDA (core/models.py load_generator); 22M in the embedder
    import torch

    generator = lab.models.generator
    if generator.device == "cpu" and lab.settings.resolved_decode_weights == "fp32":
        assert generator.model.dtype == torch.float32 and 400 < costs["model_mb"] < 700
    else:
        assert generator.model.dtype in (torch.bfloat16, torch.float16) and 200 < costs["model_mb"] < 350
    assert 50 < costs["embedder_mb"] < 150
    assert costs["index"]["chunks"] == lab.kbs.show("default")["chunks"] and 0 < costs["index"]["mb"] < 1
    assert "Costs: the model's weights take" in verdict(run) and "passages" in verdict(run)

    # The advisor says RAG for facts, and this measurement (RAG 2/2, base 0/2) agrees with it, by name.
    advice = lab.evaluation.advise(Situation(goal="facts", changes="often"))
    assert advice["choice"] == "rag" and advice["measured"] == {
        "run": run["id"], "best": "rag", "clear": True, "verdict": verdict(run), "agrees": True, "note": None}
    assert lab.evaluation.advise(Situation(goal="style", sources="no", changes="rarely"))["measured"]["agrees"] is False
    advised = cli_here(["advise", "--goal", "style", "--json"], lab.settings.data_dir)
    assert advised.returncode == 0 and json.loads(advised.stdout)["measured"]["best"] == "rag", advised.stderr

    reopened = lab.evals.load(run["id"])  # as after a restart
    assert reopened["summary"] == json.loads(json.dumps(run["summary"]))
    assert [r["question"] for r in reopened["results"]] == [i["question"] for i in handbook_items]
    shown = cli_here(["eval", "show", run["id"]], lab.settings.data_dir)
    assert shown.returncode == 0 and "RAG" in shown.stdout and "hit@k" in shown.stdout, shown.stderr
    exported = cli_here(["eval", "export", run["id"], str(tmp_path / "run.csv")], lab.settings.data_dir)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(open(tmp_path / "run.csv")))
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"base", "rag"}
    assert cli_here(["eval", "export", run["id"], str(tmp_path / "run.txt")], lab.settings.data_dir).returncode == 1


def test_a_cancelled_run_keeps_what_it_answered(lab, handbook, handbook_items):
    lab.kbs.ingest([handbook])
    asked = []
    run = lab.evaluation.run(handbook_items, "handbook", ["rag"], kb="default", config=GenerationConfig(max_new_tokens=8),
                       progress=lambda fraction, message: asked.append(message), should_stop=lambda: len(asked) >= 1)
    assert run["state"] == "cancelled" and run["done"] == 1 and asked == ["Question 1/2"]
    assert len(lab.evals.load(run["id"])["results"]) == 1


def test_later_questions_share_a_batch_and_a_cancelled_batch_is_not_kept_half_answered(lab, handbook,
                                                                                     handbook_items):
    from core.evaluation import TIMED_QUESTIONS

    lab.kbs.ingest([handbook])
    items = handbook_items + [{"question": "What does the cafeteria serve on Tuesdays?", "answer": "porridge"},
                              {"question": "What is the institute's mascot?", "answer": "heron"}]
    short = GenerationConfig(max_new_tokens=12)
    run = lab.evaluation.run(items, "handbook", ["base", "rag"], kb="default", config=short)
    assert [r["batch"] for r in run["results"]] == [1] * TIMED_QUESTIONS + [2, 2]
    assert [r["question"] for r in run["results"]] == [i["question"] for i in items]
    for result in run["results"]:  # a batch answers as each question alone does
        alone = lab.answers.compare(result["question"], ["base", "rag"], kb="default", config=short)
        if lab.models.generator.device == "cpu":
            assert {a.variant: a.answer for a in alone} == {v: a["answer"] for v, a in result["answers"].items()}
    # Latency comes from the questions answered alone: the batched ones wait for each other.
    timed = [r["answers"]["rag"]["timings"]["total_ms"] for r in run["results"][:TIMED_QUESTIONS]]
    assert run["summary"]["rag"]["latency_ms"] == pytest.approx(sum(timed) / len(timed))
    # Stopped after the first answer of the shared batch: its questions are left out, not saved half answered.
    messages = []
    run = lab.evaluation.run(items, "handbook", ["base", "rag"], kb="default", config=short,
                             progress=lambda fraction, message: messages.append(message),
                             should_stop=lambda: any(m.startswith("Questions 3-4/4: 1 of") for m in messages))
    assert run["state"] == "cancelled" and run["done"] == TIMED_QUESTIONS == len(run["results"])
    assert len(lab.evals.load(run["id"])["results"]) == TIMED_QUESTIONS


def test_decode_batches_fill_up_to_the_row_limit_after_the_timed_questions():
    from core.evaluation import ROWS_PER_BATCH, question_batches

    assert question_batches(12, 4, "cpu") == [[0], [1], list(range(2, 10)), [10, 11]]
    assert question_batches(12, 4, "cpu", timed=0) == [list(range(8)), list(range(8, 12))]  # e.g. the study's RAFT run
    assert question_batches(3, 1, "cuda:0", timed=0) == [[0, 1, 2]]
    assert max(map(len, question_batches(200, 1, "cuda"))) == ROWS_PER_BATCH["cuda"]


def test_yes_no_maybe_test_sets_get_accuracy_and_macro_f1(lab, tmp_path):
    items = [{"question": "Is water wet?", "answer": "yes"}, {"question": "Is fire cold?", "answer": "no"},
             {"question": "Will it rain in ten years on this day?", "answer": "maybe"}]
    run = lab.evaluation.run(items, "yn", ["base"])
    assert run["classify"] and run["settings"]["max_new_tokens"] == 8
    summary = run["summary"]["base"]
    assert 0 <= summary["correct"]["mean"] <= 1 and 0 <= summary["macro_f1"]["mean"] <= 1
    labels = [r["answers"]["base"]["scores"]["label"] for r in lab.evals.load(run["id"])["results"]]
    assert all(label in ("yes", "no", "maybe", None) for label in labels)


def test_bad_evaluation_requests_are_refused_clearly(lab, tmp_path, handbook_items):
    with pytest.raises(InputError, match="knowledge base"):
        lab.evaluation.run(handbook_items, "x", ["rag"])
    with pytest.raises(InputError, match="no such knowledge base"):
        lab.evaluation.run(handbook_items, "x", ["rag"], kb="missing")
    with pytest.raises(InputError, match="need an adapter"):
        lab.evaluation.run(handbook_items, "x", ["finetuned"])
    with pytest.raises(InputError, match="no questions"):
        lab.evaluation.run([], "x", ["base"])
    with pytest.raises(InputError, match="give one of: a dataset"):
        lab.evaluation.items()
    missing = cli_here(["eval", "show", "nope", "--json"], lab.settings.data_dir)
    assert missing.returncode == 1 and "no such evaluation run" in json.loads(missing.stdout)["error"]


def test_always_yes_on_pubmedqa_matches_the_published_baseline():
    """The data's README: always "yes" scores 55.2% accuracy and macro-F1 23.7 on the 500 test questions."""
    from conftest import SHARED_DATA

    path = SHARED_DATA / "pubmedqa_test" / "questions.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    gold = [json.loads(line)["final_decision"] for line in path.read_text().splitlines() if line]
    assert sum(g == "yes" for g in gold) / len(gold) == pytest.approx(0.552)
    assert metrics.macro_f1(["yes"] * len(gold), gold) == pytest.approx(0.237, abs=5e-4)


def test_questions_generated_from_a_knowledge_base_with_the_overlap_warned(lab, handbook):
    lab.kbs.ingest([handbook])
    items, label = lab.evaluation.items(generate_from="default", limit=3)
    assert label == "generated from default" and len(items) == 3
    assert all(i["chunk_id"] and i["source"] == "handbook.md" and i["answer"] in HANDBOOK for i in items)
    assert lab.datasets.names() == []  # test questions are never saved as training data
    # A dataset generated from the same passages shares them with these questions: said, with the count.
    lab.datasets.generate("default", "hb", count=4, use_model=False, validation=0.0, test=0.25)
    warnings = overlap_warnings(lab.datasets, items, "hb")
    assert any("of 3 test questions were made from passages the adapter trained on (hb)" in w for w in warnings)
    assert overlap_warnings(lab.datasets, items, None) == []
    with pytest.raises(InputError, match="give one of"):
        lab.evaluation.items(dataset="hb", generate_from="default")
    with pytest.raises(InputError, match="no such knowledge base"):
        lab.evaluation.items(generate_from="missing")
    done = cli_here(["eval", "run", "--generate-from", "default", "--limit", "1", "--variants", "rag",
                    "--max-new-tokens", "4", "--json"], lab.settings.data_dir)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["testset"] == "generated from default" and run["kb"] == "default" and run["questions"] == 1


def test_test_questions_seen_in_training_are_counted_in_a_warning(lab):
    """The warning a run with an adapter carries: how many test questions are in the training part of the adapter's
    dataset (compared as normalised text), and none for questions held out of it."""
    from conftest import ROOT
    from core.evaluation import example_to_item

    facts = ROOT / "tests" / "data" / "zorblat_facts.jsonl"
    lab.datasets.import_file(facts, "facts", validation=0, test=0)
    items = [{"question": "who founded the Zorblat institute", "answer": "Quanz"},  # other case, no question mark
             {"question": "Which river runs past Vettelborg?", "answer": "Oda"},
             {"question": "What colour is the roof of the Vettelborg town hall?", "answer": "green"}]
    assert overlap_warnings(lab.datasets, items, "facts") == [
        "2 of 3 test questions are in the adapter's training data (facts): the fine-tuned scores on them measure "
        "recall, not generalisation"]
    assert overlap_warnings(lab.datasets, items[2:], "facts") == []
    assert overlap_warnings(lab.datasets, items, "no-such-dataset") == []
    lab.datasets.import_file(facts, "held-out", validation=0, test=0.25)
    test_part = [example_to_item(e) for e in lab.datasets.examples("held-out", "test")]
    train_part = [example_to_item(e) for e in lab.datasets.examples("held-out", "train")]
    assert len(test_part) == 3 and overlap_warnings(lab.datasets, test_part, "held-out") == []
    assert overlap_warnings(lab.datasets, train_part[:4] + test_part, "held-out")[0].startswith(
        "4 of 7 test questions are in the adapter's training data (held-out)")
