"""One user's side-by-side chat (the Compare tab's session, usable from Python too): up to four columns, each with
its own conversation; blind mode shows them as Answer A-D in shuffled order until the vote; each turn is kept as
a Comparison record, so it can be voted on and exported."""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Iterator

from core.comparison import Comparison, answered
from core.errors import InputError
from core.generation import GenerationConfig
from core.answers import Answer, AnswerEvent, Answers
from core.knowledge import check_question
from core.limits import Quota
from core.reading import check_reading
from core.variants import VARIANTS
from core.votes import ALL_BAD, TIE, VoteStore

COLUMN_ORDER = ("base", "finetuned", "rag", "finetuned+rag")
LETTERS = "ABCD"
NEEDS_ADAPTER = "Pick a fine-tuned adapter to see this column (train one in the Fine-tune tab)."
ASK_AGAIN_TEMPERATURE = 0.7  # greedy decoding would repeat the same answer word for word


@dataclass
class Column:
    variant: str
    messages: list[dict] = field(default_factory=list)  # what the column shows, errors included
    history: list[dict] = field(default_factory=list)  # what the model is given next turn: answered turns only
    timings: dict = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    error: str | None = None
    note: str = ""


@dataclass
class ArenaSession:
    columns: dict[str, Column] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # variants in display order (shuffled in blind mode)
    blind: bool = False
    revealed: bool = True
    turn: dict | None = None  # the latest turn as Comparison.to_dict()
    before: dict = field(default_factory=dict)  # each column's history before the latest turn
    voted: str | None = None  # the choice of the vote on the latest turn

    # ---- layout ---------------------------------------------------------------------------------------------
    def arrange(self, variants: list[str], blind: bool) -> None:
        """Columns in the usual order, or shuffled once per conversation in blind mode."""
        variants = [v for v in COLUMN_ORDER if v in variants]
        if not variants:
            raise InputError("switch on at least one column")
        if sorted(variants) != sorted(self.order) or blind != self.blind:
            self.order = random.sample(variants, len(variants)) if blind else variants
            self.blind = blind
        for variant in self.order:
            self.columns.setdefault(variant, Column(variant))

    def title(self, variant: str) -> str:
        label = VARIANTS[variant].label
        if not self.blind:
            return label
        letter = LETTERS[self.order.index(variant)]
        return f"Answer {letter}: {label}" if self.revealed else f"Answer {letter}"

    @property
    def labels(self) -> dict:
        return {LETTERS[i]: v for i, v in enumerate(self.order)} if self.blind else {}

    @property
    def can_vote(self) -> bool:
        return len(answered((self.turn or {}).get("answers", []))) >= 2 and self.voted is None

    def clear(self) -> None:
        self.columns, self.turn, self.before, self.voted, self.revealed = {}, None, {}, None, not self.blind
        self.order = []

    # ---- asking ---------------------------------------------------------------------------------------------
    def ask(self, answerer: Answers, quota: Quota, question: str, variants: list[str], config: GenerationConfig, kb: str,
            adapter: str | None = None, top_k: int | None = None, system_prompt: str | None = None,
            blind: bool = False, read_passages: int | None = None,
            min_relevance: float | None = None) -> Iterator[AnswerEvent]:
        """Ask every switched-on column; the columns update as the events stream."""
        question = check_question(question)
        config = config.checked()
        read_passages, min_relevance = check_reading(answerer.settings, read_passages, min_relevance)
        quota.spend("generate")  # before any column changes: a refused question leaves the chat as it was
        self.arrange(variants, blind)
        self.voted, self.revealed = None, not self.blind
        self.before = {v: list(self.columns[v].history) for v in self.order}
        for variant in self.order:
            column = self.columns[variant]
            column.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
            column.timings, column.sources, column.error, column.note = {}, [], None, ""
        answers = {v: Answer(v, question) for v in self.order}
        runnable = []
        for variant in self.order:
            if VARIANTS[variant].uses_adapter and not adapter:
                self._failed(variant, NEEDS_ADAPTER, answers)
            else:
                runnable.append(variant)
        settings = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                    "top_p": config.top_p, "top_k": top_k or answerer.settings.top_k, "system_prompt": system_prompt or None,
                    "read_passages": read_passages, "min_relevance": min_relevance, "stop_loops": config.stop_loops}
        if runnable:
            for event in answerer.ask_stream(question, runnable, kb=kb, top_k=top_k, config=config,
                                             system_prompt=system_prompt or None, adapter=adapter, history=self.before,
                                             read_passages=read_passages, min_relevance=min_relevance):
                answers[event.variant] = event.answer
                self._apply(event)
                yield event
        self.turn = answerer.record(question, [answers[v] for v in self.order], kb=kb, adapter=adapter,
                                   settings=settings, history=self.before).to_dict()

    def ask_again(self, answerer: Answers, quota: Quota, variant: str, config: GenerationConfig, kb: str, adapter: str | None = None,
                  top_k: int | None = None, system_prompt: str | None = None, read_passages: int | None = None,
                  min_relevance: float | None = None) -> Iterator[AnswerEvent]:
        """Regenerate one column's latest answer (the others stay); a new vote can then be cast."""
        if not self.turn or variant not in self.order:
            raise InputError("ask a question first")
        config = config.checked()
        quota.spend("generate")
        note = ""
        if config.temperature == 0:
            config = replace(config, temperature=ASK_AGAIN_TEMPERATURE, seed=random.randrange(2**31))
            note = f"asked again: sampled at temperature {ASK_AGAIN_TEMPERATURE}"
        column = self.columns[variant]
        question = self.turn["question"]
        column.messages[-1] = {"role": "assistant", "content": ""}
        column.history = list(self.before.get(variant, []))
        column.timings, column.sources, column.error, column.note = {}, [], None, note
        self.voted = None
        answer = Answer(variant, question)
        if VARIANTS[variant].uses_adapter and not adapter:
            self._failed(variant, NEEDS_ADAPTER, {variant: answer})
        else:
            for event in answerer.ask_stream(question, [variant], kb=kb, top_k=top_k, config=config,
                                             system_prompt=system_prompt or None, adapter=adapter,
                                             history={variant: self.before.get(variant, [])},
                                             read_passages=read_passages, min_relevance=min_relevance):
                answer = event.answer
                self._apply(event)
                yield event
        self.turn["answers"] = [answer.to_dict() if a["variant"] == variant else a for a in self.turn["answers"]]

    def _apply(self, event: AnswerEvent) -> None:
        column = self.columns[event.variant]
        if event.kind == "delta":
            column.messages[-1]["content"] += event.text
        elif event.kind == "sources":
            column.sources = event.answer.sources
        elif event.kind == "done":
            column.messages[-1]["content"] = event.answer.answer
            column.timings = event.answer.timings
            column.history = self.before.get(event.variant, []) + column.messages[-2:]
        elif event.kind == "error":
            column.messages[-1]["content"] = f"Could not answer: {event.text}"
            column.error = event.text

    def _failed(self, variant: str, message: str, answers: dict) -> None:
        self.columns[variant].messages[-1]["content"] = message
        self.columns[variant].error = message
        answers[variant].error = message

    # ---- votes and export -------------------------------------------------------------------------------------
    def vote(self, votes: VoteStore, choice: str, comment: str = "") -> dict:
        """Record a vote on the latest turn: a variant (the best), TIE or ALL_BAD. Reveals blind columns."""
        if not self.turn:
            raise InputError("ask a question first, then vote")
        if self.voted is not None:
            raise InputError("you already voted on these answers; ask again or ask a new question to vote again")
        vote = votes.record(Comparison.from_dict(self.turn), choice, blind=self.blind, labels=self.labels,
                                comment=comment)
        self.voted, self.revealed = choice, True
        return vote

    def comparison(self) -> Comparison:
        if not self.turn:
            raise InputError("ask a question first")
        if self.blind and not self.revealed:
            raise InputError("vote first: the export names the columns, which blind mode hides until the vote")
        return Comparison.from_dict(self.turn)


__all__ = ["ArenaSession", "Column", "COLUMN_ORDER", "NEEDS_ADAPTER", "TIE", "ALL_BAD"]
