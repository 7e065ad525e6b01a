"""A KV cache layer that appends in place: transformers' DynamicLayer concatenates every step, copying the whole cache
(on this CPU a four-row decode step at ~1,000 cached tokens spent more time in those copies than in the model's
matrix products). This one keeps room at the end of each layer's tensors and writes new keys and values into it,
copying only when the room runs out or the decode loop replaces the tensors (joining, dropping rows).
The values are the same; only where they are kept differs. With core.row_attention's one-query attention (which
computes in fp32) a 16-bit model's cache is held in fp32: casting a 16-bit value up is exact, so the answers are the
same, and a step no longer casts every row's whole cache (a four-row bf16 step spent a third of its time there)."""
from __future__ import annotations

from transformers.cache_utils import DynamicCache, DynamicLayer

# Room added when a layer grows: this many positions more than it needs, or half its length if that is more.
ROOM = 256


class _Held:
    """A layer's keys or values: the first positions of the tensor it holds, room included. Assigning a view of that
    tensor which starts at its first position (cutting drafted tokens) keeps the room; anything else is held as is.
    Keys and values keep their own lengths: transformers' crop sets the keys, then reads the values."""

    def __set_name__(self, owner, name):
        self.whole, self.length = f"_{name}", f"_{name}_length"

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        whole, length = getattr(layer, self.whole), getattr(layer, self.length)
        if whole is None or whole.dim() != 4 or whole.shape[2] == length:
            return whole
        return whole[:, :, :length]

    def __set__(self, layer, tensor):
        whole = getattr(layer, self.whole)
        if tensor is None or tensor.dim() != 4:  # reset, or transformers' empty placeholder before the first update
            setattr(layer, self.whole, tensor)
            if tensor is None:
                setattr(layer, self.length, 0)
            return
        prefix = whole is not None and whole.dim() == 4 and tensor.data_ptr() == whole.data_ptr() \
            and tensor.stride() == whole.stride() and tensor.shape[:2] == whole.shape[:2] \
            and tensor.shape[3] == whole.shape[3] and tensor.shape[2] <= whole.shape[2]
        setattr(layer, self.whole, whole if prefix else tensor)
        setattr(layer, self.length, tensor.shape[2])


class RoomyLayer(DynamicLayer):
    """keys/values are views of the first positions of larger tensors (_Held); update writes into the room."""

    keys = _Held()
    values = _Held()

    def __init__(self, held_dtype=None):
        self._keys = self._values = None  # the whole tensors, room included
        self._keys_length = self._values_length = 0
        self.held_dtype = held_dtype  # None: the new states' own dtype
        super().__init__()

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        import torch

        new, length = key_states.shape[2], self._keys_length
        dtype = self.held_dtype or key_states.dtype
        fits = all(whole is not None and whole.dim() == 4 and whole.shape[2] >= length + new
                   and whole.shape[:2] == key_states.shape[:2] and whole.dtype == dtype
                   for whole in (self._keys, self._values))
        # held tensors made under inference mode cannot be written outside it (transformers' layer would copy)
        fits = fits and self._values_length == length \
            and not (self._keys.is_inference() and not torch.is_inference_mode_enabled())
        if not fits:
            capacity = length + new + max(ROOM, length // 2)
            kept = [self.keys, self.values] if length else [None, None]
            for name, old, fresh in zip(("_keys", "_values"), kept, (key_states, value_states)):
                whole = fresh.new_empty(fresh.shape[0], fresh.shape[1], capacity, fresh.shape[3], dtype=dtype)
                if old is not None:
                    if old.shape[:2] != fresh.shape[:2]:  # as transformers' cat would (no broadcasting)
                        raise ValueError(f"cache rows {tuple(old.shape[:2])} != new states' {tuple(fresh.shape[:2])}")
                    whole[:, :, :length] = old
                setattr(self, name, whole)
        self._keys[:, :, length:length + new] = key_states
        self._values[:, :, length:length + new] = value_states
        self._keys_length = self._values_length = length + new
        return self.keys, self.values


def roomy(cache: DynamicCache, held_dtype=None) -> DynamicCache:
    """`cache` with its plain full-attention layers appending in place (others, sliding-window ones, as they are),
    holding keys and values in `held_dtype` (None: as they come); layers already holding tensors keep them (in their
    dtype until they next grow)."""
    layers = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            layers.append(layer)
            continue
        fresh = RoomyLayer(held_dtype)
        if layer.is_initialized:
            fresh.dtype, fresh.device, fresh.is_initialized = layer.dtype, layer.device, True
            fresh.keys, fresh.values = layer.keys, layer.values
        layers.append(fresh)
    cache.layers = layers
    return cache
