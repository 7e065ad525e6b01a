"""Answers as a service: one question answered by several variants at once (one decode batch, every column
streamed), with the passages RAG read and the timings; and the record of a side-by-side turn."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from contextlib import closing
from typing import Callable, Iterator

from core.adapters import AdapterStore
from core.comparison import Comparison
from core.config import Settings
from core.errors import InputError, LabError
from core.generation import Delta, GenerationConfig, RowDone, stream_chat
from core.knowledge import KnowledgeBases, check_question
from core.models import (Models, attach_adapter, describe_model, load_embedder, load_full_model, load_generator,
                         parameter_count)
from core.reading import NOT_IN_DOCUMENTS, Reading, check_reading, passages_to_read, read
from core.names import DEFAULT_KB
from core.retrieval import hit_to_source, relevant
from core.variants import Variant, get_variant


@dataclass
class Answer:
    variant: str
    question: str
    answer: str = ""
    sources: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AnswerEvent:
    """One step of a streamed answer: `sources` (RAG passages found), `delta` (new text), `done`, or `error`."""

    kind: str
    variant: str
    text: str = ""
    answer: Answer | None = None


STOPPED = "stopped before it finished"


@dataclass
class _Turn:
    """One question's answers, the events already known before generation, and the rows left for the model."""

    answers: dict[str, Answer]
    events: list[AnswerEvent] = field(default_factory=list)
    rows: list[tuple[Answer, list[dict], str | None]] = field(default_factory=list)


def search_query(question: str, history: list[dict] | None) -> str:
    """What to retrieve for: the question, and in a conversation also the previous question, since a follow-up
    ("In which year?") rarely names what it is about."""
    earlier = [m["content"] for m in history or [] if m.get("role") == "user"]
    return f"{earlier[-1]}\n{question}" if earlier else question


FULL_MODEL = "full:"  # the start of an adapter key that names a fully fine-tuned model (its own Generator)


