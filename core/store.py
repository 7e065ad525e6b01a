"""The one place for the knowledge-base store: Chroma (one collection per knowledge base) + a file catalog.

Why it looks like this:
- Two processes writing one on-disk Chroma store lose vectors silently, so every write goes through
  one lock: a threading lock in this process and an fcntl lock on a file for other processes.
- A Chroma reader does not see another process's writes until it reopens, so writers bump a
  generation counter on disk and readers reopen their client when it has moved.
- A file's chunks are written under a fresh ingest id and only then listed in the catalog (and the
  old version's chunks dropped), so a killed ingest leaves either the old file or the new one,
  never half of one; leftovers of an interrupted ingest are removed the next time the store opens.
"""
from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError, LabError

DEFAULT_KB = "default"
_KB_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,60}[A-Za-z0-9])?$")
_stores: dict[tuple, "Store"] = {}
_stores_lock = threading.Lock()


@dataclass
class FileRecord:
    kb: str
    name: str
    sha256: str
    pages: int
    chunks: int
    added: float
    ingest_id: str
    chunk_size: int | None = None  # the chunking this version was split with (None: made before it was recorded)
    chunk_overlap: int | None = None


_FILE_COLUMNS = "kb, name, sha256, pages, chunks, added, ingest_id, chunk_size, chunk_overlap"


@dataclass
class Chunking:
    """How a knowledge base splits text: chunk size and overlap, in the embedding model's tokens."""

    size: int
    overlap: int

    def to_dict(self) -> dict:
        return {"chunk_size": self.size, "chunk_overlap": self.overlap}


@dataclass
class Hit:
    text: str
    file: str
    page: str
    score: float  # cosine similarity in [-1, 1], for every hit, however it was found
    chunk_id: str
    vector_rank: int | None = None  # 1-based rank in vector search, None if not among its candidates
    keyword_rank: int | None = None  # 1-based rank in BM25 search, None if no query word matched


def check_name(name: str, what: str) -> str:
    """Names of knowledge bases, datasets and adapters: safe as folder and collection names, and in URLs."""
    name = (name or "").strip()
    if not _KB_NAME.match(name):
        raise InputError(
            f"a {what} name is 1-62 letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
            subject=repr(name),
        )
    return name


def check_kb_name(name: str) -> str:
    return check_name(name, "knowledge base")


def open_store(data_dir: Path, chroma_url: str | None = None) -> "Store":
    """One Store object per data dir (and Chroma server) per process: they share Chroma's in-process system anyway."""
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
    if store is not None and not chroma_url:
        with store._thread_lock:
            store._client = None
            _forget_chroma_system(store.chroma_dir)


def _forget_chroma_system(chroma_dir: Path) -> None:
    """Drop Chroma's cached in-process system for a path, so the next client there starts afresh."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient._identifier_to_system.pop(str(chroma_dir), None)
    SharedSystemClient._identifier_to_refcount.pop(str(chroma_dir), None)


def _http_client(url: str):
    from urllib.parse import urlparse

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError("LAB_CHROMA_URL must look like http://HOST:PORT", subject=url)
    port = parsed.port or (443 if parsed.scheme == "https" else 8000)
    try:
        client = chromadb.HttpClient(host=parsed.hostname, port=port, ssl=parsed.scheme == "https",
                                     settings=ChromaSettings(anonymized_telemetry=False))
        client.heartbeat()
    except Exception as exc:  # noqa: BLE001 - chromadb raises several connection error types
        raise LabError(f"cannot reach the Chroma server at {url}: {exc}") from None
    return client


class _RefuseEmbedding:
    """Chroma embedding function that refuses: text without our embeddings must never reach Chroma's ONNX default."""

    def __init__(self):
        pass

    def __call__(self, input):  # noqa: A002 - Chroma's protocol name
        raise RuntimeError("internal error: text reached Chroma without embeddings")

    @staticmethod
    def name() -> str:
        return "lab-refuse"

    def get_config(self) -> dict:
        return {}

    @staticmethod
    def build_from_config(config):
        return _RefuseEmbedding()

    def is_legacy(self) -> bool:
        return False


