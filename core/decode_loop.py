"""The running decode batch of one model (core.generation's Batcher steps it): prompts prefilled in groups and
pieces, rows joined into one left-padded KV cache, one token per row per step, each row with its own adapter, prompt
lookup for a row decoding alone, finished rows leaving."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from core import lean_step
from core.decode_rows import (FINISHED, Cohort, Delta, Request, Row, RowDone, loop_start, plan_batches,
                              requests_of)
from core.errors import InputError
from core.models import Generator, accepts_logits_to_keep

# A row decoding alone checks up to this many tokens a step that its prompt suggests (prompt lookup: the tokens
# after the first earlier occurrence of its last PROMPT_LOOKUP_NGRAM tokens, or of its last token). A RAG answer
# copies from its passages: the same greedy answers in fewer steps. One token, because a lone row is computed as
# two rows anyway (core/models.py), so checking one costs about a plain step; more cost more per step than they
# saved: decode 2.74x plain `generate` with 1, 2.40x with 2, 2.64x with 3, 2.21x with 4 (bench_one_column.py,
# one run, 2026-12-04).
PROMPT_LOOKUP_TOKENS, PROMPT_LOOKUP_NGRAM = 1, 2
# A long prompt is prefilled in pieces of this many tokens on a CPU, with one decode step of the running rows
# between pieces, so the columns and visitors already answering keep streaming while it is read.
PREFILL_CHUNK_TOKENS = 512


def eos_ids(generator: Generator) -> set[int]:
    ids = generator.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if generator.tokenizer.eos_token_id is not None:
        ids.add(generator.tokenizer.eos_token_id)
    return ids


class Prefill:
    """Rows whose prompts are being read together: left-padded ids, their mask and the cache filled so far."""

    def __init__(self, rows: list[Row], pad_id: int, torch, model, device: str):
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in rows)
        self.rows = rows
        self.ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows], device=device)
        self.mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows],
                                 device=device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        self.cache = DynamicCache(config=model.config)
        if device == "cpu":  # appending in place; on CUDA a step's copy is cheap and the proven path stays
            from core.kv_cache import roomy
            from core.row_attention import held_dtype

            roomy(self.cache, held_dtype(model))
        self.read = 0  # prompt columns prefilled so far

    @property
    def left(self) -> int:
        return self.ids.shape[1] - self.read


@dataclass
class Batch:
    """The rows decoding together: one KV cache, the attention mask, each row's position and its newest token."""
    cache: object
    mask: object
    positions: object
    tokens: object
    rows: list[Row]


