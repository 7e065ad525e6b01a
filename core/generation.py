"""Streaming chat generation for several conversations at once (the Compare columns): one model, one decode
batch, each row with its own adapter or none, each row's tokens streamed separately with per-row timings."""
from __future__ import annotations

import contextlib
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


def stream_chat(generator: Generator, conversations: list[list[dict]], config: GenerationConfig,
                adapters: list[str | None] | None = None) -> Iterator[Delta | RowDone]:
    """Generate a reply to each conversation; yield text deltas per row, then a RowDone per row.

    Prompts are prefilled in groups of similar length (see plan_batches), each row's first token is streamed as
    soon as its group is prefilled, and then every row is decoded together, one token per row per step, in one
    batch. `adapters` names each row's LoRA adapter (from models.attach_adapter) or None for the base model: rows
    with different adapters share the batch (peft's mixed-adapter batches), so the weights are never copied. A DoRA
    adapter's rows, which peft cannot mix, run after them as a batch of their own with that adapter switched on.
    Closing the iterator (a cancelled request, a closed page) stops generation at the next step."""
    adapters = adapters or [None] * len(conversations)
    limit = getattr(generator.model.config, "max_position_embeddings", 2048)
    fitted = [_fit_prompt(generator.tokenizer, c, limit - config.max_new_tokens) for c in conversations]
    with generator.lock:
        for rows, switched_on in _batches_by_adapter(generator, adapters):
            decoder = _Decoder(generator, [fitted[r] for r in rows], [adapters[r] for r in rows], config,
                               per_row_adapters=switched_on is None)
            with _switched_on(generator, switched_on):
                for event in decoder.run():
                    event.row = rows[event.row]
                    yield event


def _batches_by_adapter(generator: Generator, adapters: list[str | None]) -> list[tuple[list[int], str | None]]:
    """Rows peft can decode in one batch, naming each row's adapter (the base model and LoRA adapters), and the
    rows of each adapter it cannot (DoRA), as (rows, the adapter to switch on for all of them, or None)."""
    configs = getattr(generator.model, "peft_config", {})
    whole = sorted({a for a in adapters if a and getattr(configs.get(a), "use_dora", False)})
    mixed = [i for i, a in enumerate(adapters) if a not in whole]
    return ([(mixed, None)] if mixed else []) + [([i for i, a in enumerate(adapters) if a == name], name)
                                                  for name in whole]


@contextlib.contextmanager
def _switched_on(generator: Generator, adapter: str | None):
    """`adapter` active in every layer while the block runs (none otherwise: rows name their own)."""
    if adapter is None:
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in generator.model.modules() if isinstance(m, BaseTunerLayer)]
    try:
        for layer in layers:
            layer.set_adapter([adapter])
        yield
    finally:
        for layer in layers:
            layer.set_adapter([])


def _fit_prompt(tokenizer, conversation: list[dict], budget: int) -> tuple[str, int]:
    """The conversation as prompt text and its length in tokens; in a long chat the oldest turns are left out
    until it fits the context (never the system message or the newest question)."""
    system = [m for m in conversation if m["role"] == "system"][:1]
    turns = [m for m in conversation if m["role"] != "system"]
    while True:
        prompt = tokenizer.apply_chat_template(system + turns, add_generation_prompt=True, tokenize=False)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if length <= budget:
            return prompt, length
        if len(turns) <= 1:
            raise InputError(
                f"the prompt is {length} tokens; with the new tokens asked for that is over the model's context "
                f"({budget} tokens left for the prompt). Shorten the question, use fewer passages or ask for a "
                "shorter answer."
            )
        turns = turns[2:]  # one earlier question and its answer