class Store:
    """Chroma for chunks and vectors; a SQLite catalog (in data_dir) for knowledge bases, files and the write lock.

    With `chroma_url`, vectors live in a Chroma server (scale-out); app processes that share the server also share
    one data_dir, which holds the catalog and the lock.

    Every write changes the catalog first and marks what must go: `pending` holds ingest ids whose chunks must not
    survive (a file being written, replaced or deleted) and `dropped` holds collections being deleted. The chunks
    are then written or removed and the mark cleared. Whatever a crash interrupts, `recover` finishes.
    """

    def __init__(self, data_dir: Path, chroma_url: str | None = None):
        self.data_dir = data_dir
        self.chroma_url = chroma_url
        self.chroma_dir = data_dir / "chroma"
        self.catalog_path = data_dir / "catalog.sqlite"
        self._generation_path = data_dir / "store.generation"
        self._lock_path = data_dir / "store.lock"
        self._thread_lock = threading.RLock()
        self._client = None
        self._seen_generation = None
        self._keyword_indexes: dict[str, tuple[frozenset, object]] = {}  # kb -> (listed ingest ids, KeywordIndex)
        data_dir.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS kbs (name TEXT PRIMARY KEY, created REAL NOT NULL,
                    collection TEXT NOT NULL UNIQUE, embed_model TEXT);
                CREATE TABLE IF NOT EXISTS files (
                    kb TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, pages INTEGER NOT NULL,
                    chunks INTEGER NOT NULL, added REAL NOT NULL, ingest_id TEXT NOT NULL,
                    PRIMARY KEY (kb, name));
                CREATE TABLE IF NOT EXISTS pending (ingest_id TEXT PRIMARY KEY, collection TEXT NOT NULL,
                    started REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS dropped (collection TEXT PRIMARY KEY, since REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS pages (ingest_id TEXT NOT NULL, seq INTEGER NOT NULL, label TEXT NOT NULL,
                    text TEXT NOT NULL, PRIMARY KEY (ingest_id, seq));
                """
            )
            # Catalogs made before chunk settings were kept gain the columns (NULL: the defaults of the time).
            for table, column in (("kbs", "chunk_size"), ("kbs", "chunk_overlap"),
                                  ("files", "chunk_size"), ("files", "chunk_overlap")):
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER")
        self.recover()

    # ---- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _db(self):
        db = sqlite3.connect(self.catalog_path, timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    @contextmanager
    def writing(self):
        """Hold the store's single-writer lock (this thread and every other process)."""
        with self._thread_lock:
            with open(self._lock_path, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    self._chroma()  # catch up with other processes' writes before writing on top of them
                    yield
                finally:
                    self._bump_generation()
                    fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _writing_if_free(self):
        """The write lock if nobody holds it, else None: a live writer's marks are its own, not leftovers."""
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            with open(self._lock_path, "a+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                try:
                    self._chroma()
                    yield True
                finally:
                    self._bump_generation()
                    fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _read_generation(self) -> str:
        try:
            return self._generation_path.read_text()
        except FileNotFoundError:
            return "0"

    def _bump_generation(self) -> None:
        """Tell other processes to reopen Chroma. Writers call it once chunks are written and before the catalog
        lists them, so a reader that sees the new catalog also reopens and sees the chunks."""
        value = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        tmp = self._generation_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(value)
        tmp.replace(self._generation_path)
        self._seen_generation = value  # our own write: our client already sees it

    def _chroma(self):
        """The Chroma client, reopened when another process has written since we opened it."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        with self._thread_lock:
            if self.chroma_url:
                if self._client is None:  # a server is always current: no reopening needed
                    self._client = _http_client(self.chroma_url)
                return self._client
            generation = self._read_generation()
            if self._client is None or generation != self._seen_generation:
                # Chroma caches one system per path in the process; a cached one may predate another
                # process's writes, so a new client always starts from a fresh system.
                # The old system is forgotten, not stopped: a query in flight in another thread may still be
                # using it; it is freed once nothing refers to it.
                _forget_chroma_system(self.chroma_dir)
                self._client = chromadb.PersistentClient(
                    path=str(self.chroma_dir),
                    settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False),
                )
                self._seen_generation = generation
            return self._client

    def _collection_name(self, kb: str) -> str:
        with self._db() as db:
            row = db.execute("SELECT collection FROM kbs WHERE name=?", (kb,)).fetchone()
        if row is None:
            raise InputError("no such knowledge base", subject=kb)
        return row[0]

    def _collection(self, kb: str | None = None, create: bool = False, name: str | None = None):
        name = name or self._collection_name(kb)
        client = self._chroma()
        if create:
            return client.get_or_create_collection(
                name, embedding_function=_RefuseEmbedding(), metadata={"hnsw:space": "cosine"}
            )
        return client.get_collection(name, embedding_function=_RefuseEmbedding())

    def _vector_store(self, kb: str | None = None, name: str | None = None):
        from llama_index.vector_stores.chroma import ChromaVectorStore

        return ChromaVectorStore(chroma_collection=self._collection(kb, name=name))

    @staticmethod
    def _mark_pending(db, ingest_id: str, collection: str) -> None:
        """Mark an ingest id whose chunks must go unless its file ends up listed (see the class docstring)."""
        db.execute("INSERT INTO pending (ingest_id, collection, started) VALUES (?, ?, ?)",
                   (ingest_id, collection, time.time()))

    # ---- knowledge bases --------------------------------------------------------------------
    def kb_names(self) -> list[str]:
        with self._db() as db:
            return [row[0] for row in db.execute("SELECT name FROM kbs ORDER BY name")]

    def has_kb(self, kb: str) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM kbs WHERE name=?", (kb,)).fetchone() is not None

    def require_kb(self, kb: str) -> str:
        kb = check_kb_name(kb)
        if not self.has_kb(kb):
            known = ", ".join(self.kb_names())
            hint = f"existing: {known}" if known else "none exists yet: add documents first, which creates it"
            raise InputError(f"no such knowledge base ({hint})", subject=kb)
        return kb

    def embed_model(self, kb: str) -> str | None:
        """The embedding model a knowledge base was built with: its vectors only make sense with that model."""
        with self._db() as db:
            row = db.execute("SELECT embed_model FROM kbs WHERE name=?", (kb,)).fetchone()
        return row[0] if row else None

    def create_kb(self, kb: str, embed_model: str | None = None, chunking: Chunking | None = None) -> str:
        kb = check_kb_name(kb)
        with self.writing():
            if not self.has_kb(kb):
                collection = f"kb_{uuid.uuid4().hex[:16]}"  # not the name: renaming never touches Chroma
                size, overlap = (chunking.size, chunking.overlap) if chunking else (None, None)
                with self._db() as db:
                    db.execute("INSERT INTO kbs (name, created, collection, embed_model, chunk_size, chunk_overlap)"
                               " VALUES (?, ?, ?, ?, ?, ?)", (kb, time.time(), collection, embed_model, size, overlap))
                self._collection(create=True, name=collection)
        return kb

    def chunking(self, kb: str) -> Chunking | None:
        """The chunk settings a knowledge base keeps (None if it does not exist or predates them)."""
        with self._db() as db:
            row = db.execute("SELECT chunk_size, chunk_overlap FROM kbs WHERE name=?", (kb,)).fetchone()
        return Chunking(row[0], row[1]) if row and row[0] is not None else None

    def set_chunking(self, kb: str, chunking: Chunking) -> None:
        kb = self.require_kb(kb)
        with self.writing(), self._db() as db:
            db.execute("UPDATE kbs SET chunk_size=?, chunk_overlap=? WHERE name=?", (chunking.size, chunking.overlap, kb))

    def rename_kb(self, kb: str, new_name: str) -> str:
        kb = self.require_kb(kb)
        new_name = check_kb_name(new_name)
        if new_name == kb:
            return kb
        with self.writing():
            if self.has_kb(new_name):
                raise InputError("a knowledge base with this name already exists", subject=new_name)
            with self._db() as db:  # one transaction, catalog only: a rename cannot half-happen
                db.execute("UPDATE kbs SET name=? WHERE name=?", (new_name, kb))
                db.execute("UPDATE files SET kb=? WHERE kb=?", (new_name, kb))
            self._keyword_indexes.pop(kb, None)
        return new_name

    def delete_kb(self, kb: str) -> None:
        kb = self.require_kb(kb)
        with self.writing():
            collection = self._collection_name(kb)
            with self._db() as db:
                db.execute("INSERT OR IGNORE INTO dropped (collection, since) VALUES (?, ?)", (collection, time.time()))
                db.execute("DELETE FROM pages WHERE ingest_id IN (SELECT ingest_id FROM files WHERE kb=?)", (kb,))
                db.execute("DELETE FROM files WHERE kb=?", (kb,))
                db.execute("DELETE FROM pending WHERE collection=?", (collection,))
                db.execute("DELETE FROM kbs WHERE name=?", (kb,))
            self._keyword_indexes.pop(kb, None)
            self._drop_collection(collection)

    def _drop_collection(self, collection: str) -> None:
        from chromadb.errors import NotFoundError

        try:
            self._chroma().delete_collection(collection)
        except NotFoundError:
            pass
        with self._db() as db:
            db.execute("DELETE FROM dropped WHERE collection=?", (collection,))

    # ---- files --------------------------------------------------------------------------------
    def files(self, kb: str) -> list[FileRecord]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE kb=? ORDER BY added", (kb,)).fetchall()
        return [FileRecord(*row) for row in rows]

    def file(self, kb: str, name: str) -> FileRecord | None:
        with self._db() as db:
            row = db.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE kb=? AND name=?", (kb, name)).fetchone()
        return FileRecord(*row) if row else None

    def put_files(self, items: list[tuple[FileRecord, list, list]]) -> None:
        """Store several files' embedded chunks and list them, each replacing any older version of its name.

        Each item is (record, nodes, pages): llama-index TextNodes with embeddings set (metadata file/page), and the
        file's extracted pages (`Page`s), kept so the knowledge base can be re-chunked without the original file.
        All of one knowledge base; one Chroma write and one catalog transaction for the lot (many small files
        were slow one by one), and still all or nothing per file.
        """
        if not items:
            return
        kb = items[0][0].kb
        with self.writing():
            collection = self._collection_name(self.require_kb(kb))
            with self._db() as db:
                for record, _, _ in items:
                    self._mark_pending(db, record.ingest_id, collection)
            all_nodes = []
            for record, nodes, _ in items:
                for node in nodes:
                    node.metadata["ingest_id"] = record.ingest_id
                all_nodes.extend(nodes)
            self._vector_store(name=collection).add(all_nodes)
            self._bump_generation()
            replaced = []
            with self._db() as db:  # one transaction: the new versions listed, the old ones marked to go
                for record, _, pages in items:
                    old = db.execute("SELECT ingest_id FROM files WHERE kb=? AND name=?", (kb, record.name)).fetchone()
                    db.execute(
                        f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (kb, record.name, record.sha256, record.pages, record.chunks, record.added, record.ingest_id,
                         record.chunk_size, record.chunk_overlap),
                    )
                    db.executemany("INSERT OR REPLACE INTO pages (ingest_id, seq, label, text) VALUES (?, ?, ?, ?)",
                                   [(record.ingest_id, seq, p.label, p.text) for seq, p in enumerate(pages)])
                    db.execute("DELETE FROM pending WHERE ingest_id=?", (record.ingest_id,))
                    if old is not None and old[0] != record.ingest_id:
                        self._mark_pending(db, old[0], collection)
                        replaced.append(old[0])
            for ingest_id in replaced:
                self._remove_chunks(collection, ingest_id)

    def put_file(self, record: FileRecord, nodes: list, pages: list | None = None) -> None:
        self.put_files([(record, nodes, pages or [])])

    def pages(self, record: FileRecord) -> list[tuple[str, str]]:
        """The stored text of a listed file, as (page label, text), in page order."""
        with self._db() as db:
            return db.execute("SELECT label, text FROM pages WHERE ingest_id=? ORDER BY seq", (record.ingest_id,)).fetchall()

    def index_bytes(self, kb: str) -> dict:
        """What a knowledge base's index holds: chunks, their text and their vectors, in bytes (Chroma's own
        HNSW graph and SQLite overhead come on top)."""
        collection = self._collection(kb)
        got = collection.get(include=["documents"])
        sample = collection.get(limit=1, include=["embeddings"])["embeddings"]
        dim = len(sample[0]) if sample is not None and len(sample) else 0
        return {"chunks": len(got["ids"]), "text_bytes": sum(len(d.encode()) for d in got["documents"]),
                "vector_bytes": len(got["ids"]) * dim * 4}

    def file_chunks(self, record: FileRecord) -> list[dict]:
        """A listed file's chunks in reading order: what the model will read from it."""
        got = self._collection(record.kb).get(where={"ingest_id": record.ingest_id}, include=["documents", "metadatas"])
        chunks = [{"page": str(meta.get("page", "")), "text": doc, "seq": meta.get("chunk", i)}
                  for i, (doc, meta) in enumerate(zip(got["documents"], got["metadatas"]))]
        chunks.sort(key=lambda c: c["seq"])
        return chunks

    def delete_file(self, kb: str, name: str) -> FileRecord:
        kb = self.require_kb(kb)
        with self.writing():
            record = self.file(kb, name)
            if record is None:
                raise InputError(f"no such file in knowledge base {kb!r}", subject=name)
            collection = self._collection_name(kb)
            with self._db() as db:  # unlisted and marked in one transaction; the chunks follow
                db.execute("DELETE FROM files WHERE kb=? AND name=?", (kb, name))
                self._mark_pending(db, record.ingest_id, collection)
            self._remove_chunks(collection, record.ingest_id)
            return record

    def _remove_chunks(self, collection: str, ingest_id: str) -> None:
        self._collection(name=collection).delete(where={"ingest_id": ingest_id})
        with self._db() as db:
            db.execute("DELETE FROM pages WHERE ingest_id=?", (ingest_id,))
            db.execute("DELETE FROM pending WHERE ingest_id=?", (ingest_id,))

    def chunk_count(self, kb: str) -> int:
        return self._collection(kb).count() if self.has_kb(kb) else 0

    def recover(self) -> int:
        """Finish what interrupted writes left: remove marked chunks and collections. Returns how many marks were
        cleared. Runs only when no one holds the write lock, since a live writer's marks are not leftovers."""
        from chromadb.errors import NotFoundError

        with self._db() as db:
            if not db.execute("SELECT (SELECT COUNT(*) FROM pending) + (SELECT COUNT(*) FROM dropped)").fetchone()[0]:
                return 0
        cleared = 0
        with self._writing_if_free() as free:
            if not free:
                return 0
            with self._db() as db:  # read again under the lock
                pending = db.execute("SELECT ingest_id, collection FROM pending").fetchall()
                dropped = [row[0] for row in db.execute("SELECT collection FROM dropped")]
            for ingest_id, collection in pending:
                try:
                    self._remove_chunks(collection, ingest_id)
                except NotFoundError:  # its collection is gone: no chunks left to remove
                    with self._db() as db:
                        db.execute("DELETE FROM pages WHERE ingest_id=?", (ingest_id,))
                        db.execute("DELETE FROM pending WHERE ingest_id=?", (ingest_id,))
                cleared += 1
            for collection in dropped:
                self._drop_collection(collection)
                cleared += 1
        return cleared

    # ---- retrieval ----------------------------------------------------------------------------
    def listed_ingest_ids(self, kb: str) -> frozenset:
        """Ingest ids of the files the catalog lists: only their chunks may be searched (not half-written ones)."""
        with self._db() as db:
            return frozenset(row[0] for row in db.execute("SELECT ingest_id FROM files WHERE kb=?", (kb,)))

    def keyword_index(self, kb: str, listed: frozenset | None = None):
        """The knowledge base's BM25 index, rebuilt only when its list of files has changed (in any process)."""
        from core.retrieval import KeywordIndex

        listed = self.listed_ingest_ids(kb) if listed is None else listed
        cached = self._keyword_indexes.get(kb)
        if cached is None or cached[0] != listed:
            ids, texts = [], []
            for page in self._all_chunks(kb):
                for chunk_id, text, meta in zip(page["ids"], page["documents"], page["metadatas"]):
                    if meta.get("ingest_id") in listed:
                        ids.append(chunk_id)
                        texts.append(text)
            cached = (listed, KeywordIndex.build(ids, texts))
            with self._db() as db:
                expected = db.execute("SELECT COALESCE(SUM(chunks), 0) FROM files WHERE kb=?", (kb,)).fetchone()[0]
            if len(ids) == expected:  # else a write raced this read: build again next time
                self._keyword_indexes[kb] = cached
        return cached[1]

    def listed_chunks(self, kb: str) -> list[dict]:
        """Every searchable chunk of a knowledge base: {id, text, file, page}."""
        kb = self.require_kb(kb)
        listed = self.listed_ingest_ids(kb)
        return [{"id": i, "text": t, "file": m.get("file", "?"), "page": str(m.get("page", ""))}
                for page in self._all_chunks(kb)
                for i, t, m in zip(page["ids"], page["documents"], page["metadatas"]) if m.get("ingest_id") in listed]

    def _all_chunks(self, kb: str, page_size: int = 5000):
        """Every chunk's text and metadata, in pages: one get() of a large collection fails in Chroma
        ("too many SQL variables", seen at 100k chunks)."""
        collection = self._collection(kb)
        offset = 0
        while True:
            page = collection.get(include=["documents", "metadatas"], limit=page_size, offset=offset)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def query(self, kb: str, embedding: list[float], top_k: int, text: str | None = None) -> list[Hit]:
        """Top passages: vector search, merged with BM25 keyword search by reciprocal rank fusion when `text` is given."""
        import math

        from llama_index.core.vector_stores.types import VectorStoreQuery

        from core.retrieval import reciprocal_rank_fusion

        kb = self.require_kb(kb)
        listed = self.listed_ingest_ids(kb)
        if not listed:
            return []
        candidates = max(4 * top_k, 20)
        result = self._vector_store(kb).query(VectorStoreQuery(query_embedding=embedding, similarity_top_k=candidates))
        by_id: dict[str, Hit] = {}
        for node, similarity in zip(result.nodes, result.similarities):
            # llama-index reports exp(-distance); with Chroma's cosine space distance = 1 - cosine.
            cosine = 1.0 + math.log(similarity) if similarity > 0 else -1.0
            meta = node.metadata or {}
            if meta.get("ingest_id") not in listed:
                continue  # a file still being written (or left by a killed ingest): not searchable yet
            by_id[node.node_id] = Hit(node.get_content(), meta.get("file", "?"), str(meta.get("page", "")), cosine,
                                      node.node_id, vector_rank=len(by_id) + 1)
        vector_ranking = list(by_id)
        if text is None:
            return [by_id[i] for i in vector_ranking[:top_k]]
        keyword_ranking = [chunk_id for chunk_id, _ in self.keyword_index(kb, listed).search(text, candidates)]
        chosen = [chunk_id for chunk_id, _ in reciprocal_rank_fusion([vector_ranking, keyword_ranking])[:top_k]]
        missing = [chunk_id for chunk_id in chosen if chunk_id not in by_id]
        if missing:  # found by keywords alone: fetch them, and score them by cosine like the rest
            got = self._collection(kb).get(ids=missing, include=["documents", "metadatas", "embeddings"])
            for chunk_id, doc, meta, vector in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"]):
                cosine = float(sum(a * b for a, b in zip(embedding, vector)))  # both are unit length
                by_id[chunk_id] = Hit(doc, meta.get("file", "?"), str(meta.get("page", "")), cosine, chunk_id)
        for rank, chunk_id in enumerate(keyword_ranking, start=1):
            if chunk_id in by_id:
                by_id[chunk_id].keyword_rank = rank
        # A chunk found by keywords alone may have been deleted since the index was built: skip it.
        return [by_id[chunk_id] for chunk_id in chosen if chunk_id in by_id]