class Loop:
    """One run of the decode loop (while the model has work): prefill pieces and decode steps, interleaved."""

    def __init__(self, generator: Generator):
        import torch

        self.torch, self.generator = torch, generator
        self.model, self.tokenizer, self.device = generator.model, generator.tokenizer, generator.device
        self.mergeable = mergeable(self.model)
        on_cpu = not self.device.startswith("cuda")  # a GPU reads a long prompt in one go at little cost
        self.chunk = PREFILL_CHUNK_TOKENS if on_cpu and self.mergeable else None
        self.keeps_last_logits = accepts_logits_to_keep(self.model)
        self.lean = on_cpu and lean_step.usable(self.model)  # decode steps without transformers' plumbing
        self.per_row_adapters = bool(generator.adapters)
        self.tuner_layers: list | None = None  # the model's LoRA layers, found when first needed
        self.active: str | None = None  # in mode None, the adapter switched on for the passes (see _forward)
        self.eos = eos_ids(generator)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos) if self.eos else 0)
        self.mode: str | None = None
        self.prefills: list[Prefill] = []
        self.read: list[Prefill] = []  # read, waiting for the rest of their call's prompts (Request.together)
        self.batch: Batch | None = None

    @property
    def idle(self) -> bool:
        return self.batch is None and not self.prefills

    def rows(self) -> list[Row]:
        return [r for p in self.prefills + self.read for r in p.rows] + (self.batch.rows if self.batch else [])

    def switch(self, mode: str | None) -> None:
        """Switch `mode` (a DoRA adapter) on in every layer, or off (None: rows name their own adapter, and no
        adapter stays on in the layers: the loop's end calls this)."""
        if mode == self.mode and self.active is None:
            return
        self._activate([mode] if mode else [])
        self.mode, self.active = mode, None

    def admit(self, waiting: list[Cohort]) -> None:
        """Take waiting rows into the run, in order of arrival, while they can share the batch: the same mode, and
        a model whose caches can be joined (otherwise one call's rows at a time)."""
        taken: list[Cohort] = []
        attached = getattr(self.model, "peft_config", {})
        while waiting:
            cohort = waiting[0]
            request = cohort.rows[0].request
            if request.cancelled:
                waiting.pop(0)
                continue
            if any(r.adapter and r.adapter not in attached for r in cohort.rows):
                waiting.pop(0)  # replaced by a newer version while this call waited: only this call fails
                request.cancelled = True
                request.events.put(InputError("the adapter was trained again while this question waited; ask again"))
                continue
            busy = not self.idle or taken
            if busy and (cohort.mode != self.mode or not self.mergeable):
                break
            self.switch(cohort.mode)
            taken.append(waiting.pop(0))
        rows = [r for c in taken for r in c.rows]
        if not rows:
            return
        # A call whose rows start together is grouped on its own, so no other call's rows wait with it.
        calls: dict[int, list[Row]] = {}
        for row in rows:
            calls.setdefault(id(row.request) if row.request.together else 0, []).append(row)
        try:
            prefills = []
            for part in calls.values():
                groups = plan_batches([len(r.prompt_ids) for r in part], self.device) if self.mergeable \
                    else [list(range(len(part)))]  # one padded prefill instead of joined caches
                prefills += [Prefill([part[i] for i in g], self.pad_id, self.torch, self.model, self.device)
                             for g in groups]
            self.prefills += prefills  # all or none: rows whose callers hear of an error are not read
        except Exception as exc:  # these rows are in no batch yet: their callers must hear of it here
            for request in requests_of(rows):
                request.events.put(copy.copy(exc))

    def step(self) -> None:
        """Read one piece of the prompt with the least left to read (short prompts overtake long ones), then decode
        one token for every running row."""
        self.prefills = [p for p in self.prefills if not all(r.done for r in p.rows)]
        self.read = [p for p in self.read if not all(r.done for r in p.rows)]
        if self.prefills:
            prefill = min(self.prefills, key=lambda p: p.left)
            if self._read_piece(prefill):
                self._join(prefill)
                self.prefills.remove(prefill)  # only now: a failed join leaves the rows where errors reach them
        if self.batch is not None:
            self._decode_step()

    def _forward(self, input_ids, mask, positions, cache, rows: list[Row], last: int = 1):
        """The logits of the last `last` positions (of the last one alone, as [rows, vocabulary], by default)."""
        kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True)
        if self.per_row_adapters and self.mode is None:
            names = {r.adapter for r in rows}
            # peft's batch of mixed adapters hooks every layer for each call (~12 ms here) and splits each layer's
            # rows: rows that all use one adapter, or none, run the plain forward with that adapter switched on
            # (kept on from pass to pass while it stays the same; off again when the loop ends: switch).
            one = next(iter(names)) if len(names) == 1 else None
            if len(names) > 1:
                kwargs["adapter_names"] = [r.adapter or "__base__" for r in rows]
            if one != self.active:
                self._activate([one] if one else [])
                self.active = one
        if self.lean and "adapter_names" not in kwargs:
            logits = lean_step.forward(self.model, input_ids, mask, positions, cache, last)
            if logits is not None:
                return logits
        if self.keeps_last_logits:
            kwargs["logits_to_keep"] = last  # a long prompt's full logits would be prompt x vocabulary floats
        logits = self.model(**kwargs).logits
        return logits[:, -1, :] if last == 1 else logits[:, -last:, :]

    def _activate(self, adapters: list[str]) -> None:
        """Make `adapters` the active ones in every LoRA layer."""
        if self.tuner_layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self.tuner_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for layer in self.tuner_layers:
            layer.set_adapter(adapters, inference_mode=True)

    def _read_piece(self, prefill: Prefill) -> bool:
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

    def _join(self, prefill: Prefill) -> None:
        """Add the rows just prefilled to the running batch (the caches and masks left-padded to one width); the
        rows of a call that starts together wait until its last prompt is read, then join in one copy."""
        request = prefill.rows[0].request
        parts = [prefill]
        if request.together:
            if any(p.rows[0].request is request for p in self.prefills if p is not prefill):
                self.read.append(prefill)
                return
            parts = [p for p in self.read if p.rows[0].request is request] + [prefill]
            self.read = [p for p in self.read if p.rows[0].request is not request]
        torch = self.torch
        batches = [Batch(p.cache, p.mask, p.positions[:, -1], torch.tensor(p.tokens, device=p.mask.device), p.rows)
                   for p in parts]
        self.batch = joined(([self.batch] if self.batch is not None else []) + batches, torch)
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

    def _draft(self, row: Row) -> list[int]:
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
        if held > 0 and self.eos:  # the end token is held back until min_new_tokens, as the TokenPicker does
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
        first = int(batch.mask.any(0).int().argmax()) if self.mergeable else 0  # plain full-attention layers only
        if first:
            batch.mask = batch.mask[:, first:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _pick(self, rows: list[Row], logits) -> list[int]:
        """Each row's next token, by its own call's settings."""
        picked = [0] * len(rows)
        by_request: dict[int, tuple[Request, list[int]]] = {}
        for i, row in enumerate(rows):
            by_request.setdefault(id(row.request), (row.request, []))[1].append(i)
        for request, index in by_request.values():
            part = logits if len(index) == len(rows) else logits[index]
            tokens = request.picker.pick(part, [rows[i].prompt_ids for i in index], [rows[i].ids for i in index])
            for i, token in zip(index, tokens):
                picked[i] = token
        return picked

    def _accept(self, row: Row, token: int) -> None:
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

    def _finish(self, row: Row, when: float, looped: bool = False) -> None:
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
            request.events.put(FINISHED)


def joined(batches: list[Batch], torch) -> Batch:
    """One batch of all: KV caches and masks left-padded to the widest, rows stacked, each tensor copied once."""
    from transformers import DynamicCache

    if len(batches) == 1:
        return batches[0]
    width = max(b.mask.shape[1] for b in batches)

    def padded(tensor, length):  # on the left, along the sequence (the cache's third, the mask's second axis)
        pad = width - length
        if not pad:
            return tensor
        return torch.nn.functional.pad(tensor, (0, 0, pad, 0) if tensor.dim() == 4 else (pad, 0))

    def stacked(tensors):
        return torch.cat([padded(t, b.mask.shape[1]) for t, b in zip(tensors, batches)])

    layers = [(stacked([layer.keys for layer in group]), stacked([layer.values for layer in group]))
              for group in zip(*(b.cache.layers for b in batches))]
    cache = DynamicCache(layers)
    if batches[0].mask.device.type == "cpu":
        from core.kv_cache import roomy

        roomy(cache, getattr(batches[0].cache.layers[0], "held_dtype", None))
    return Batch(cache, stacked([b.mask for b in batches]), torch.cat([b.positions for b in batches]),
                 torch.cat([b.tokens for b in batches]), [r for b in batches for r in b.rows])


def mergeable(model) -> bool:
    """Caches can be joined across groups only for plain full-attention layers (not sliding-window or
    recurrent ones); other models prefill all rows in one padded batch."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)
    except Exception:  # noqa: BLE001 - an unusual config: take the always-correct path
        return False
