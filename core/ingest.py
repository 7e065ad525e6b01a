"""Turn files into embedded chunks in a knowledge base: read -> split (in embedder tokens) -> embed -> store."""
from __future__ import annotations

import hashlib
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from core.config import Settings
from core.documents import display_name, read_pages
from core.errors import InputError
from core.progress import ProgressFn, Stage, silent
from core.store import FileRecord, Store
from core.web import fetch_url, looks_like_url

EMBED_BATCH = 64


@dataclass
class IngestResult:
    file: str
    status: str  # added | updated | unchanged | failed
    message: str
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def make_splitter(settings: Settings, embedder):
    """A sentence-aware splitter that counts the embedder's own tokens (so chunks fit its window)."""
    from llama_index.core.node_parser import SentenceSplitter

    tokenizer = embedder.tokenizer
    limit = int(getattr(embedder, "max_seq_length", 0) or 512) - 2  # room for [CLS]/[SEP]
    if settings.chunk_size > limit:
        raise InputError(f"chunk size {settings.chunk_size} is over the embedding model's window of {limit} tokens")
    if not 0 <= settings.chunk_overlap < settings.chunk_size:
        raise InputError(f"chunk overlap must be between 0 and the chunk size ({settings.chunk_size})")
    return SentenceSplitter(
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        tokenizer=lambda text: tokenizer.encode(text, add_special_tokens=False),
    )


def split_pages(name: str, pages, splitter) -> list:
    from llama_index.core import Document

    documents = []
    for page in pages:
        if not page.text.strip():
            continue
        # One id per page: llama-index keys documents by id, and shared ids gave every chunk the last page's label.
        doc = Document(text=page.text, metadata={"file": name, "page": page.label}, id_=f"{name}#page={page.label}")
        # Metadata is stored with each chunk but is neither embedded nor counted against the chunk size.
        doc.excluded_embed_metadata_keys = ["file", "page", "ingest_id"]
        doc.excluded_llm_metadata_keys = ["file", "page", "ingest_id"]
        documents.append(doc)
    return splitter.get_nodes_from_documents(documents)


def ingest_files(
    paths: list[str | Path],
    kb: str,
    settings: Settings,
    store: Store,
    embedder,
    progress: ProgressFn | None = None,
) -> list[IngestResult]:
    """Ingest each file independently: one bad file is reported and skipped, the others go in.
    An item may be a web address (http:// or https://): the page or document is fetched, then read like a file."""
    report = progress or silent
    results: list[IngestResult] = []
    splitter = make_splitter(settings, embedder)
    total = len(paths)
    # URLs are downloaded here first, then read like files; the folder goes when the loop ends.
    with tempfile.TemporaryDirectory(prefix="lab-fetch-") as fetch_dir:
        for index, raw_path in enumerate(paths):
            start, end = index / total, (index + 1) / total
            t0 = time.perf_counter()
            if looks_like_url(raw_path):
                report(start, f"Fetching {raw_path.strip()}")
                try:
                    path = fetch_url(raw_path, Path(fetch_dir) / str(index), settings.max_file_mb)
                except InputError as exc:
                    results.append(IngestResult(raw_path.strip(), "failed", exc.reason))
                    continue
            else:
                path = Path(raw_path)
            try:
                name = display_name(path.name)
            except InputError as exc:
                results.append(IngestResult(str(path.name), "failed", exc.reason))
                continue
            try:
                report(start, f"Reading {name}")
                pages = read_pages(path, name, settings.max_file_mb)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                existing = store.file(kb, name)
                if existing is not None and existing.sha256 == digest:
                    results.append(IngestResult(name, "unchanged", "already in the knowledge base with the same content",
                                                existing.pages, existing.chunks))
                    continue
                report(start + 0.05 * (end - start), f"Splitting {name}")
                nodes = split_pages(name, pages, splitter)
                if not nodes:
                    raise InputError("no text chunks could be made from the file", subject=name)
                embed_stage = Stage(report, start + 0.1 * (end - start), start + 0.9 * (end - start), f"Embedding {name}: chunk")
                texts = [node.get_content() for node in nodes]
                for offset in range(0, len(texts), EMBED_BATCH):
                    batch = texts[offset : offset + EMBED_BATCH]
                    vectors = embedder.encode(batch, batch_size=EMBED_BATCH, normalize_embeddings=True, convert_to_numpy=True)
                    for node, vector in zip(nodes[offset : offset + EMBED_BATCH], vectors):
                        node.embedding = vector.tolist()
                    embed_stage.update(offset + len(batch), len(texts))
                report(start + 0.92 * (end - start), f"Writing {name}")
                if not store.has_kb(kb):
                    store.create_kb(kb, settings.embed_model)
                record = FileRecord(kb, name, digest, len(pages), len(nodes), time.time(), uuid.uuid4().hex)
                store.put_file(record, nodes)
                status = "updated" if existing is not None else "added"
                verb = "replaced the older version" if existing is not None else "added"
                results.append(IngestResult(name, status, f"{verb}: {len(pages)} page(s), {len(nodes)} chunks",
                                            len(pages), len(nodes), time.perf_counter() - t0))
            except InputError as exc:
                results.append(IngestResult(name, "failed", exc.reason))
            except OSError as exc:  # unreadable file (permissions, vanished): this file fails, the others go on
                results.append(IngestResult(name, "failed", f"cannot be read ({exc.strerror or exc})"))
    report(1.0, "Done")
    return results
