"""Knowledge bases as a service: create, configure and re-index, ingest files and web pages, preview, delete, and
search. Owns the store and the retriever for one data folder."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from core.catalog import Chunking
from core.config import Settings
from core.errors import InputError
from core.ingest import IngestResult, check_chunking, ingest_files, reindex_files
from core.limits import Quota
from core.models import Models, describe_model
from core.names import DEFAULT_KB, check_kb_name
from core.progress import ProgressFn
from core.retrieval import Hit, Retriever
from core.store import Store
from core.web import looks_like_url

MAX_QUESTION_CHARS = 4000


def check_question(question: str) -> str:
    question = (question or "").strip()
    if not question:
        raise InputError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise InputError(f"the question is {len(question)} characters; the limit is {MAX_QUESTION_CHARS}")
    return question


class KnowledgeBases:
    def __init__(self, settings: Settings, store: Store, models: Models, quota: Quota):
        self.settings, self.store, self.models, self.quota = settings, store, models, quota
        self.retriever = Retriever(store)

    # ---- listing ------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.store.kb_names()

    def exists(self, kb: str) -> bool:
        return self.store.has_kb(kb)

    def last_used(self) -> str | None:
        """The knowledge base a file was last added to (else the newest), for pickers to start on."""
        return self.store.catalog.last_used_kb()

    def list(self) -> list[dict]:
        out = []
        for name in self.store.kb_names():
            files = self.store.files(name)
            out.append({"name": name, "files": len(files), "chunks": sum(f.chunks for f in files)})
        return out

    def show(self, kb: str) -> dict:
        kb = self.store.require_kb(kb)
        chunking = self.chunking(kb)
        ocr_pages = self.store.catalog.ocr_pages(kb)
        files = [
            {"file": f.name, "pages": f.pages, "chunks": f.chunks, "ocr_pages": ocr_pages.get(f.name, []),
             "added": time.strftime("%Y-%m-%d %H:%M", time.localtime(f.added)), "sha256": f.sha256,
             "chunk_size": f.chunk_size, "chunk_overlap": f.chunk_overlap,
             # split with other settings than the knowledge base's (an interrupted re-index): re-index finishes it
             "needs_reindex": (f.chunk_size, f.chunk_overlap) != (chunking.size, chunking.overlap)}
            for f in self.store.files(kb)
        ]
        return {"name": kb, **chunking.to_dict(), "files": files, "chunks": sum(f["chunks"] for f in files)}

    def chunking(self, kb: str) -> Chunking:
        """The knowledge base's chunk settings; the configured defaults for one that does not exist yet."""
        return self.store.chunking(kb) or Chunking(self.settings.chunk_size, self.settings.chunk_overlap)

    def preview(self, kb: str, name: str) -> dict:
        """A file's chunks as the model will read them, with page labels and token counts."""
        kb = self.store.require_kb(kb)
        record = self.store.file(kb, name)
        if record is None:
            raise InputError(f"no such file in knowledge base {kb!r}", subject=name)
        tokenizer = self.models.embedder.tokenizer
        chunks = [{"page": c["page"], "tokens": len(tokenizer.encode(c["text"], add_special_tokens=False)),
                   "text": c["text"]} for c in self.store.file_chunks(record)]
        return {"kb": kb, "file": name, "pages": record.pages, "chunks": chunks}

    def fact_chunks(self, kb: str) -> list[dict]:
        """The searchable chunks that questions are generated from; refused when there are none."""
        chunks = self.store.listed_chunks(kb)
        if not chunks:
            raise InputError("the knowledge base has no documents yet", subject=kb)
        return chunks

    def index_size(self, kb: str) -> dict:
        return self.store.index_bytes(self.store.require_kb(kb))

    # ---- changing -------------------------------------------------------------------------------------------------
    def _wanted_chunking(self, stored: Chunking | None, chunk_size: int | None, chunk_overlap: int | None) -> Chunking:
        """The chunking asked for: what is given, else what the knowledge base keeps, else the defaults."""
        base = stored or Chunking(self.settings.chunk_size, self.settings.chunk_overlap)
        wanted = Chunking(base.size if chunk_size is None else chunk_size,
                          base.overlap if chunk_overlap is None else chunk_overlap)
        return check_chunking(wanted, self.models.embedder)

    def check_embedder(self, kb: str) -> None:
        """A knowledge base's vectors only make sense with the embedding model that made them."""
        built_with = self.store.embed_model(kb)
        if built_with and built_with != self.settings.embed_model:
            raise InputError(
                f"built with the embedding model {describe_model(built_with)}, but the app now uses "
                f"{describe_model(self.settings.embed_model)}; set LAB_EMBED_MODEL back, or use a new knowledge base",
                subject=kb,
            )

    def create(self, kb: str, chunk_size: int | None = None, chunk_overlap: int | None = None) -> str:
        kb = check_kb_name(kb)
        if self.store.has_kb(kb):
            raise InputError("a knowledge base with this name already exists", subject=kb)
        return self.store.create_kb(kb, self.settings.embed_model, self._wanted_chunking(None, chunk_size, chunk_overlap))

    def configure(self, kb: str, chunk_size: int | None = None, chunk_overlap: int | None = None,
                  progress: ProgressFn | None = None) -> dict:
        """Change a knowledge base's chunk settings and re-index its files with them (from their stored text).
        Files already split this way are left alone, so running it again after an interruption finishes the job."""
        kb = self.store.require_kb(kb)
        self.check_embedder(kb)
        chunking = self._wanted_chunking(self.store.chunking(kb), chunk_size, chunk_overlap)
        self.store.set_chunking(kb, chunking)
        stale = [f for f in self.store.files(kb) if (f.chunk_size, f.chunk_overlap) != (chunking.size, chunking.overlap)]
        results = reindex_files(kb, stale, chunking, self.store, self.models.embedder, progress) if stale else []
        return {"name": kb, **chunking.to_dict(), "results": [r.to_dict() for r in results]}

    def rename(self, kb: str, new_name: str) -> str:
        return self.store.rename_kb(kb, new_name)

    def delete(self, kb: str) -> None:
        self.store.delete_kb(kb)

    def delete_file(self, kb: str, name: str) -> dict:
        record = self.store.delete_file(kb, name)
        return {"file": record.name, "chunks_removed": record.chunks}

    def ingest(self, paths: list[str | Path], kb: str = DEFAULT_KB, progress: ProgressFn | None = None,
               chunk_size: int | None = None, chunk_overlap: int | None = None,
               recursive: bool = False, should_stop: Callable[[], bool] | None = None) -> list[IngestResult]:
        """Add files, folders (their subfolders too with `recursive`), .zip archives or web pages. Chunk settings
        apply to a new knowledge base; an existing one keeps its own (change them with configure, which
        re-indexes). Once `should_stop()` is true nothing more is stored: the files written stay, the rest are
        listed as cancelled."""
        kb = check_kb_name(kb)
        if not paths:
            raise InputError("no files given")
        self.quota.check_passages(lambda: sum(k["chunks"] for k in self.list()))
        self.quota.check_web_pages(sum(map(looks_like_url, paths)))
        self.quota.spend("ingest")
        self.check_embedder(kb)  # a knowledge base that does not exist yet passes
        current = self.store.chunking(kb)
        chunking = self._wanted_chunking(current, chunk_size, chunk_overlap)
        if current is not None and current != chunking:
            raise InputError(
                f"it splits text into chunks of {current.size} tokens with {current.overlap} overlap; to change "
                f"that, re-index it (Knowledge base tab, or: python -m core kb configure {kb} --chunk-size N "
                f"--overlap N)", subject=kb)
        # In demo mode web pages are fetched only from public addresses (core.web.fetch_url, public_only).
        return ingest_files(paths, kb, chunking, self.settings.embed_model, self.settings.max_file_mb,
                            self.store, self.models.embedder, progress, public_only=self.settings.demo_mode,
                            recursive=recursive, should_stop=should_stop)

    # ---- searching -----------------------------------------------------------------------------------------------
    def search(self, question: str, kb: str = DEFAULT_KB, top_k: int | None = None) -> tuple[list[Hit], float]:
        """The top passages and the retrieval time in ms."""
        question = check_question(question)
        top_k = self.settings.top_k if top_k is None else top_k
        if not 1 <= top_k <= 50:
            raise InputError(f"top-k must be between 1 and 50, got {top_k}")
        kb = self.store.require_kb(kb)
        self.check_embedder(kb)
        embedder = self.models.embedder  # loaded before the clock starts: timings measure retrieval, not loading
        t0 = time.perf_counter()
        vector = embedder.encode([question], normalize_embeddings=True, convert_to_numpy=True)[0]
        hits = self.retriever.search(kb, vector.tolist(), top_k, text=question)
        return hits, (time.perf_counter() - t0) * 1000
