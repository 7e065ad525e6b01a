"""Streaming chat generation for several conversations at once (the Compare columns): one model, one decode
batch, each row with its own adapter or none, each row's tokens streamed separately with per-row timings."""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from core.errors import InputError
from core.models import Generator, accepts_logits_to_keep


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


@dataclass
class RowStats:
    prompt_tokens: int
    new_tokens: int = 0
    ttft_s: float | None = None  # time to first token, from the call
    total_s: float = 0.0
    done: bool = False

    @property
    def tokens_per_s(self) -> float:
        # Decode rate after the first token, the usual definition (prefill is in ttft).
        decode_time = self.total_s - (self.ttft_s or 0.0)
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0


@dataclass
class Delta:
    row: int
    text: str


@dataclass
class RowDone:
    row: int
    text: str
    stats: RowStats


def _eos_ids(generator: Generator) -> set[int]:
    ids = generator.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if generator.tokenizer.eos_token_id is not None:
        ids.add(generator.tokenizer.eos_token_id)
    return ids


# On a CPU, prefill is compute-bound: left-padding a short prompt to a long one's length costs the full long
# prefill again (measured: base+RAG in one padded batch took 2.96x base alone). So rows share a prefill only while
# padding adds at most this share of real tokens...
MAX_PADDING_SHARE = 0.25
# ...and only while the group is small: two ~1,000-token prompts in one prefill took 2.08x one of them (no gain),
# and prefilling them apart lets the first show its first token in half the time. Short prompts still share one.
MAX_CPU_PREFILL_TOKENS = 512


def plan_batches(prompt_lengths: list[int], device: str) -> list[list[int]]:
    """Group row indices for prefill, shortest first. On a GPU one batch is nearly free; on a CPU, group only
    short prompts of similar length."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    if device.startswith("cuda"):
        return [sorted(order)]
    groups: list[list[int]] = []
    for index in order:
        if groups:
            group = groups[-1] + [index]
            padded = max(prompt_lengths[i] for i in group) * len(group)
            real = sum(prompt_lengths[i] for i in group)
            if padded <= real * (1 + MAX_PADDING_SHARE) and padded <= MAX_CPU_PREFILL_TOKENS:
                groups[-1] = group
                continue
        groups.append([index])
    return [sorted(g) for g in groups]


# A row decoding alone checks up to this many tokens a step that its prompt suggests (prompt lookup: the tokens
# after the latest PROMPT_LOOKUP_NGRAM tokens where they occurred before). A RAG answer copies from its passages:
# measured with transformers' prompt lookup on demo and PDF questions, greedy answers identical, up to 2.7x faster.
PROMPT_LOOKUP_TOKENS, PROMPT_LOOKUP_NGRAM = 4, 2
# A long prompt is prefilled in pieces of this many tokens on a CPU, with one decode step of the running rows
# between pieces, so the columns and visitors already answering keep streaming while it is read.
PREFILL_CHUNK_TOKENS = 512


def stream_chat(generator: Generator, conversations: list[list[dict]], config: GenerationConfig,
                adapters: list[str | None] | None = None) -> Iterator[Delta | RowDone]:
    """Generate a reply to each conversation; yield text deltas per row, then a RowDone per row.

    The rows join the model's one running decode batch (see _Batcher): rows of other calls, such as another
    visitor's question, decode in the same batch, one token per row per step, stepped by the calls waiting on it. Prompts are prefilled in groups of
    similar length (see plan_batches), shortest first, a long one in pieces between decode steps, and each row's
    first token is streamed as soon as its prompt is read. `adapters` names each row's LoRA adapter (from
    models.attach_adapter) or None for the base model: rows with different adapters share the batch (peft's
    mixed-adapter batches), so the weights are never copied. A DoRA adapter's rows, which peft cannot mix, run as
    a batch of their own with that adapter switched on, after the rows before them. Closing the iterator (a
    cancelled request, a closed page) takes this call's rows out of the batch at the next step."""
    adapters = adapters or [None] * len(conversations)
    limit = getattr(generator.model.config, "max_position_embeddings", 2048)
    prompts = [_fit_prompt(generator.tokenizer, c, limit - config.max_new_tokens) for c in conversations]
    request = _Request(config, _TokenPicker(config, _eos_ids(generator)), len(prompts))
    rows = [_Row(request, i, ids, adapter) for i, (ids, adapter) in enumerate(zip(prompts, adapters))]
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
            if event is _FINISHED:
                return
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        request.cancelled = True  # the rows still running leave the batch at the next step


