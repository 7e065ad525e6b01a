"""A KV cache layer that appends in place: transformers' DynamicLayer concatenates every step, copying the whole cache
(on this CPU a four-row decode step at ~1,000 cached tokens spent more time in those copies than in the model's
matrix products). This one keeps room at the end of each layer's tensors and writes new keys and values into it,
copying only when the room runs out or the decode loop replaces the tensors (joining, dropping rows).
The values are the same; only where they are kept differs."""
from __future__ import annotations

from transformers.cache_utils import DynamicCache, DynamicLayer

# Room added when a layer grows: this many positions more than it needs, or half its length if that is more.
ROOM = 256


class RoomyLayer(DynamicLayer):
    """keys/values are views of the first `length` positions of larger tensors; assigning a view of those same
    tensors that starts at their first position (cutting drafted tokens) keeps the room."""

    def __init__(self):
        self._keys = self._values = None  # the whole tensors, room included
        self._key_length = self._value_length = 0  # apart: transformers' crop sets keys, then reads values
        super().__init__()

    @property
    def keys(self):
        return self._view(self._keys, self._key_length)

    @keys.setter
    def keys(self, tensor):
        self._keys, length = self._held(self._keys, tensor)
        self._key_length = length if length is not None else self._key_length

    @property
    def values(self):
        return self._view(self._values, self._value_length)

    @values.setter
    def values(self, tensor):
        self._values, length = self._held(self._values, tensor)
        self._value_length = length if length is not None else self._value_length

    @staticmethod
    def _view(whole, length):
        if whole is None or whole.dim() != 4:
            return whole
        return whole if whole.shape[2] == length else whole[:, :, :length]

    @staticmethod
    def _held(whole, tensor):
        """(the tensor to keep, the new length): a prefix of `whole` keeps `whole`; anything else is kept as is."""
        if tensor is None or tensor.dim() != 4:
            return tensor, 0 if tensor is None else None
        if whole is not None and whole.dim() == 4 and tensor.data_ptr() == whole.data_ptr() \
                and tensor.stride() == whole.stride() and tensor.shape[:2] == whole.shape[:2] \
                and tensor.shape[3] == whole.shape[3] and tensor.shape[2] <= whole.shape[2]:
            return whole, tensor.shape[2]
        return tensor, tensor.shape[2]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        import torch

        new, length = key_states.shape[2], self._key_length
        fits = all(whole is not None and whole.dim() == 4 and whole.shape[2] >= length + new
                   and whole.shape[:2] == key_states.shape[:2] for whole in (self._keys, self._values))
        # held tensors made under inference mode cannot be written outside it (transformers' layer would copy)
        fits = fits and self._value_length == length \
            and not (self._keys.is_inference() and not torch.is_inference_mode_enabled())
        if not fits:
            capacity = length + new + max(ROOM, length // 2)
            kept = [self.keys, self.values] if length else [None, None]
            for name, old, fresh in zip(("_keys", "_values"), kept, (key_states, value_states)):
                whole = fresh.new_empty(fresh.shape[0], fresh.shape[1], capacity, fresh.shape[3])
                if old is not None:
                    if old.shape[:2] != fresh.shape[:2]:  # as transformers' cat would (no broadcasting)
                        raise ValueError(f"cache rows {tuple(old.shape[:2])} != new states' {tuple(fresh.shape[:2])}")
                    whole[:, :, :length] = old
                setattr(self, name, whole)
        self._keys[:, :, length:length + new] = key_states
        self._values[:, :, length:length + new] = value_states
        self._key_length = self._value_length = length + new
        return self.keys, self.values


def roomy(cache: DynamicCache) -> DynamicCache:
    """`cache` with its plain full-attention layers appending in place (others, sliding-window ones, as they are);
    layers already holding tensors keep them."""
    layers = []
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            layers.append(layer)
            continue
        fresh = RoomyLayer()
        if layer.is_initialized:
            fresh.dtype, fresh.device, fresh.is_initialized = layer.dtype, layer.device, True
            fresh.keys, fresh.values = layer.keys, layer.values
        layers.append(fresh)
    cache.layers = layers
    return cache
