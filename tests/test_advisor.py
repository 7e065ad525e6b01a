"""The advisor's rules: each answer moves the recommendation the way its reason says, and bad answers are refused."""
import itertools

import pytest

from core.advisor import QUESTIONS, Situation, advise
from core.errors import InputError


def test_the_goal_decides_which_side_must_be_there():
    facts_that_change = advise(Situation(changes="often", goal="facts", sources="yes", examples="none",
                                         hardware="cpu"))
    assert facts_that_change["choice"] == "rag" and facts_that_change["evaluate"] == ["base", "rag"]
    assert facts_that_change["points"] == {"rag": 6, "finetune": -3}
    style_only = advise(Situation(changes="rarely", goal="style", sources="no", examples="many", hardware="gpu"))
    assert style_only["choice"] == "finetune" and style_only["cautions"] == []
    assert advise(Situation(changes="sometimes", goal="both", sources="yes", examples="some",
                            hardware="gpu"))["choice"] == "both"
    # Facts with hundreds of examples and a GPU: RAFT training earns its place beside RAG.
    raft = advise(Situation(changes="rarely", goal="facts", sources="no", examples="many", hardware="gpu"))
    assert raft["choice"] == "both" and any("RAFT" in r["reason"] for r in raft["reasons"])


def test_every_combination_gets_reasons_and_fine_tuning_without_examples_is_flagged():
    for combo in itertools.product(*(list(answers) for _, answers in QUESTIONS.values())):
        situation = Situation(*combo)
        advice = advise(situation)
        assert advice["reasons"] and sum(r["points"] for r in advice["reasons"] if r["for"] == "rag") == \
            advice["points"]["rag"]
        if situation.goal == "style":
            assert advice["choice"] != "rag"  # retrieval cannot teach a style
        if advice["choice"] != "rag" and situation.examples == "none":
            assert any("needs examples" in c for c in advice["cautions"])


def test_unknown_answers_are_refused_by_name():
    with pytest.raises(InputError, match="goal must be one of facts, style, both"):
        advise(Situation(goal="speed"))
