"""The advisor: for someone who has not measured anything yet, a few plain questions lead to RAG, fine-tuning or
both, with the reasons. Each reason is a point scored for one side, so the advice can be read back and checked;
once an evaluation exists, its measurement outranks this advice (see Lab.advise)."""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import InputError

# Each question: its answers (value -> words shown), in the order the UI shows them.
QUESTIONS = {
    "changes": ("How often does the information in your documents change?",
                {"often": "Often (every day or week)", "sometimes": "Sometimes (every month or so)",
                 "rarely": "Rarely (a few times a year or less)"}),
    "goal": ("What should the model get better at?",
             {"facts": "Knowing the facts in my documents", "style": "Answering in a certain style, tone or format",
              "both": "Both"}),
    "sources": ("Must answers show where they came from?",
                {"yes": "Yes, people need to check the source", "no": "No"}),
    "examples": ("How many example questions with good answers do you have?",
                 {"none": "None yet", "some": "A few dozen", "many": "Hundreds or more"}),
    "hardware": ("What will you train and run on?",
                 {"cpu": "A laptop or a computer without a GPU", "gpu": "A computer with an NVIDIA GPU"}),
}
CHOICES = {"rag": "RAG", "finetune": "Fine-tuning", "both": "Both: fine-tuning plus RAG"}
SIDES = {"rag": "RAG", "finetune": "fine-tuning"}


@dataclass(frozen=True)
class Situation:
    changes: str = "sometimes"
    goal: str = "facts"
    sources: str = "yes"
    examples: str = "none"
    hardware: str = "cpu"

    def checked(self) -> "Situation":
        for key, (_, answers) in QUESTIONS.items():
            value = getattr(self, key)
            if value not in answers:
                raise InputError(f"{key} must be one of {', '.join(answers)}, got {value!r}")
        return self


def _points(situation: Situation) -> list[tuple[str, int, str]]:
    """(side, points, reason): why each answer pushes towards RAG or towards fine-tuning."""
    s, out = situation, []
    if s.goal in ("facts", "both"):
        out.append(("rag", 2, "RAG puts the exact passage in front of the model for every question; a fine-tune "
                               "has to memorise facts, which small models do poorly."))
    if s.goal in ("style", "both"):
        out.append(("finetune", 3, "Fine-tuning changes how the model answers (tone, format, length); RAG only "
                                   "changes what it reads for one question."))
    if s.changes == "often":
        out.append(("rag", 2, "Your information changes often: with RAG you add the new file and the next answer "
                              "uses it; a fine-tune would need training again after every change."))
    elif s.changes == "sometimes":
        out.append(("rag", 1, "Your information changes now and then: RAG picks that up at once, a fine-tune at "
                              "its next training."))
    if s.sources == "yes":
        out.append(("rag", 2, "Only RAG can show the passage an answer came from; a fine-tuned model cannot say "
                              "where it learned something."))
    if s.examples == "none":
        out.append(("finetune", -2, "Fine-tuning learns from examples and you have none yet; the app can generate "
                                    "questions from your documents, but made-up examples teach less than real ones."))
    elif s.examples == "many" and s.goal == "facts":
        out.append(("finetune", 1, "With hundreds of examples, a RAFT fine-tune (question, the right passage and "
                                   "distractors) teaches the model to use retrieved passages better."))
    elif s.examples == "many":
        out.append(("finetune", 1, "Hundreds of good examples are enough for a LoRA adapter to learn your style "
                                   "and format."))
    if s.hardware == "cpu":
        out.append(("finetune", -1, "Without a GPU, only small models train in reasonable time (minutes for the "
                                    "bundled 135M model's Quick preset; larger models take far longer)."))
    else:
        out.append(("finetune", 1, "With an NVIDIA GPU, QLoRA (4-bit) trains models many times larger than a CPU "
                                   "can, in less time."))
    return out


def advise(situation: Situation) -> dict:
    """The recommendation (rag, finetune or both), its reasons, and which variants to evaluate to check it."""
    points = _points(situation.checked())
    rag = sum(p for side, p, _ in points if side == "rag")
    finetune = sum(p for side, p, _ in points if side == "finetune")
    # RAG cannot change style and a fine-tune is a poor store of facts, so the goal picks the side that must be
    # there; the other side joins when its points say it earns its cost.
    if situation.goal == "facts":
        choice = "both" if finetune >= 2 else "rag"
    elif situation.goal == "style":
        choice = "both" if rag >= 2 else "finetune"
    else:
        choice = "both" if finetune >= 1 else "rag"
    cautions = []
    if choice != "rag" and situation.examples == "none":
        cautions.append("Fine-tuning needs examples first: write a few dozen, or generate them from your documents "
                        "in the Fine-tune tab and correct them.")
    if choice == "rag" and situation.goal == "both":
        cautions.append("Start with RAG for the facts; add a fine-tune for the style once you have examples or a "
                        "GPU.")
    check = {"rag": ["base", "rag"], "finetune": ["base", "finetuned"],
             "both": ["base", "rag", "finetuned", "finetuned+rag"]}[choice]
    return {
        "choice": choice,
        "label": CHOICES[choice],
        "points": {"rag": rag, "finetune": finetune},
        "reasons": [{"for": side, "side": SIDES[side], "points": p, "reason": reason} for side, p, reason in points],
        "cautions": cautions,
        "evaluate": check,
        "next_step": ("Check it on your own questions: add your documents, then run the Evaluate tab with "
                      + ", ".join(check) + "."),
    }
