"""Streaming chat generation for several conversations at once (the Compare columns, and every caller at the same
time): one model, one running decode batch (core.decode_loop), each row with its own adapter or none, each row's
tokens streamed separately with per-row timings."""
from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from core.decode_loop import Loop, eos_ids
from core.decode_rows import (FINISHED, Cohort, Delta, Request, Row, RowDone, RowStats,  # noqa: F401 - re-exported
                              loop_start, plan_batches, requests_of)
from core.errors import InputError
from core.models import Generator


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy: the same question gives the same answer
    top_p: float = 0.9
    repetition_penalty: float = 1.0  # >1 made the small model paraphrase away from the passages
    min_new_tokens: int = 0  # benchmarks set it to compare answers of equal length
    # A small model can go round in circles ("a stereoisomer of the ring that is a stereoisomer of the ring ...")
    # until the token limit: stop a row when its newest LOOP_NGRAM tokens occur for the LOOP_TIMES-th time, and
    # keep the answer up to where the repetition began. False turns it off (benchmarks of equal length).
    stop_loops: bool = True
    seed: int | None = None  # with temperature > 0: the same seed gives the same sample

    def checked(self) -> "GenerationConfig":
        """The same settings, or an InputError naming the one out of range (UI and CLI input)."""
        if not 1 <= self.max_new_tokens <= 4096:
            raise InputError(f"the answer length must be between 1 and 4096 tokens, not {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise InputError(f"the temperature must be between 0 (always the likeliest word) and 2, not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top-p must be above 0 and at most 1, not {self.top_p}")
        return self


def stream_chat(generator: Generator, conversations: list[list[dict]], config: GenerationConfig,
                adapters: list[str | None] | None = None, together: bool = False) -> Iterator[Delta | RowDone]:
    """Generate a reply to each conversation; yield text deltas per row, then a RowDone per row.

    The rows join the model's one running decode batch (see _Batcher): rows of other calls, such as another
    visitor's question, decode in the same batch, one token per row per step, stepped by the calls waiting on it.
    Prompts are prefilled in groups of similar length (see plan_batches), shortest first, a long one in pieces
    between decode steps, and each row's first token is streamed as soon as its prompt is read. `adapters` names
    each row's LoRA adapter (from models.attach_adapter) or None for the base model: rows with different adapters
    share the batch (peft's mixed-adapter batches), so the weights are never copied. A DoRA adapter's rows, which
    peft cannot mix, run as a batch of their own with that adapter switched on, after the rows before them.
    Closing the iterator (a cancelled request, a closed page) takes this call's rows out at the next step.
    `together` is for callers that wait for all the rows (an evaluation, generated questions): the rows start
    decoding only once every prompt of the call is read, so each step decodes all of them rather than the first
    few while the rest are read, and their caches are joined in one copy (a first token still comes at once)."""
    adapters = adapters or [None] * len(conversations)
    if len(adapters) != len(conversations):
        raise ValueError(f"{len(adapters)} adapters for {len(conversations)} conversations")
    if not conversations:
        return
    limit = getattr(generator.model.config, "max_position_embeddings", 2048)
    prompts = [_fit_prompt(generator.tokenizer, c, limit - config.max_new_tokens) for c in conversations]
    request = Request(config, _TokenPicker(config, eos_ids(generator)), len(prompts), together)
    rows = [Row(request, i, ids, adapter) for i, (ids, adapter) in enumerate(zip(prompts, adapters))]
    batcher = _batcher_of(generator)
    batcher.submit(_cohorts(generator, rows))
    try:
        while True:
            try:
                event = request.events.get_nowait()
            except queue.Empty:
                if batcher.step():
                    continue
                try:  # another call is stepping the batch (or nothing can be admitted yet)
                    event = request.events.get(timeout=0.01)
                except queue.Empty:
                    continue
            if event is FINISHED:
                return
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        request.cancelled = True  # the rows still running leave the batch at the next step


def _cohorts(generator: Generator, rows: list["Row"]) -> list["Cohort"]:
    """The rows peft can decode in one batch, each naming its adapter (the base model and LoRA adapters), and the
    rows of each adapter it cannot mix (DoRA), each set with the adapter to switch on for all of them."""
    configs = getattr(generator.model, "peft_config", {})
    whole = sorted({r.adapter for r in rows if r.adapter and getattr(configs.get(r.adapter), "use_dora", False)})
    mixed = [r for r in rows if r.adapter not in whole]
    return ([Cohort(None, mixed)] if mixed else []) + [Cohort(name, [r for r in rows if r.adapter == name])
                                                         for name in whole]


def _fit_prompt(tokenizer, conversation: list[dict], budget: int) -> list[int]:
    """The conversation as prompt token ids; in a long chat the oldest turns are left out until it fits the
    context (never the system message or the newest question)."""
    system = [m for m in conversation if m["role"] == "system"][:1]
    turns = [m for m in conversation if m["role"] != "system"]
    while True:
        prompt = tokenizer.apply_chat_template(system + turns, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return ids
        if len(turns) <= 1:
            raise InputError(
                f"the prompt is {len(ids)} tokens; with the new tokens asked for that is over the model's context "
                f"({budget} tokens left for the prompt). Shorten the question, use fewer passages or ask for a "
                "shorter answer."
            )
        turns = turns[2:]  # one earlier question and its answer


class _Batcher:
    """The running batch of one loaded model. Calls put their rows in `waiting` and step the batch themselves:
    whichever waiting call holds the model's lock admits waiting rows and runs the next step, in its own thread
    (the thread that also searched for its passages; a CPU's OpenMP threads run slower once a second thread keeps
    a pool of them, measured 0.08 against 0.17 ms for a 4-row layer), while the others wait for their events.
    Nothing changes the model (an adapter attached or removed) while the batch has rows: see `quiet`."""

    def __init__(self, generator: Generator):
        self.generator = generator
        self.guard = threading.Lock()  # over `waiting` and `held`
        self.waiting: list[Cohort] = []
        self.loop: Loop | None = None  # None while no row is being read or decoded
        self.held = 0  # callers waiting for an empty batch: no new rows are admitted meanwhile

    def submit(self, cohorts: list[Cohort]) -> None:
        with self.guard:
            self.waiting.extend(cohorts)

    def step(self) -> bool:
        """Admit waiting rows and run one step; False when there was nothing to do or another call is stepping."""
        if not self.generator.lock.acquire(blocking=False):
            return False
        try:
            import torch

            with torch.inference_mode():
                return self._step()
        finally:
            self.generator.lock.release()

    def _step(self) -> bool:
        with self.guard:
            if self.loop is None and (self.held or not self.waiting):
                return False
            loop = self.loop or Loop(self.generator)  # made now: the model may have gained an adapter
            if not self.held:
                loop.admit(self.waiting)
        stepped = not loop.idle
        if stepped:
            self.loop = loop
            try:
                loop.step()
            except BaseException as exc:  # every caller in the batch must hear of it, not wait forever
                self.loop = None  # a step cut short leaves the caches half-written: the batch cannot go on
                reported = exc if isinstance(exc, Exception) else InputError("the answer was interrupted")
                for request in requests_of(loop.rows()):
                    request.events.put(copy.copy(reported))  # each caller raises its own, in its own thread
                with contextlib.suppress(Exception):
                    loop.switch(None)
                if not isinstance(exc, Exception):
                    raise  # Ctrl-C in the CLI
                return True
        if loop.idle:  # nothing to admit, or the last rows just finished: the adapters switch back off
            loop.switch(None)
            self.loop = None
        return stepped

    @contextlib.contextmanager
    def quiet(self):
        """Hold the model's lock with no batch running (for changing the model): new rows wait, and the rows
        already running are stepped to their end first, by this caller too."""
        with self.guard:
            self.held += 1
        try:
            while True:
                self.generator.lock.acquire()
                if self.loop is None:
                    break
                self.generator.lock.release()
                if not self.step():
                    time.sleep(0.01)
            try:
                yield
            finally:
                self.generator.lock.release()
        finally:
            with self.guard:
                self.held -= 1


def _batcher_of(generator: Generator) -> _Batcher:
    with _BATCHERS_GUARD:
        if generator.batcher is None:
            generator.batcher = _Batcher(generator)
        return generator.batcher


_BATCHERS_GUARD = threading.Lock()


class _TokenPicker:
    """Next token per row: greedy, or sampled with temperature and top-p; optional repetition penalty; eos held
    back until min_new_tokens. transformers' own logits processors do the arithmetic."""

    def __init__(self, config: GenerationConfig, eos: set[int]):
        import torch
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopPLogitsWarper)

        self.torch, self.config, self.eos = torch, config, sorted(eos)
        self.sampling = config.temperature > 0
        self.processors = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if self.sampling:
            self.processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(config.top_p))
        self.rng = None
        if self.sampling and config.seed is not None:
            self.rng = torch.Generator().manual_seed(config.seed)

    def pick(self, logits, prompt_ids: list[list[int]], new_ids: list[list[int]]) -> list[int]:
        torch = self.torch
        logits = logits.to(torch.float32, copy=True)  # an inference tensor cannot be changed in place
        for i, generated in enumerate(new_ids):
            if len(generated) < self.config.min_new_tokens and self.eos:
                logits[i, self.eos] = float("-inf")
        if self.processors:
            seen = [p + g for p, g in zip(prompt_ids, new_ids)]
            width = max(len(s) for s in seen)
            # Rows are right-padded with their own first token: padding must not add a token to the penalty.
            input_ids = torch.tensor([s + [s[0]] * (width - len(s)) for s in seen], device=logits.device)
            logits = self.processors(input_ids, logits)
        if not self.sampling:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits, dim=-1).cpu()
        return torch.multinomial(probs, 1, generator=self.rng).reshape(-1).tolist()
