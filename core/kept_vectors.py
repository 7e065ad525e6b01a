"""Unit vectors of texts, the latest ones kept per embedder: the passages' sentences that questions read recur from
one question to the next (an evaluation of one document finds the same passages again and again), so only texts
not seen lately are encoded. Used by core.models.Models.encode."""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

# 8,192 of all-MiniLM-L6-v2's 384-float vectors are 12 MiB.
KEPT_VECTORS = 8192
_kept: "weakref.WeakKeyDictionary[object, OrderedDict]" = weakref.WeakKeyDictionary()  # gone with the embedder
_lock = threading.Lock()


def encode(embedder, texts: list[str]):
    """`embedder.encode(texts)` as unit vectors (numpy, one row per text), encoding only the texts not kept."""
    import numpy as np

    if isinstance(texts, str) or not texts:
        return embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    with _lock:
        known = _kept.setdefault(embedder, OrderedDict())
        found = {t: known[t] for t in texts if t in known}
    missing = list(dict.fromkeys(t for t in texts if t not in found))
    if missing:
        vectors = embedder.encode(missing, normalize_embeddings=True, convert_to_numpy=True)
        found.update(zip(missing, (v.copy() for v in vectors)))  # a view would keep its whole batch alive
    with _lock:
        for text in texts:
            known[text] = found[text]
            known.move_to_end(text)
        while len(known) > KEPT_VECTORS:
            known.popitem(last=False)
    return np.stack([found[t] for t in texts])


def forget() -> None:
    """Drop every kept vector (a benchmark's fresh start, a test's)."""
    with _lock:
        _kept.clear()
