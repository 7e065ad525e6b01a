"""The rows of a decode batch and what each caller gets back: a call (Request) with its settings and event queue,
its rows (Row) and the events they send (Delta, RowDone, RowStats); how prompts are grouped for prefill
(plan_batches) and where a looping reply is cut (loop_start). Below core.decode_loop and core.generation."""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass

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


LOOP_NGRAM, LOOP_TIMES = 6, 3


def loop_start(ids: list[int], n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> int | None:
    """Where to cut a reply whose newest n tokens occur for the `times`-th time: at its second occurrence (the
    first copy and what led to it stay). None while the reply is not looping."""
    if len(ids) < n * times:
        return None
    gram = ids[-n:]
    starts = [i for i in range(len(ids) - n + 1) if ids[i:i + n] == gram]
    return starts[1] if len(starts) >= times else None


FINISHED = object()  # the last item of a request's event queue


class Request:
    """One stream_chat call: its settings, its token picker and the queue its rows' events go to."""

    def __init__(self, config, picker, rows: int, together: bool = False):  # a GenerationConfig, its TokenPicker
        self.config, self.picker, self.open_rows = config, picker, rows
        # Throughput over latency: the rows start decoding together, once all their prompts are read (see Loop)
        self.together = together
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.t0 = time.perf_counter()


class Row:
    """One conversation being answered: its prompt, its adapter, the tokens so far."""

    def __init__(self, request: Request, index: int, prompt_ids: list[int], adapter: str | None):
        self.request, self.index, self.prompt_ids, self.adapter = request, index, prompt_ids, adapter
        self.ids: list[int] = []
        self.text = ""
        self.stats = RowStats(prompt_tokens=len(prompt_ids))

    @property
    def done(self) -> bool:
        return self.stats.done or self.request.cancelled


def requests_of(rows: list[Row]) -> list[Request]:
    """The calls these rows belong to, once each."""
    return list({id(r.request): r.request for r in rows}.values())


@dataclass
class Cohort:
    mode: str | None  # the adapter switched on for all rows (DoRA), or None: each row names its own
    rows: list[Row]