def _cohorts(generator: Generator, rows: list["_Row"]) -> list["_Cohort"]:
    """The rows peft can decode in one batch, each naming its adapter (the base model and LoRA adapters), and the
    rows of each adapter it cannot mix (DoRA), each set with the adapter to switch on for all of them."""
    configs = getattr(generator.model, "peft_config", {})
    whole = sorted({r.adapter for r in rows if r.adapter and getattr(configs.get(r.adapter), "use_dora", False)})
    mixed = [r for r in rows if r.adapter not in whole]
    return ([_Cohort(None, mixed)] if mixed else []) + [_Cohort(name, [r for r in rows if r.adapter == name])
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


_FINISHED = object()  # the last item of a request's event queue


class _Request:
    """One stream_chat call: its settings, its token picker and the queue its rows' events go to."""

    def __init__(self, config: GenerationConfig, picker: "_TokenPicker", rows: int):
        self.config, self.picker, self.open_rows = config, picker, rows
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.t0 = time.perf_counter()


class _Row:
    """One conversation being answered: its prompt, its adapter, the tokens so far."""

    def __init__(self, request: _Request, index: int, prompt_ids: list[int], adapter: str | None):
        self.request, self.index, self.prompt_ids, self.adapter = request, index, prompt_ids, adapter
        self.ids: list[int] = []
        self.text = ""
        self.stats = RowStats(prompt_tokens=len(prompt_ids))

    @property
    def done(self) -> bool:
        return self.stats.done or self.request.cancelled


@dataclass
class _Cohort:
    mode: str | None  # the adapter switched on for all rows (DoRA), or None: each row names its own
    rows: list[_Row]


class _Batcher:
    """The running batch of one loaded model. Calls put their rows in `waiting` and step the batch themselves:
    whichever waiting call holds the model's lock admits waiting rows and runs the next step, in its own thread
    (the thread that also searched for its passages; a CPU's OpenMP threads run slower once a second thread keeps
    a pool of them, measured 0.08 against 0.17 ms for a 4-row layer), while the others wait for their events.
    Nothing changes the model (an adapter attached or removed) while the batch has rows: see `quiet`."""

    def __init__(self, generator: Generator):
        self.generator = generator
        self.guard = threading.Lock()  # over `waiting` and `held`
        self.waiting: list[_Cohort] = []
        self.loop: _Loop | None = None  # None while no row is being read or decoded
        self.held = 0  # callers waiting for an empty batch: no new rows are admitted meanwhile

    def submit(self, cohorts: list[_Cohort]) -> None:
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
            loop = self.loop or _Loop(self.generator)  # made now: the model may have gained an adapter
            if not self.held:
                loop.admit(self.waiting)
        if loop.idle:
            loop.switch(None)
            self.loop = None
            return False
        self.loop = loop
        try:
            loop.step()
        except BaseException as exc:  # every caller in the batch must hear of it, not wait forever
            self.loop = None  # a step cut short leaves the caches half-written: the batch cannot go on
            reported = exc if isinstance(exc, Exception) else InputError("the answer was interrupted")
            for request in {id(r.request): r.request for r in loop.rows()}.values():
                request.events.put(reported)
            with contextlib.suppress(Exception):
                loop.switch(None)
            if not isinstance(exc, Exception):
                raise  # Ctrl-C in the CLI
        if loop.idle:  # the last rows just finished: the adapters switch back off, the next call starts afresh
            loop.switch(None)
            self.loop = None
        return True

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


class _Prefill:
    """Rows whose prompts are being read together: left-padded ids, their mask and the cache filled so far."""

    def __init__(self, rows: list[_Row], pad_id: int, torch, model, device: str):
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in rows)
        self.rows = rows
        self.ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=device)
        self.mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
                                 device=device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        self.cache = DynamicCache(config=model.config)
        self.read = 0  # prompt columns prefilled so far

    @property
    def left(self) -> int:
        return self.ids.shape[1] - self.read