class _Decoder:
    """One multi-row generation: grouped prefill, then a joint decode loop over a merged KV cache."""

    def __init__(self, generator: Generator, fitted: list[tuple[str, int]], adapters: list[str | None],
                 config: GenerationConfig, per_row_adapters: bool = True):
        import torch

        self.torch = torch
        self.generator, self.config = generator, config
        self.prompts, self.lengths = [p for p, _ in fitted], [n for _, n in fitted]
        self.model, self.tokenizer = generator.model, generator.tokenizer
        self.keeps_last_logits = accepts_logits_to_keep(self.model)  # asked once, not at every decode step
        self.adapter_names = ([name or "__base__" for name in adapters] if generator.adapters and per_row_adapters
                              else None)
        self.eos = _eos_ids(generator)
        self.picker = _TokenPicker(config, self.eos)
        rows = len(fitted)
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.texts = ["" for _ in range(rows)]
        self.stats: list[RowStats] = []
        self.t0 = time.perf_counter()

    # -- model calls --------------------------------------------------------------------------------------------

    def _forward(self, input_ids, mask, positions, cache, rows: list[int]):
        kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True)
        if self.adapter_names:
            kwargs["adapter_names"] = [self.adapter_names[r] for r in rows]
        if self.keeps_last_logits:
            kwargs["logits_to_keep"] = 1  # a long prompt's full logits would be prompt x vocabulary floats
        with self.torch.inference_mode():
            return self.model(**kwargs).logits[:, -1, :]

    def _prefill(self, rows: list[int]):
        from transformers import DynamicCache

        encoded = self.tokenizer([self.prompts[r] for r in rows], return_tensors="pt", padding=True,
                                 padding_side="left", add_special_tokens=False).to(self.generator.device)
        mask = encoded["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(encoded["input_ids"], mask, positions, cache, rows)
        prompt_ids = [row_ids[row_mask.bool()].tolist() for row_ids, row_mask in zip(encoded["input_ids"], mask)]
        return cache, mask, positions[:, -1], logits, prompt_ids

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> Iterator[Delta | RowDone]:
        torch = self.torch
        self.stats = [RowStats(prompt_tokens=n) for n in self.lengths]
        groups = plan_batches(self.lengths, self.generator.device)
        if len(groups) > 1 and not _mergeable(self.model):
            groups = [sorted(i for g in groups for i in g)]  # one padded prefill instead of merged caches
        parts, prompt_ids = [], {}
        for rows in groups:  # shortest prompts first, so their columns show text soonest
            cache, mask, last_positions, logits, ids = self._prefill(rows)
            prompt_ids.update(zip(rows, ids))
            tokens = self.picker.pick(logits, [prompt_ids[r] for r in rows], [[] for _ in rows])
            parts.append((rows, cache, mask, last_positions, tokens))
            for row, token in zip(rows, tokens):
                yield from self._accept(row, token)
        rows = [r for part in parts for r in part[0]]
        cache, mask, positions, tokens = _merge([p[1:] for p in parts], torch)
        history = [prompt_ids[r] for r in rows]
        while True:
            keep = [i for i, r in enumerate(rows) if not self.stats[r].done]
            if not keep:
                break
            if len(keep) < len(rows):  # finished rows leave the batch: later steps cost only what is still running
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, positions, tokens = mask[index], positions[index], tokens[index]
                rows, history = [rows[i] for i in keep], [history[i] for i in keep]
            positions = positions + 1
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            logits = self._forward(tokens[:, None], mask, positions[:, None], cache, rows)
            picked = self.picker.pick(logits, history, [self.ids[r] for r in rows])
            tokens = torch.tensor(picked, device=mask.device)
            for row, token in zip(rows, picked):
                yield from self._accept(row, token)

    def _accept(self, row: int, token: int) -> Iterator[Delta | RowDone]:
        stats, now = self.stats[row], time.perf_counter() - self.t0
        if token in self.eos:
            yield self._finish(row, now)
            return
        self.ids[row].append(token)
        stats.new_tokens += 1
        if stats.ttft_s is None:
            stats.ttft_s = now
        if self.config.stop_loops and stats.new_tokens >= self.config.min_new_tokens and \
                (cut := loop_start(self.ids[row])) is not None:
            del self.ids[row][cut:]
            yield self._finish(row, now, looped=True)
            return
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        if not text.endswith("\ufffd") and len(text) > len(self.texts[row]):  # not half a multi-byte character
            delta, self.texts[row] = text[len(self.texts[row]):], text
            yield Delta(row, delta)
        if stats.new_tokens >= self.config.max_new_tokens:
            yield self._finish(row, now)

    def _finish(self, row: int, when: float, looped: bool = False) -> RowDone:
        stats = self.stats[row]
        stats.total_s, stats.done = when, True
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)  # incl. a held-back tail
        if looped:  # end on the last whole line or sentence, where one ends in the second half
            text = text.rstrip()
            end = max(text.rfind("\n"), text.rfind(". ") + 1 if ". " in text else -1)
            text = text[:end].rstrip() if end > len(text) // 2 else text
        self.texts[row] = text
        return RowDone(row, text, stats)


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


def _merge(parts, torch):
    """Join the prefilled groups into one batch: KV caches and masks left-padded to the longest, rows stacked."""
    caches, masks, positions, tokens = zip(*parts)
    if len(caches) == 1:
        return caches[0], masks[0], positions[0], torch.tensor(tokens[0], device=masks[0].device)
    from transformers import DynamicCache

    width = max(m.shape[1] for m in masks)
    layers = []
    for index in range(len(caches[0].layers)):
        keys, values = [], []
        for cache, mask in zip(caches, masks):
            pad = width - mask.shape[1]
            layer = cache.layers[index]
            keys.append(torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(layer.values, (0, 0, pad, 0)))
        layers.append((torch.cat(keys), torch.cat(values)))
    mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for m in masks])
    return (DynamicCache(layers), mask, torch.cat(positions),
            torch.tensor([t for group in tokens for t in group], device=mask.device))


def _mergeable(model) -> bool:
    """Caches can be joined across groups only for plain full-attention layers (not sliding-window or
    recurrent ones); other models prefill all rows in one padded batch."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
    except Exception:  # noqa: BLE001 - an unusual config: take the always-correct path
        return False
