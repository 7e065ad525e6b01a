"""Streaming chat generation. Conversations that share the base model are batched into one `generate`
(left-padded) where that pays, and each row's tokens are streamed separately, with per-row timings."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from core.errors import InputError
from core.models import Generator


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy: the same question gives the same answer
    top_p: float = 0.9
    repetition_penalty: float = 1.0  # >1 made the small model paraphrase away from the passages
    min_new_tokens: int = 0  # benchmarks set it to compare answers of equal length


@dataclass
class RowStats:
    prompt_tokens: int
    new_tokens: int = 0
    ttft_s: float | None = None  # time to first token, from the call
    total_s: float = 0.0

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


class _RowStreamer:
    """transformers streamer protocol: put() gets the prompt once, then one token per row per step."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self):
        self.queue.put(None)


def _eos_ids(generator: Generator) -> set[int]:
    ids = generator.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if generator.tokenizer.eos_token_id is not None:
        ids.add(generator.tokenizer.eos_token_id)
    return ids


# On a CPU, prefill is compute-bound: left-padding a short prompt to a long one's length costs the full
# long prefill again (measured: base+RAG in one batch took 2.96x base alone, more than running them one
# after the other). So rows are batched only while padding adds at most this share of real tokens.
MAX_PADDING_SHARE = 0.25


def plan_batches(prompt_lengths: list[int], device: str) -> list[list[int]]:
    """Group row indices into batches. On a GPU one batch is nearly free; on a CPU, group similar lengths."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    if device.startswith("cuda"):
        return [sorted(order)]
    groups: list[list[int]] = []
    for index in order:
        if groups:
            group = groups[-1] + [index]
            padded = max(prompt_lengths[i] for i in group) * len(group)
            real = sum(prompt_lengths[i] for i in group)
            if padded <= real * (1 + MAX_PADDING_SHARE):
                groups[-1] = group
                continue
        groups.append([index])
    return [sorted(g) for g in sorted(groups, key=min)]  # groups run in the callers' row order


def stream_chat(generator: Generator, conversations: list[list[dict]], config: GenerationConfig,
                adapters: list[str | None] | None = None) -> Iterator[Delta | RowDone]:
    """Generate a reply to each conversation; yield text deltas per row, then a RowDone per row.

    Rows whose prompts have similar lengths share one batched `generate` (see plan_batches). `adapters` names
    each row's LoRA adapter (from models.attach_adapter) or None for the base model; rows with different adapters
    still share a batch (peft's mixed-adapter batches)."""
    adapters = adapters or [None] * len(conversations)
    tokenizer = generator.tokenizer
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    limit = getattr(generator.model.config, "max_position_embeddings", 2048)
    if max(lengths) + config.max_new_tokens > limit:
        raise InputError(
            f"the prompt is {max(lengths)} tokens; with {config.max_new_tokens} new tokens that is over the model's "
            f"{limit}-token context. Shorten the question or use fewer passages."
        )
    t0 = time.perf_counter()
    for group in plan_batches(lengths, generator.device):
        for event in _stream_batch(generator, [prompts[i] for i in group], config, t0, [adapters[i] for i in group]):
            event.row = group[event.row]
            yield event


def _stream_batch(generator: Generator, prompts: list[str], config: GenerationConfig, t0: float,
                  adapters: list[str | None]) -> Iterator[Delta | RowDone]:
    """One batched generate over left-padded prompts, streamed per row; times are measured from t0."""
    import torch

    tokenizer, model = generator.tokenizer, generator.model
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    encoded = encoded.to(generator.device)
    stats = [RowStats(prompt_tokens=int(mask.sum())) for mask in encoded["attention_mask"]]
    streamer = _RowStreamer()
    sampling = config.temperature > 0
    kwargs = dict(
        **encoded,
        max_new_tokens=config.max_new_tokens,
        do_sample=sampling,
        repetition_penalty=config.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
    )
    if config.min_new_tokens:
        kwargs["min_new_tokens"] = config.min_new_tokens
    if generator.adapters:  # a peft model: say per row which adapter to use, "__base__" for none
        kwargs["adapter_names"] = [name or "__base__" for name in adapters]
    if sampling:
        kwargs.update(temperature=config.temperature, top_p=config.top_p)

    # Set when the consumer stops reading (a cancelled request, a closed page): generate stops at its next step
    # instead of running to max_new_tokens beside the next request.
    stop = threading.Event()
    kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(stop)])
    failure: list[BaseException] = []

    def run():
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            failure.append(exc)
            streamer.end()

    eos = _eos_ids(generator)
    rows = len(prompts)
    ids: list[list[int]] = [[] for _ in range(rows)]
    texts = ["" for _ in range(rows)]
    finished = [False] * rows

    def final(row: int, when: float) -> RowDone:
        stats[row].total_s = when
        texts[row] = tokenizer.decode(ids[row], skip_special_tokens=True)  # whole, incl. any held-back tail
        return RowDone(row, texts[row], stats[row])

    with _generate_lock(generator):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            while True:
                step = streamer.queue.get()
                if step is None:
                    break
                now = time.perf_counter() - t0
                for row, token in enumerate(step):
                    if finished[row]:
                        continue
                    if token in eos:
                        finished[row] = True
                        yield final(row, now)
                        continue
                    ids[row].append(token)
                    stats[row].new_tokens += 1
                    if stats[row].ttft_s is None:
                        stats[row].ttft_s = now
                    text = tokenizer.decode(ids[row], skip_special_tokens=True)
                    if text.endswith("\ufffd"):
                        continue  # half of a multi-byte character; wait for the rest
                    if len(text) > len(texts[row]):
                        delta, texts[row] = text[len(texts[row]):], text
                        yield Delta(row, delta)
        finally:
            stop.set()
            thread.join(timeout=60)
    if failure:
        raise failure[0]
    end = time.perf_counter() - t0
    for row in range(rows):
        if not finished[row]:  # stopped by max_new_tokens
            yield final(row, end)


class _StopWhenSet:
    """A transformers stopping criterion that ends generation once an event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def StoppingCriteriaList(criteria):  # noqa: N802 - transformers' class, imported lazily
    from transformers import StoppingCriteriaList as _List

    return _List(criteria)


_locks: dict[int, threading.Lock] = {}


def _generate_lock(generator: Generator) -> threading.Lock:
    # One generate at a time per model: on a small CPU, two at once only slow each other down;
    # callers batch instead (the UI's queue shows waiting users their place).
    return _locks.setdefault(id(generator), threading.Lock())