@dataclass
class _Batch:
    """The rows decoding together: one KV cache, the attention mask, each row's position and its newest token."""
    cache: object
    mask: object
    positions: object
    tokens: object
    rows: list[_Row]


class _Loop:
    """One run of the decode loop (while the model has work): prefill pieces and decode steps, interleaved."""

    def __init__(self, generator: Generator):
        import torch

        self.torch, self.generator = torch, generator
        self.model, self.tokenizer, self.device = generator.model, generator.tokenizer, generator.device
        self.mergeable = _mergeable(self.model)
        on_cpu = not self.device.startswith("cuda")  # a GPU reads a long prompt in one go at little cost
        self.chunk = PREFILL_CHUNK_TOKENS if on_cpu and self.mergeable else None
        self.keeps_last_logits = accepts_logits_to_keep(self.model)
        self.per_row_adapters = bool(generator.adapters)
        self.eos = _eos_ids(generator)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos) if self.eos else 0)
        self.mode: str | None = None
        self.prefills: list[_Prefill] = []
        self.batch: _Batch | None = None

    @property
    def idle(self) -> bool:
        return self.batch is None and not self.prefills

    def rows(self) -> list[_Row]:
        return [r for p in self.prefills for r in p.rows] + (self.batch.rows if self.batch else [])

    def switch(self, mode: str | None) -> None:
        """Switch `mode` (a DoRA adapter) on in every layer, or off (None: rows name their own adapter)."""
        if mode == self.mode:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for layer in (m for m in self.generator.model.modules() if isinstance(m, BaseTunerLayer)):
            layer.set_adapter([mode] if mode else [])
        self.mode = mode

    def admit(self, waiting: list[_Cohort]) -> None:
        """Take waiting rows into the run, in order of arrival, while they can share the batch: the same mode, and
        a model whose caches can be joined (otherwise one call's rows at a time)."""
        taken: list[_Cohort] = []
        while waiting:
            cohort = waiting[0]
            if cohort.rows[0].request.cancelled:
                waiting.pop(0)
                continue
            busy = not self.idle or taken
            if busy and (cohort.mode != self.mode or not self.mergeable):
                break
            self.switch(cohort.mode)
            taken.append(waiting.pop(0))
        rows = [r for c in taken for r in c.rows]
        if not rows:
            return
        groups = plan_batches([len(r.prompt_ids) for r in rows], self.device) if self.mergeable \
            else [list(range(len(rows)))]  # one padded prefill instead of joined caches
        self.prefills += [_Prefill([rows[i] for i in g], self.pad_id, self.torch, self.model, self.device)
                          for g in groups]

    def step(self) -> None:
        """Read one piece of the prompt with the least left to read (short prompts overtake long ones), then decode
        one token for every running row."""
        self.prefills = [p for p in self.prefills if not all(r.done for r in p.rows)]
        if self.prefills:
            prefill = min(self.prefills, key=lambda p: p.left)
            if self._read_piece(prefill):
                self.prefills.remove(prefill)
                self._join(prefill)
        if self.batch is not None:
            self._decode_step()

    def _forward(self, input_ids, mask, positions, cache, rows: list[_Row], last: int = 1):
        """The logits of the last `last` positions (of the last one alone, as [rows, vocabulary], by default)."""
        kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True)
        if self.per_row_adapters and self.mode is None:
            kwargs["adapter_names"] = [r.adapter or "__base__" for r in rows]
        if self.keeps_last_logits:
            kwargs["logits_to_keep"] = last  # a long prompt's full logits would be prompt x vocabulary floats
        logits = self.model(**kwargs).logits
        return logits[:, -1, :] if last == 1 else logits[:, -last:, :]

    def _read_piece(self, prefill: _Prefill) -> bool:
        """Prefill the next piece of these prompts; True when they are read, their first tokens picked and sent."""
        start = prefill.read
        end = prefill.ids.shape[1] if self.chunk is None else min(prefill.ids.shape[1], start + self.chunk)
        logits = self._forward(prefill.ids[:, start:end], prefill.mask[:, :end], prefill.positions[:, start:end],
                               prefill.cache, prefill.rows)
        prefill.read = end
        if prefill.left:
            return False
        prefill.tokens = self._pick(prefill.rows, logits)
        for row, token in zip(prefill.rows, prefill.tokens):
            self._accept(row, token)
        return True

    def _join(self, prefill: _Prefill) -> None:
        """Add the rows just prefilled to the running batch (the caches and masks left-padded to one width)."""
        torch = self.torch
        part = _Batch(prefill.cache, prefill.mask, prefill.positions[:, -1],
                      torch.tensor(prefill.tokens, device=prefill.mask.device), prefill.rows)
        self.batch = part if self.batch is None else _joined(self.batch, part, torch)
        self._compact()

    def _decode_step(self) -> None:
        batch = self.batch
        if len(batch.rows) == 1 and PROMPT_LOOKUP_TOKENS and self.mergeable:
            draft = self._draft(batch.rows[0])
            if draft:
                self._lookup_step(draft)
                return
        batch.positions = batch.positions + 1
        batch.mask = self.torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        logits = self._forward(batch.tokens[:, None], batch.mask, batch.positions[:, None], batch.cache, batch.rows)
        picked = self._pick(batch.rows, logits)
        batch.tokens = self.torch.tensor(picked, device=batch.mask.device)
        for row, token in zip(batch.rows, picked):
            self._accept(row, token)
        self._compact()

    def _draft(self, row: _Row) -> list[int]:
        """Prompt lookup: the tokens that followed the answer's last PROMPT_LOOKUP_NGRAM tokens where they occur
        earlier in the prompt or the answer (a RAG answer copies names and phrases from its passages). Only for a
        greedy row without a repetition penalty."""
        picker, stats = row.request.picker, row.stats
        if picker.sampling or picker.processors:
            return []
        room = row.request.config.max_new_tokens - stats.new_tokens - 1  # the step's own token comes on top
        seen = row.prompt_ids + row.ids
        for n in range(PROMPT_LOOKUP_NGRAM, 0, -1):
            gram = seen[-n:]
            for start in range(len(seen) - n):
                if seen[start:start + n] == gram:
                    return seen[start + n:start + n + min(PROMPT_LOOKUP_TOKENS, room)]
        return []

    def _lookup_step(self, draft: list[int]) -> None:
        """One forward over the newest token and the draft: the draft's tokens the model itself would pick next,
        one by one, are kept with the model's own token after them (the same greedy answer, in fewer steps); the
        cache keeps what was kept."""
        torch, batch = self.torch, self.batch
        width = batch.mask.shape[1]
        tokens = torch.tensor([[int(batch.tokens[0])] + draft], device=batch.mask.device)
        positions = batch.positions[:, None] + torch.arange(1, len(draft) + 2, device=batch.mask.device)
        mask = torch.cat([batch.mask, batch.mask.new_ones((1, len(draft) + 1))], dim=1)
        logits = self._forward(tokens, mask, positions, batch.cache, batch.rows, last=len(draft) + 1)
        row = batch.rows[0]
        logits = logits[0].to(torch.float32, copy=True)
        held = min(len(draft) + 1, row.request.config.min_new_tokens - row.stats.new_tokens)
        if held > 0 and self.eos:  # the end token is held back until min_new_tokens, as _TokenPicker does
            logits[:held, sorted(self.eos)] = float("-inf")
        predicted = logits.argmax(-1).tolist()
        kept = 0
        while kept < len(draft) and draft[kept] == predicted[kept]:
            kept += 1
        for layer in batch.cache.layers:  # the draft tokens the model did not confirm leave the cache
            layer.keys, layer.values = layer.keys[:, :, :width + 1 + kept], layer.values[:, :, :width + 1 + kept]
        batch.mask = mask[:, :width + 1 + kept]
        batch.positions = batch.positions + 1 + kept
        batch.tokens = torch.tensor([predicted[kept]], device=batch.mask.device)
        for token in draft[:kept] + [predicted[kept]]:
            self._accept(row, token)
            if row.done:
                break
        self._compact()

    def _compact(self) -> None:
        """Finished and abandoned rows leave the batch, so later steps cost only what is still running; cache
        columns that only padding uses any more are cut off."""
        batch, torch = self.batch, self.torch
        keep = [i for i, r in enumerate(batch.rows) if not r.done]
        if not keep:
            self.batch = None
            return
        if len(keep) < len(batch.rows):
            index = torch.tensor(keep, device=batch.mask.device)
            batch.cache.batch_select_indices(index)
            batch.mask, batch.positions, batch.tokens = batch.mask[index], batch.positions[index], batch.tokens[index]
            batch.rows = [batch.rows[i] for i in keep]
        first = int(batch.mask.any(0).int().argmax())
        if first:
            batch.mask = batch.mask[:, first:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _pick(self, rows: list[_Row], logits) -> list[int]:
        """Each row's next token, by its own call's settings."""
        picked = [0] * len(rows)
        by_request: dict[int, tuple[_Request, list[int]]] = {}
        for i, row in enumerate(rows):
            by_request.setdefault(id(row.request), (row.request, []))[1].append(i)
        for request, index in by_request.values():
            part = logits if len(index) == len(rows) else logits[index]
            tokens = request.picker.pick(part, [rows[i].prompt_ids for i in index], [rows[i].ids for i in index])
            for i, token in zip(index, tokens):
                picked[i] = token
        return picked

    def _accept(self, row: _Row, token: int) -> None:
        if row.done:
            return
        request, stats = row.request, row.stats
        now = time.perf_counter() - request.t0
        if token in self.eos:
            self._finish(row, now)
            return
        row.ids.append(token)
        stats.new_tokens += 1
        if stats.ttft_s is None:
            stats.ttft_s = now
        config = request.config
        if config.stop_loops and stats.new_tokens >= config.min_new_tokens and \
                (cut := loop_start(row.ids)) is not None:
            del row.ids[cut:]
            self._finish(row, now, looped=True)
            return
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(row.text):  # not half a multi-byte character
            request.events.put(Delta(row.index, text[len(row.text):]))
            row.text = text
        if stats.new_tokens >= config.max_new_tokens:
            self._finish(row, now)

    def _finish(self, row: _Row, when: float, looped: bool = False) -> None:
        stats = row.stats
        stats.total_s, stats.done = when, True
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)  # incl. a held-back tail
        if looped:  # end on the last whole line or sentence, where one ends in the second half
            text = text.rstrip()
            end = max(text.rfind("\n"), text.rfind(". ") + 1 if ". " in text else -1)
            text = text[:end].rstrip() if end > len(text) // 2 else text
        row.text = text
        request = row.request
        request.events.put(RowDone(row.index, text, stats))
        request.open_rows -= 1
        if not request.open_rows:
            request.events.put(_FINISHED)


