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
        self._length = 0
        super().__init__()

    @property
    def keys(self):
        return self._view(self._keys)

    @keys.setter
    def keys(self, tensor):
        self._keys, length = self._held(self._keys, tensor)
        self._length = length if length is not None else self._length

    @property
    def values(self):
        return self._view(self._values)

    @values.setter
    def values(self, tensor):
        self._values, length = self._held(self._values, tensor)
        self._length = length if length is not None else self._length

    def _view(self, whole):
        if whole is None or whole.dim() != 4:
            return whole
        return whole if whole.shape[2] == self._length else whole[:, :, :self._length]

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
        new = key_states.shape[2]
        if self._keys is None or self._keys.dim() != 4 or self._keys.shape[2] < self._length + new \
                or self._keys.shape[:2] != key_states.shape[:2]:
            capacity = self._length + new + max(ROOM, self._length // 2)
            for name, old, fresh in (("_keys", self._keys, key_states), ("_values", self._values, value_states)):
                whole = fresh.new_empty(fresh.shape[0], fresh.shape[1], capacity, fresh.shape[3])
                if self._length:
                    whole[:, :, :self._length] = old[:, :, :self._length]
                setattr(self, name, whole)
        self._keys[:, :, self._length:self._length + new] = key_states
        self._values[:, :, self._length:self._length + new] = value_states
        self._length += new
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