class Answers:
    def __init__(self, settings: Settings, kbs: KnowledgeBases, adapters: AdapterStore, models: Models):
        self.settings, self.kbs, self.adapters, self.models = settings, kbs, adapters, models
        self._parameters: int | None = None
        self._full_models: dict = {}  # FULL_MODEL key -> the Generator of a fully fine-tuned model

    def use_adapter(self, name: str) -> str:
        """Attach a registered adapter to the served model (once); refuse one trained on another base model.
        Returns the key a decode row names it by."""
        info = self.adapters.info(name)
        if info.get("base_model") != self.settings.base_model:
            raise InputError(
                f"trained on {describe_model(info.get('base_model', '?'))}, but the app uses "
                f"{describe_model(self.settings.base_model)}", subject=name)
        path, version = self.adapters.path(name), str(info.get("created"))
        if (info.get("settings") or {}).get("tuning") == "full":  # a whole model of its own, beside the base
            key = f"{FULL_MODEL}{path}@{version}"
            self._full_models[key] = load_full_model(path, version, self.models.generator.device,
                                                     self.settings.resolved_decode_weights)
            return key
        return attach_adapter(self.models.generator, path, version)

    def ask_stream(self, question: str, variants: list[str] = ("base", "rag"), kb: str = DEFAULT_KB,
                   top_k: int | None = None, config: GenerationConfig | None = None, system_prompt: str | None = None,
                   adapter: str | None = None, history: dict[str, list[dict]] | None = None,
                   read_passages: int | None = None, min_relevance: float | None = None,
                   instruction: str | None = None) -> Iterator[AnswerEvent]:
        """Answer one question with several variants at once (one decode batch), streaming every column.
        `history` maps a variant to its own earlier turns (user/assistant messages) for a multi-turn chat.
        `read_passages` and `min_relevance` override the settings of the same name for this question.
        `instruction` follows the question in the prompt (say, "Answer with one word: ...") but is not searched for."""
        question = check_question(question)  # a bad question is refused before the model loads
        config = config or GenerationConfig(max_new_tokens=self.settings.max_new_tokens)
        generator = self.models.generator  # load before any timing starts
        turn = self._prepare(question, variants, kb, top_k, system_prompt, adapter, history, read_passages,
                             min_relevance, instruction)
        yield from turn.events
        if turn.rows:
            yield from self._decode(generator, turn.rows, config)

    def compare_many(self, questions: list[str], variants: list[str], kb: str = DEFAULT_KB,
                     top_k: int | None = None, config: GenerationConfig | None = None,
                     adapter: str | None = None, read_passages: int | None = None,
                     min_relevance: float | None = None, instruction: str | None = None,
                     on_done: Callable[[Answer], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> list[list[Answer]]:
        """Several questions, each with several variants, in one decode batch: an evaluation's questions share the
        model's passes (on a CPU one step for 32 rows costs far less than 8 steps for 4), with the same greedy
        answers. Per question, the answers in the order of `variants`, as `compare` gives them. `on_done` is called
        as each answer finishes; when `should_stop` says so, generation stops and unfinished answers carry
        STOPPED as their error."""
        questions = [check_question(q) for q in questions]
        config = config or GenerationConfig(max_new_tokens=self.settings.max_new_tokens)
        generator = self.models.generator
        turns = [self._prepare(q, variants, kb, top_k, None, adapter, None, read_passages, min_relevance,
                               instruction) for q in questions]
        for event in (e for turn in turns for e in turn.events if e.kind in ("done", "error")):
            on_done and on_done(event.answer)
        rows = [row for turn in turns for row in turn.rows]
        finished = set()
        if rows:
            # Several questions are a throughput run: their rows decode together. One question alone is timed
            # (an evaluation's latency figures), so its columns stream as in Compare.
            with closing(self._decode(generator, rows, config, together=len(questions) > 1)) as events:
                for event in events:
                    if event.kind in ("done", "error"):
                        finished.add(id(event.answer))
                        on_done and on_done(event.answer)
                    if should_stop and should_stop():
                        break
        for answer, _, _ in rows:
            if id(answer) not in finished:
                answer.error = STOPPED
        return [[turn.answers[v] for v in dict.fromkeys(variants)] for turn in turns]

    def _prepare(self, question: str, variants: list[str], kb: str, top_k: int | None, system_prompt: str | None,
                 adapter: str | None, history: dict[str, list[dict]] | None, read_passages: int | None,
                 min_relevance: float | None, instruction: str | None) -> "_Turn":
        """One question's columns up to the model: the passages found (one search for all RAG columns), the
        answers that need no model (errors, passages that do not answer), and a prompt row for each of the rest.
        The question has been checked by the caller (check_question), before the model loads."""
        read_passages, min_relevance = check_reading(self.settings, read_passages, min_relevance)
        chosen: list[Variant] = [get_variant(name) for name in dict.fromkeys(variants)]
        if not chosen:
            raise InputError("choose at least one variant")
        turn = _Turn({v.name: Answer(v.name, question) for v in chosen})
        search: list = []  # (Reading, ms) once retrieved: the RAG columns share one search
        for variant in chosen:
            answer = turn.answers[variant.name]
            try:
                adapter_key = self._adapter_for(variant, adapter)
                query = search_query(question, (history or {}).get(variant.name))
                reading = self._reading_for(variant, query, kb, top_k, read_passages, min_relevance, search)
            except LabError as exc:
                answer.error = str(exc)
                turn.events.append(AnswerEvent("error", variant.name, str(exc), answer))
                continue
            passages = reading.shown if reading else []
            if reading:
                answer.sources = ([{**hit_to_source(h, query), "read": reading.covered} for h in reading.shown] +
                                  [{**hit_to_source(h, query), "read": False} for h in reading.others])
                answer.timings["retrieval_ms"] = round(search[0][1], 1)
                turn.events.append(AnswerEvent("sources", variant.name, answer=answer))
                if not reading.covered:  # said plainly, not generated from passages that do not answer
                    answer.answer = NOT_IN_DOCUMENTS
                    spent = answer.timings["retrieval_ms"]
                    answer.timings.update(ttft_ms=spent, total_ms=spent, prompt_tokens=0, new_tokens=0,
                                          tokens_per_s=0.0)
                    turn.events.append(AnswerEvent("done", variant.name, answer.answer, answer))
                    continue
            asked = f"{question}\n{instruction}" if instruction else question
            conversation = variant.messages(asked, passages, system_prompt, (history or {}).get(variant.name))
            turn.rows.append((answer, conversation, adapter_key))
        return turn

    def _adapter_for(self, variant: Variant, adapter: str | None) -> str | None:
        if not variant.uses_adapter:
            return None
        if not adapter:
            raise InputError("choose a fine-tuned adapter for this variant (train one first)")
        return self.use_adapter(adapter)

    def _reading_for(self, variant: Variant, question: str, kb: str, top_k: int | None, read_passages: int,
                     min_relevance: float, search: list) -> Reading | None:
        """What this variant reads (None: it does not retrieve). Searched and ranked once for all RAG columns."""
        if not variant.uses_retrieval:
            return None
        if not search:
            hits, ms = self.kbs.search(question, kb, top_k)
            if not hits:
                raise InputError(f"knowledge base {kb!r} has no documents yet; add some first")
            count = passages_to_read(self._model_parameters(), read_passages)
            started = time.perf_counter()
            reading = read(question, relevant(hits, self.settings.min_score), self.models.encode, count, min_relevance,
                           self.models.reranker)
            search.append((reading, ms + 1000 * (time.perf_counter() - started)))
        return search[0][0]

    def _model_parameters(self) -> int:
        if self._parameters is None:
            self._parameters = parameter_count(self.models.generator.model)
        return self._parameters

    def _decode(self, generator, rows: list[tuple[Answer, list[dict], str | None]],
                config: GenerationConfig, together: bool = False) -> Iterator[AnswerEvent]:
        """Generate every row (answer, conversation, adapter) in one batch, filling in its Answer. Rows of a fully
        fine-tuned model are a batch of their own on that model, after the others."""
        batches: dict[int, tuple] = {}
        for row in rows:
            model = self._full_models.get(row[2], generator)
            batches.setdefault(id(model), (model, []))[1].append(row)
        try:
            for model, batch in batches.values():
                yield from self._decode_batch(model, batch, config, together)
        except LabError as exc:
            for answer, _, _ in rows:
                if not answer.timings.get("total_ms"):
                    answer.error = str(exc)
                    yield AnswerEvent("error", answer.variant, str(exc), answer)

    @staticmethod
    def _decode_batch(generator, rows: list[tuple[Answer, list[dict], str | None]],
                      config: GenerationConfig, together: bool = False) -> Iterator[AnswerEvent]:
        adapters = [None if (key or "").startswith(FULL_MODEL) else key for _, _, key in rows]
        for event in stream_chat(generator, [c for _, c, _ in rows], config, adapters, together):
            answer = rows[event.row][0]
            if isinstance(event, Delta):
                answer.answer += event.text
                yield AnswerEvent("delta", answer.variant, event.text, answer)
            elif isinstance(event, RowDone):
                answer.answer = event.text.strip()
                s = event.stats
                extra = answer.timings.get("retrieval_ms", 0.0)
                answer.timings.update(
                    ttft_ms=round((s.ttft_s or s.total_s) * 1000 + extra, 1),
                    total_ms=round(s.total_s * 1000 + extra, 1),
                    prompt_tokens=s.prompt_tokens,
                    new_tokens=s.new_tokens,
                    tokens_per_s=round(s.tokens_per_s, 2),
                )
                yield AnswerEvent("done", answer.variant, answer.answer, answer)

    def ask(self, question: str, variant: str = "rag", **kwargs) -> Answer:
        answer = None
        for event in self.ask_stream(question, [variant], **kwargs):
            answer = event.answer
        if answer is not None and answer.error:
            raise LabError(answer.error)
        return answer

    def compare(self, question: str, variants: list[str], **kwargs) -> list[Answer]:
        final: dict[str, Answer] = {}
        for event in self.ask_stream(question, variants, **kwargs):
            if event.kind in ("done", "error"):
                final[event.variant] = event.answer
        return [final[v] for v in dict.fromkeys(variants) if v in final]

    def record(self, question: str, answers: list[Answer], kb: str | None = None, adapter: str | None = None,
               settings: dict | None = None, history: dict | None = None) -> Comparison:
        """The record of one side-by-side turn, with the model and the adapter's identity, for votes and export."""
        adapter_info = None
        if adapter and any(get_variant(a.variant).uses_adapter for a in answers):
            meta = self.adapters.info(adapter)
            adapter_info = {k: meta.get(k) for k in ("name", "base_model", "dataset", "dataset_sha256", "job", "created")}
        else:
            adapter = None
        return Comparison(
            question=question, answers=[a.to_dict() for a in answers], kb=kb, model=self.settings.base_model,
            adapter=adapter, adapter_info=adapter_info, settings=dict(settings or {}),
            history={k: v for k, v in (history or {}).items() if v and any(a.variant == k for a in answers)},
        )


def warm_up(settings: Settings) -> None:
    """Load both models and run each once, so the first real question is not slowed by first-call costs."""
    load_embedder(settings).encode(["warm up"], normalize_embeddings=True)
    for _ in stream_chat(load_generator(settings), [[{"role": "user", "content": "Hi"}]],
                         GenerationConfig(max_new_tokens=2)):
        pass
