"""The one place for the knowledge-base store: a SQLite catalog (core/catalog.py) beside Chroma (core/chroma.py),
written by one writer at a time, and recoverable after a crash.

Why it looks like this:
- Two processes writing one on-disk Chroma store lose vectors silently, so every write holds one lock, for the
  threads of this process and for other processes alike.
- A file's chunks are written under a fresh ingest id and only then listed in the catalog (and the old version's
  chunks dropped), so a killed ingest leaves either the old file or the new one, never half of one; leftovers of
  an interrupted write are removed the next time the store opens (`recover`).
- Searching (vector, keyword, fusion) is core/retrieval.py's job; this module stores and lists. The keyword index
  lives in the catalog (core/keywords.py), changed in the transaction that lists or unlists a file.
"""
from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from filelock import Timeout

from core.catalog import Catalog, Chunking, FileRecord
from core.chroma import Chroma
from core.errors import InputError
from core.fileio import file_lock
from core.names import check_kb_name

_stores: dict[tuple, "Store"] = {}
_stores_lock = threading.Lock()


def open_store(data_dir: Path, chroma_url: str | None = None) -> "Store":
    """One Store per data dir (and Chroma server) per process: they share Chroma's in-process system anyway."""
    key = (Path(data_dir).resolve(), chroma_url)
    with _stores_lock:
        if key not in _stores:
            _stores[key] = Store(key[0], chroma_url)
        return _stores[key]


def close_store(data_dir: Path, chroma_url: str | None = None) -> None:
    """Forget a data dir's Store and its Chroma system (its folder is about to be deleted)."""
    key = (Path(data_dir).resolve(), chroma_url)
    with _stores_lock:
        store = _stores.pop(key, None)
    if store is not None:
        with store._thread_lock:
            store.chroma.close()


