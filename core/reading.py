"""What a RAG answer reads: which retrieved passages the model is shown, in what order, and when the documents
do not seem to cover the question at all.

Measured on reading sets with known answers (docs/EVALUATION.md): the bundled 135M model answers best shown one
passage, and the passage holding the answer comes first more often when passages are ranked by their single
sentence nearest the question than by the whole passage's similarity (a 200-token passage blurs one fact among
others). The same sentence similarity tells questions the documents answer from those they do not better than
the passage similarity does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InputError
from core.retrieval import Hit

# A sentence ends at . ! or ? followed by space and a capital, digit or quote, or at a blank line. Abbreviations
# like "U.S. Army" split wrongly now and then; the cost is one sentence scored in two parts.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")

# Below this many parameters a model reads one passage better than several (measured for 135M; 1B is a guess
# at where that stops holding, see docs/EVALUATION.md).
SMALL_MODEL_PARAMETERS = 1_000_000_000

NOT_IN_DOCUMENTS = "Your documents do not seem to answer this: no passage is close to the question."


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


@dataclass
class Reading:
    """The passages of one RAG answer: `shown` to the model (best first), the `others` retrieved but not shown,
    the best sentence similarity found, and whether that is too low to answer from (`covered` False)."""
    shown: list[Hit]
    others: list[Hit]
    best_similarity: float
    covered: bool


def check_reading(settings, read_passages: int | None, min_relevance: float | None) -> tuple[int, float]:
    """The reading settings for one question (None: the settings' own), checked."""
    read_passages = settings.read_passages if read_passages is None else read_passages
    min_relevance = settings.min_relevance if min_relevance is None else min_relevance
    if read_passages < 0:
        raise InputError(f"passages to read must be 0 (as suits the model) or more, not {read_passages}")
    if not 0 <= min_relevance <= 1:
        raise InputError(f"the 'not in your documents' threshold is a similarity from 0 to 1, not {min_relevance}")
    return read_passages, min_relevance


def passages_to_read(model_parameters: int, setting: int) -> int:
    """How many passages the model reads: the setting, or where it is 0, 1 for small models and all for others."""
    if setting > 0:
        return setting
    return 1 if model_parameters < SMALL_MODEL_PARAMETERS else 0  # 0: all of them


def read(question: str, hits: list[Hit], encode, passages: int, min_relevance: float,
         rerank=None) -> Reading:
    """Rank `hits` by their sentence nearest the question (or by `rerank(question, texts)` scores, a cross-encoder,
    when given), keep the first `passages` (0: all), and judge coverage by the best sentence similarity.
    `encode(texts)` returns unit vectors (the knowledge base's embedder)."""
    if not hits:
        return Reading([], [], 0.0, False)
    parts = [(n, s) for n, hit in enumerate(hits) for s in (sentences(hit.text) or [hit.text])]
    vectors = encode([question] + [s for _, s in parts])
    best = [-1.0] * len(hits)
    for (n, _), vector in zip(parts, vectors[1:]):
        best[n] = max(best[n], float(vectors[0] @ vector))
    scores = list(rerank(question, [h.text for h in hits])) if rerank else best
    order = sorted(range(len(hits)), key=lambda n: (-scores[n], n))  # ties keep retrieval's order
    ranked = [hits[n] for n in order]
    cut = passages if passages > 0 else len(ranked)
    top = max(best)
    return Reading(ranked[:cut], ranked[cut:], top, top >= min_relevance)