LOOP_NGRAM, LOOP_TIMES = 6, 3


def loop_start(ids: list[int], n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> int | None:
    """Where to cut a reply whose newest n tokens occur for the `times`-th time: at its second occurrence (the
    first copy and what led to it stay). None while the reply is not looping."""
    if len(ids) < n * times:
        return None
    gram = ids[-n:]
    starts = [i for i in range(len(ids) - n + 1) if ids[i:i + n] == gram]
    return starts[1] if len(starts) >= times else None


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


def _joined(a: _Batch, b: _Batch, torch) -> _Batch:
    """One batch of both: KV caches and masks left-padded to the wider, rows stacked."""
    from transformers import DynamicCache

    width = max(a.mask.shape[1], b.mask.shape[1])

    def padded(tensor, length):  # on the left, along the sequence (the cache's third, the mask's second axis)
        pad = width - length
        if not pad:
            return tensor
        return torch.nn.functional.pad(tensor, (0, 0, pad, 0) if tensor.dim() == 4 else (pad, 0))

    layers = [(torch.cat([padded(x.keys, a.mask.shape[1]), padded(y.keys, b.mask.shape[1])]),
               torch.cat([padded(x.values, a.mask.shape[1]), padded(y.values, b.mask.shape[1])]))
              for x, y in zip(a.cache.layers, b.cache.layers)]
    return _Batch(DynamicCache(layers), torch.cat([padded(a.mask, a.mask.shape[1]), padded(b.mask, b.mask.shape[1])]),
                  torch.cat([a.positions, b.positions]), torch.cat([a.tokens, b.tokens]), a.rows + b.rows)


def _mergeable(model) -> bool:
    """Caches can be joined across groups only for plain full-attention layers (not sliding-window or
    recurrent ones); other models prefill all rows in one padded batch."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
    except Exception:  # noqa: BLE001 - an unusual config: take the always-correct path
        return False