class Store:
    """With `chroma_url`, vectors live in a Chroma server (scale-out); app processes that share the server also
    share one data_dir, which holds the catalog and the lock."""

    def __init__(self, data_dir: Path, chroma_url: str | None = None):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.catalog = Catalog(data_dir / "catalog.sqlite")
        self.chroma = Chroma(data_dir / "chroma", data_dir / "store.generation", chroma_url)
        self._lock_path = data_dir / "store.lock"
        self._thread_lock = threading.RLock()
        self.recover()

    # ---- the single writer --------------------------------------------------------------------------------
    @contextmanager
    def writing(self):
        """Hold the store's write lock (this thread and every other process)."""
        with self._thread_lock, file_lock(self._lock_path):
            self.chroma.client()  # catch up with other processes' writes before writing on top of them
            try:
                yield
            finally:
                self.chroma.bump_generation()

    @contextmanager
    def _writing_if_free(self):
        """The write lock if nobody holds it, else False: a live writer's marks are its own, not leftovers."""
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            lock = file_lock(self._lock_path, timeout=0)
            try:
                lock.acquire()
            except Timeout:
                yield False
                return
            try:
                self.chroma.client()
                yield True
            finally:
                self.chroma.bump_generation()
                lock.release()
        finally:
            self._thread_lock.release()

    # ---- knowledge bases -----------------------------------------------------------------------------------
    def kb_names(self) -> list[str]:
        return self.catalog.kb_names()

    def has_kb(self, kb: str) -> bool:
        return self.catalog.has_kb(kb)

    def require_kb(self, kb: str) -> str:
        kb = check_kb_name(kb)
        if not self.has_kb(kb):
            known = ", ".join(self.kb_names())
            hint = f"existing: {known}" if known else "none exists yet: add documents first, which creates it"
            raise InputError(f"no such knowledge base ({hint})", subject=kb)
        return kb

    def collection_name(self, kb: str) -> str:
        name = self.catalog.collection(kb)
        if name is None:
            raise InputError("no such knowledge base", subject=kb)
        return name

    def collection(self, kb: str):
        """The knowledge base's Chroma collection, for reading."""
        return self.chroma.collection(self.collection_name(kb))

    def embed_model(self, kb: str) -> str | None:
        """The embedding model a knowledge base was built with: its vectors only make sense with that model."""
        return self.catalog.embed_model(kb)

    def chunking(self, kb: str) -> Chunking | None:
        """The chunk settings a knowledge base keeps (None if it does not exist or predates them)."""
        return self.catalog.chunking(kb)

    def create_kb(self, kb: str, embed_model: str | None = None, chunking: Chunking | None = None) -> str:
        kb = check_kb_name(kb)
        with self.writing():
            if not self.has_kb(kb):
                collection = f"kb_{uuid.uuid4().hex[:16]}"
                self.catalog.add_kb(kb, collection, embed_model, chunking)
                self.chroma.collection(collection, create=True)
        return kb

    def set_chunking(self, kb: str, chunking: Chunking) -> None:
        kb = self.require_kb(kb)
        with self.writing():
            self.catalog.set_chunking(kb, chunking)

    def rename_kb(self, kb: str, new_name: str) -> str:
        kb = self.require_kb(kb)
        new_name = check_kb_name(new_name)
        if new_name != kb:
            with self.writing():
                self.catalog.rename_kb(kb, new_name)
        return new_name

    def delete_kb(self, kb: str) -> None:
        kb = self.require_kb(kb)
        with self.writing():
            collection = self.collection_name(kb)
            self.catalog.unlist_kb(kb, collection)
            self._drop_collection(collection)

    def _drop_collection(self, collection: str) -> None:
        self.chroma.drop(collection)
        self.catalog.clear_dropped(collection)

    # ---- files ------------------------------------------------------------------------------------------------
    def files(self, kb: str) -> list[FileRecord]:
        return self.catalog.files(kb)

    def file(self, kb: str, name: str) -> FileRecord | None:
        return self.catalog.file(kb, name)

    def put_files(self, items: list[tuple[FileRecord, list, list]]) -> None:
        """Store several files' embedded chunks and list them, each replacing any older version of its name.

        Each item is (record, nodes, pages): llama-index TextNodes with embeddings set (metadata file/page/chunk),
        and the file's extracted pages (`Page`s), kept so the knowledge base can be re-chunked without the original
        file. All of one knowledge base; one Chroma write and one catalog transaction for the lot (many small
        files were slow one by one), and still all or nothing per file.
        """
        if not items:
            return
        kb = items[0][0].kb
        with self.writing():
            collection = self.collection_name(self.require_kb(kb))
            self.catalog.mark_pending([record.ingest_id for record, _, _ in items], collection)
            ids, texts, vectors, metadatas = [], [], [], []
            for record, nodes, _ in items:
                for node in nodes:
                    ids.append(node.node_id)
                    texts.append(node.get_content())
                    vectors.append(node.embedding)
                    metadatas.append({**node.metadata, "ingest_id": record.ingest_id})
            self.chroma.add(collection, ids, texts, vectors, metadatas)
            self.chroma.bump_generation()
            listing = [(record, pages, [(node.node_id, node.get_content()) for node in nodes])
                       for record, nodes, pages in items]
            replaced = self.catalog.list_files(listing, collection)
            for ingest_id in replaced:
                self._remove_chunks(collection, ingest_id)

    def put_file(self, record: FileRecord, nodes: list, pages: list | None = None) -> None:
        self.put_files([(record, nodes, pages or [])])

    def pages(self, record: FileRecord) -> list[tuple[str, str, str]]:
        """The stored text of a listed file, as (page label, text, how it was read), in page order."""
        return self.catalog.pages(record.ingest_id)

    def delete_file(self, kb: str, name: str) -> FileRecord:
        kb = self.require_kb(kb)
        with self.writing():
            record = self.file(kb, name)
            if record is None:
                raise InputError(f"no such file in knowledge base {kb!r}", subject=name)
            collection = self.collection_name(kb)
            self.catalog.unlist_file(record, collection)  # unlisted and marked in one transaction; the chunks follow
            self._remove_chunks(collection, record.ingest_id)
            return record

    def _remove_chunks(self, collection: str, ingest_id: str) -> None:
        self.chroma.remove_ingest(collection, ingest_id)
        self.catalog.clear_pending(ingest_id)

    def recover(self) -> int:
        """Finish what interrupted writes left: remove marked chunks and collections. Returns how many marks were
        cleared. Runs only when no one holds the write lock, since a live writer's marks are not leftovers."""
        from chromadb.errors import NotFoundError

        if not self.catalog.has_marks():
            return 0
        cleared = 0
        with self._writing_if_free() as free:
            if not free:
                return 0
            pending, dropped = self.catalog.marks()  # read again under the lock
            for ingest_id, collection in pending:
                try:
                    self._remove_chunks(collection, ingest_id)
                except NotFoundError:  # its collection is gone: no chunks left to remove
                    self.catalog.clear_pending(ingest_id)
                cleared += 1
            for collection in dropped:
                self._drop_collection(collection)
                cleared += 1
        return cleared

    # ---- reading ----------------------------------------------------------------------------------------------
    def keyword_search(self, kb: str, query: str, limit: int) -> list[tuple[str, float]]:
        """Listed chunk ids matching the query's words (core/keywords.py), best first, with their BM25 scores."""
        collection = self.collection_name(kb)
        found = self.catalog.keyword_search(collection, query, limit)
        if found is None:  # a knowledge base from before the index was kept: index it once, under the write lock
            with self.writing():
                if not self.catalog.has_keyword_index(collection):
                    chunks: dict[str, list[tuple[str, str]]] = {i: [] for i in self.listed_ingest_ids(kb)}
                    for page in self.all_chunks(kb):
                        for chunk_id, text, meta in zip(page["ids"], page["documents"], page["metadatas"]):
                            if meta.get("ingest_id") in chunks:
                                chunks[meta["ingest_id"]].append((chunk_id, text))
                    self.catalog.build_keyword_index(collection, chunks)
            found = self.catalog.keyword_search(collection, query, limit)
        return found
    def chunk_count(self, kb: str) -> int:
        return self.collection(kb).count() if self.has_kb(kb) else 0

    def listed_ingest_ids(self, kb: str) -> frozenset:
        return self.catalog.listed_ingest_ids(kb)

    def listed_chunks(self, kb: str) -> list[dict]:
        """Every searchable chunk of a knowledge base: {id, text, file, page}."""
        kb = self.require_kb(kb)
        listed = self.listed_ingest_ids(kb)
        return [{"id": i, "text": t, "file": m.get("file", "?"), "page": str(m.get("page", ""))}
                for page in self.all_chunks(kb)
                for i, t, m in zip(page["ids"], page["documents"], page["metadatas"]) if m.get("ingest_id") in listed]

    def all_chunks(self, kb: str, page_size: int = 5000):
        """Every chunk's id, text and metadata (listed or not), in pages of get() results."""
        return self.chroma.pages(self.collection_name(kb), page_size)

    def file_chunks(self, record: FileRecord) -> list[dict]:
        """A listed file's chunks in reading order: what the model will read from it."""
        got = self.collection(record.kb).get(where={"ingest_id": record.ingest_id}, include=["documents", "metadatas"])
        chunks = [{"page": str(meta.get("page", "")), "text": doc, "seq": meta.get("chunk", i)}
                  for i, (doc, meta) in enumerate(zip(got["documents"], got["metadatas"]))]
        chunks.sort(key=lambda c: c["seq"])
        return chunks

    def index_bytes(self, kb: str) -> dict:
        """What a knowledge base's index holds: chunks, their text and their vectors, in bytes (Chroma's own
        HNSW graph and SQLite overhead come on top)."""
        collection = self.collection(kb)
        got = collection.get(include=["documents"])
        sample = collection.get(limit=1, include=["embeddings"])["embeddings"]
        dim = len(sample[0]) if sample is not None and len(sample) else 0
        return {"chunks": len(got["ids"]), "text_bytes": sum(len(d.encode()) for d in got["documents"]),
                "vector_bytes": len(got["ids"]) * dim * 4}
