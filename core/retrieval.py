"""Hybrid search: vector search merged with keyword search (BM25, core/keywords.py) by reciprocal rank fusion.

Vector search finds passages that mean the same thing; BM25 finds the exact names, numbers and rare words that
small embedding models blur. Reciprocal rank fusion merges the two rankings without calibrating their scores.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.keywords import matched_spans
from core.store import Store

RRF_K = 60  # the constant from Cormack et al. (2009); damps the weight of the very top ranks


@dataclass
class Hit:
    text: str
    file: str
    page: str
    score: float  # cosine similarity in [-1, 1], for every hit, however it was found
    chunk_id: str
    vector_rank: int | None = None  # 1-based rank in vector search, None if not among its candidates
    keyword_rank: int | None = None  # 1-based rank in BM25 search, None if no query word matched


def relevant(hits: list[Hit], min_score: float) -> list[Hit]:
    """The hits worth showing the model: the best one, those at or above min_score, and keyword matches
    (an exact name or number can matter even where the embedding sees little similarity)."""
    return [h for i, h in enumerate(hits) if i == 0 or h.score >= min_score or h.keyword_rank is not None]


def hit_to_source(hit: Hit, question: str | None = None) -> dict:
    """A passage as the UI, the CLI and saved results show it; `matched`: [start, end] of the question's words in it."""
    found_by = [name for name, rank in (("vector", hit.vector_rank), ("keyword", hit.keyword_rank)) if rank]
    matched = [list(span) for span in matched_spans(question, hit.text)] if question else []
    return {"file": hit.file, "page": hit.page, "score": round(hit.score, 4), "text": hit.text, "found_by": found_by,
            "matched": matched}


def reciprocal_rank_fusion(rankings: list[list[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Merge rankings of ids: each id scores sum(1 / (k + rank)) over the rankings it appears in."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: pair[1], reverse=True)


class Retriever:
    """Hybrid search over one store's knowledge bases."""

    def __init__(self, store: Store):
        self.store = store

    def search(self, kb: str, embedding: list[float], top_k: int, text: str | None = None) -> list[Hit]:
        """Top passages: vector search, fused with keyword search when `text` is given."""
        kb = self.store.require_kb(kb)
        listed = self.store.listed_ingest_ids(kb)
        if not listed:
            return []
        candidates = max(4 * top_k, 20)
        by_id: dict[str, Hit] = {}
        for chunk_id, doc, meta, cosine in self.store.chroma.nearest(self.store.collection_name(kb), embedding,
                                                                      candidates):
            if meta.get("ingest_id") not in listed:
                continue  # a file still being written (or left by a killed ingest): not searchable yet
            by_id[chunk_id] = Hit(doc, meta.get("file", "?"), str(meta.get("page", "")), cosine, chunk_id,
                                  vector_rank=len(by_id) + 1)
        vector_ranking = list(by_id)
        if text is None:
            return [by_id[i] for i in vector_ranking[:top_k]]
        keyword_ranking = [chunk_id for chunk_id, _ in self.store.keyword_search(kb, text, candidates)]
        chosen = [chunk_id for chunk_id, _ in reciprocal_rank_fusion([vector_ranking, keyword_ranking])[:top_k]]
        missing = [chunk_id for chunk_id in chosen if chunk_id not in by_id]
        if missing:  # found by keywords alone: fetch them, and score them by cosine like the rest
            got = self.store.collection(kb).get(ids=missing, include=["documents", "metadatas", "embeddings"])
            for chunk_id, doc, meta, vector in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"]):
                if meta.get("ingest_id") not in listed:
                    continue  # unlisted since (the keyword index changes with the listing, so only in a race)
                cosine = float(sum(a * b for a, b in zip(embedding, vector)))  # both are unit length
                by_id[chunk_id] = Hit(doc, meta.get("file", "?"), str(meta.get("page", "")), cosine, chunk_id)
        for rank, chunk_id in enumerate(keyword_ranking, start=1):
            if chunk_id in by_id:
                by_id[chunk_id].keyword_rank = rank
        # A chunk found by keywords alone may have been deleted since: skip it.
        return [by_id[chunk_id] for chunk_id in chosen if chunk_id in by_id]
