"""Keyword search (BM25) and reciprocal rank fusion, to merge it with vector search.

Vector search finds passages that mean the same thing; BM25 finds the exact names, numbers and rare words that
small embedding models blur. Reciprocal rank fusion merges the two rankings without calibrating their scores.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

RRF_K = 60  # the constant from Cormack et al. (2009); damps the weight of the very top ranks


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


_WORD = re.compile(r"\w+")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def matched_spans(query: str, text: str) -> list[tuple[int, int]]:
    """(start, end) of the words in `text` that match a word of the query the way keyword search matches them:
    same English stem, stop words ignored. For highlighting passages."""
    stemmer, stop = _stemmer(), _stopwords()
    wanted = {stemmer.stemWord(w) for w in (m.group().lower() for m in _WORD.finditer(query)) if w not in stop}
    return [(m.start(), m.end()) for m in _WORD.finditer(text)
            if (w := m.group().lower()) not in stop and stemmer.stemWord(w) in wanted]


@dataclass
class KeywordIndex:
    """A BM25 index over one knowledge base's chunks, identified by their Chroma ids."""

    ids: list[str]
    _bm25: object
    _stemmer: object

    @classmethod
    def build(cls, ids: list[str], texts: list[str]) -> "KeywordIndex":
        import bm25s

        stemmer = _stemmer()
        bm25 = bm25s.BM25()
        if texts:
            bm25.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
        return cls(list(ids), bm25, stemmer)

    def search(self, query: str, limit: int) -> list[tuple[str, float]]:
        """Chunk ids with a positive BM25 score for the query, best first."""
        import bm25s

        if not self.ids:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False)
        vocabulary = self._bm25.vocab_dict
        tokens = [[t for t in tokens[0] if t in vocabulary]]
        if not tokens[0]:
            return []
        docs, scores = self._bm25.retrieve(tokens, k=min(limit, len(self.ids)), show_progress=False, n_threads=1)
        return [(self.ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]


def reciprocal_rank_fusion(rankings: list[list[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Merge rankings of ids: each id scores sum(1 / (k + rank)) over the rankings it appears in."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: pair[1], reverse=True)
