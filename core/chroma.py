"""The Chroma side of the store: the client's life (embedded on disk, or a server), reopening after other
processes' writes, and the few collection calls the store makes. Called directly: the llama-index wrapper only
added a serialise/parse round trip per chunk (and reported exp(-distance) instead of the cosine)."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from core.errors import InputError, LabError

ADD_BATCH = 5000  # rows per add(): one add of a very large file fails in Chroma's SQLite ("too many SQL variables")


class RefuseEmbedding:
    """Chroma embedding function that refuses: text without our embeddings must never reach Chroma's ONNX default
    (which it would download)."""

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
        return RefuseEmbedding()

    def is_legacy(self) -> bool:
        return False


def forget_chroma_system(chroma_dir: Path) -> None:
    """Drop Chroma's cached in-process system for a path, so the next client there starts afresh."""
    from chromadb.api.shared_system_client import SharedSystemClient

    SharedSystemClient._identifier_to_system.pop(str(chroma_dir), None)
    SharedSystemClient._identifier_to_refcount.pop(str(chroma_dir), None)


def http_client(url: str):
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


class Chroma:
    """A Chroma client for one data folder (or server). A reader does not see another process's writes until it
    reopens, so writers bump a generation counter on disk and `client()` reopens when it has moved."""

    def __init__(self, chroma_dir: Path, generation_path: Path, url: str | None = None):
        self.chroma_dir, self.generation_path, self.url = chroma_dir, generation_path, url
        self._lock = threading.RLock()
        self._client = None
        self._seen_generation = None

    def client(self):
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        with self._lock:
            if self.url:
                if self._client is None:  # a server is always current: no reopening needed
                    self._client = http_client(self.url)
                return self._client
            generation = self._read_generation()
            if self._client is None or generation != self._seen_generation:
                # Chroma caches one system per path in the process; a cached one may predate another process's
                # writes, so a new client always starts from a fresh system. The old one is forgotten, not
                # stopped: a query in flight in another thread may still use it; it is freed once unused.
                forget_chroma_system(self.chroma_dir)
                self._client = chromadb.PersistentClient(
                    path=str(self.chroma_dir), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))
                self._seen_generation = generation
            return self._client

    def close(self) -> None:
        """Let go of the client and Chroma's cached system (the folder is about to be deleted)."""
        with self._lock:
            self._client = None
            if not self.url:
                forget_chroma_system(self.chroma_dir)

    def _read_generation(self) -> str:
        try:
            return self.generation_path.read_text()
        except FileNotFoundError:
            return "0"

    def bump_generation(self) -> None:
        """Tell other processes to reopen. Writers call it once chunks are written and before the catalog lists
        them, so a reader that sees the new catalog also reopens and sees the chunks."""
        from core.fileio import write_atomic

        value = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        write_atomic(self.generation_path, value)
        self._seen_generation = value  # our own write: our client already sees it

    # ---- collections ----------------------------------------------------------------------------------------
    def collection(self, name: str, create: bool = False):
        client = self.client()
        if create:
            return client.get_or_create_collection(name, embedding_function=RefuseEmbedding(),
                                                   metadata={"hnsw:space": "cosine"})
        return client.get_collection(name, embedding_function=RefuseEmbedding())

    def add(self, name: str, ids: list[str], texts: list[str], embeddings: list, metadatas: list[dict]) -> None:
        collection = self.collection(name)
        for start in range(0, len(ids), ADD_BATCH):
            end = start + ADD_BATCH
            collection.add(ids=ids[start:end], documents=texts[start:end], embeddings=embeddings[start:end],
                           metadatas=metadatas[start:end])

    def remove_ingest(self, name: str, ingest_id: str) -> None:
        self.collection(name).delete(where={"ingest_id": ingest_id})

    def drop(self, name: str) -> None:
        from chromadb.errors import NotFoundError

        try:
            self.client().delete_collection(name)
        except NotFoundError:
            pass

    def pages(self, name: str, page_size: int = 5000):
        """Every chunk's id, text and metadata, in pages: one get() of a large collection fails in Chroma
        ("too many SQL variables", seen at 100k chunks)."""
        collection = self.collection(name)
        offset = 0
        while True:
            page = collection.get(include=["documents", "metadatas"], limit=page_size, offset=offset)
            if not page["ids"]:
                return
            yield page
            offset += len(page["ids"])

    def nearest(self, name: str, embedding: list[float], count: int) -> list[tuple[str, str, dict, float]]:
        """(id, text, metadata, cosine similarity) of the `count` nearest chunks, nearest first."""
        collection = self.collection(name)
        # No count() first: it cost 10 ms at 100k chunks, and a query of an empty or small collection returns what
        # there is.
        got = collection.query(query_embeddings=[embedding], n_results=count,
                               include=["documents", "metadatas", "distances"])
        # The collection's space is cosine: distance = 1 - cosine.
        return [(i, text, meta or {}, 1.0 - distance)
                for i, text, meta, distance in zip(got["ids"][0], got["documents"][0], got["metadatas"][0],
                                                   got["distances"][0])]
