"""core/kv_cache.py: a cache layer that appends in place holds exactly what transformers' concatenating layer holds,
through the decode loop's own edits (cutting drafted tokens, dropping rows, cutting padding columns)."""
import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from core.kv_cache import RoomyLayer, roomy


def _states(rows, length, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 3, length, 8, generator=g).to(dtype),
            torch.randn(rows, 3, length, 8, generator=g).to(dtype))


@pytest.mark.parametrize("states_dtype,held_dtype", [(torch.float32, None), (torch.bfloat16, torch.float32)])
def test_appends_in_place_and_follows_every_edit_as_the_plain_layer_does(states_dtype, held_dtype):
    """Held in fp32, a bf16 model's keys and values are the plain layer's values cast up, exactly."""
    plain, room = DynamicLayer(), RoomyLayer(held_dtype)
    held = held_dtype or states_dtype
    steps = [("update", 2, 700), ("update", 2, 188), ("update", 2, 1), ("cut", 1), ("update", 2, 2),
             ("select", [1]), ("update", 1, 1), ("drop_first", 5), ("update", 1, 1), ("crop", 3), ("update", 1, 1),
             ("update", 1, 300)]
    for n, step in enumerate(steps):
        if step[0] == "update":
            k, v = _states(step[1], step[2], n, states_dtype)
            out_plain, out_room = plain.update(k, v), room.update(k, v)
            assert all(b.dtype == held and torch.equal(a.to(held), b) for a, b in zip(out_plain, out_room)), step
        elif step[0] == "cut":  # prompt lookup: the drafted token the model did not confirm leaves the cache
            for layer in (plain, room):
                keep = layer.get_seq_length() - step[1]
                layer.keys, layer.values = layer.keys[:, :, :keep], layer.values[:, :, :keep]
        elif step[0] == "crop":  # transformers' own edit: keys cut, then values read and cut
            plain.crop(-step[1])
            room.crop(-step[1])
        elif step[0] == "select":  # a finished row leaves the batch
            for layer in (plain, room):
                layer.batch_select_indices(torch.tensor(step[1]))
        else:  # columns only padding used any more are cut off
            for layer in (plain, room):
                layer.keys, layer.values = layer.keys[:, :, step[1]:], layer.values[:, :, step[1]:]
        assert torch.equal(plain.keys.to(held), room.keys) and torch.equal(plain.values.to(held), room.values), step
        assert plain.get_seq_length() == room.get_seq_length(), step


def test_a_decode_step_writes_into_the_room_without_copying_the_cache():
    layer = RoomyLayer()
    layer.update(*_states(1, 700, 0))
    whole = layer._keys
    assert whole.shape[2] > 700  # room kept at the end
    for n in range(5):
        keys, _ = layer.update(*_states(1, 1, n + 1))
        assert layer._keys is whole and keys.data_ptr() == whole.data_ptr() and keys.shape[2] == 701 + n
    layer.keys, layer.values = layer.keys[:, :, :702], layer.values[:, :, :702]  # a cut keeps the room
    layer.update(*_states(1, 1, 9))
    assert layer._keys is whole and layer.get_seq_length() == 703


def test_only_plain_full_attention_layers_are_replaced_and_held_tensors_are_kept():
    k, v = _states(2, 10, 0)
    cache = DynamicCache([(k, v), (k + 1, v + 1)])
    roomy(cache)
    assert all(type(layer) is RoomyLayer for layer in cache.layers)
    assert torch.equal(cache.layers[1].keys, k + 1) and cache.get_seq_length() == 10
    cache.update(*_states(2, 1, 3), layer_idx=0)
    assert cache.layers[0].get_seq_length() == 11


def test_a_cache_made_under_inference_mode_still_grows_outside_it():
    layer = RoomyLayer()
    with torch.inference_mode():
        layer.update(*_states(1, 5, 0))
    k, v = _states(1, 1, 1)
    with torch.no_grad():
        keys, values = layer.update(k, v)
    assert keys.shape[2] == 6 and torch.equal(keys[:, :, 5:], k) and torch.equal(values[:, :, 5:], v)
