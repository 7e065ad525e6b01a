"""Turn files into embedded chunks in a knowledge base: read -> split (in embedder tokens) -> embed -> store.

Reading and splitting run in a thread one step ahead of embedding (the embedder releases the GIL while it computes),
and the chunks of several small files are embedded and written together, so a folder of short notes is not
embedded and written one tiny batch at a time. Each file still goes in whole or not at all.
"""
from __future__ import annotations

import hashlib
import queue
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from core.documents import NOT_READ, READ_BY_OCR, Page, display_name, page_ranges, read_pages
from core.errors import InputError, NoTextFound
from core.file_sets import Listed, Source, expand_sources
from core.ocr import INSTALL_HINT
from core.progress import ProgressFn, silent
from core.catalog import Chunking, FileRecord
from core.store import Store
from core.web import fetch_url, looks_like_url

EMBED_BATCH = 64
WRITE_BATCH_CHUNKS = 256  # embed and write once this many chunks are ready (or nothing more is ready yet)
READ_AHEAD = 64  # files read and split ahead of the embedder (small files: a few chunks each)
_NOT_EMBEDDED = ["file", "page", "ingest_id", "chunk"]  # stored with each chunk; never embedded nor counted


@dataclass
class IngestResult:
    file: str
    status: str  # added | updated | unchanged | skipped (a kind of file not read, a picture without words) | failed | cancelled
    message: str
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Prepared:
    """A file read and split, waiting to be embedded and stored."""

    index: int
    record: FileRecord
    pages: list[Page]
    nodes: list
    replaces: bool
    t0: float
    verb: tuple[str, str] = ("added", "added")  # (status, what the message says)
    embedded: int = field(default=0)


@dataclass
class _Note:
    """What the reader thread is doing, shown as progress by the consuming thread (the one allowed to report)."""

    message: str


class _Stopped(Exception):
    """Raised in the reader thread (from a progress note) once the ingest is cancelled: stop reading."""


Note = Callable[[str], None]  # tells the user what the reader is doing; raises _Stopped once cancelled


def page_summary(pages: list[Page]) -> str:
    """What a result line adds about how pages were read: "; read by OCR: pages 2-3", and pages left unread."""
    def labels(read_by: str) -> str:
        return page_ranges([page.label for page in pages if page.read_by == read_by and page.label])

    out = ""
    if any(page.read_by == READ_BY_OCR for page in pages):
        out += f"; read by OCR: page(s) {labels(READ_BY_OCR)}" if labels(READ_BY_OCR) else "; read by OCR"
    if unread := labels(NOT_READ):
        out += f"; page(s) {unread} have no text layer and were not read ({INSTALL_HINT})"
    return out


def check_chunking(chunking: Chunking, embedder) -> Chunking:
    limit = int(getattr(embedder, "max_seq_length", 0) or 512) - 2  # room for [CLS]/[SEP]
    if not 16 <= chunking.size <= limit:
        raise InputError(f"chunk size must be between 16 and the embedding model's window of {limit} tokens, "
                         f"got {chunking.size}")
    if not 0 <= chunking.overlap < chunking.size:
        raise InputError(f"chunk overlap must be at least 0 and less than the chunk size ({chunking.size}), "
                         f"got {chunking.overlap}")
    return chunking


def make_splitter(chunking: Chunking, embedder):
    """A sentence-aware splitter that counts the embedder's own tokens (so chunks fit its window)."""
    from llama_index.core.node_parser import SentenceSplitter

    check_chunking(chunking, embedder)
    tokenizer = _counting_tokenizer(embedder)
    return SentenceSplitter(
        chunk_size=chunking.size,
        chunk_overlap=chunking.overlap,
        tokenizer=lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
    )


_counting_tokenizers: dict[int, object] = {}


def _counting_tokenizer(embedder):
    """The embedder's tokenizer, as a separate copy for the reader thread: one Rust tokenizer used from two threads
    at once fails ("Already borrowed") when one of them sets padding or truncation, as encode() does."""
    import copy

    key = id(embedder)
    if key not in _counting_tokenizers:
        backend = copy.deepcopy(embedder.tokenizer.backend_tokenizer)
        backend.no_truncation()
        backend.no_padding()
        _counting_tokenizers[key] = backend
    return _counting_tokenizers[key]


def split_pages(name: str, pages: list[Page], splitter) -> list:
    from llama_index.core import Document

    documents = []
    for page in pages:
        if not page.text.strip():
            continue
        # One id per page: llama-index keys documents by id, and shared ids gave every chunk the last page's label.
        doc = Document(text=page.text, metadata={"file": name, "page": page.label}, id_=f"{name}#page={page.label}")
        doc.excluded_embed_metadata_keys = _NOT_EMBEDDED
        doc.excluded_llm_metadata_keys = _NOT_EMBEDDED
        documents.append(doc)
    nodes = splitter.get_nodes_from_documents(documents)
    for seq, node in enumerate(nodes):
        node.metadata["chunk"] = seq  # reading order, for the chunk preview
    return nodes


def ingest_files(
    paths: list[str | Path],
    kb: str,
    chunking: Chunking,
    embed_model: str,
    max_file_mb: int,
    store: Store,
    embedder,
    progress: ProgressFn | None = None,
    public_only: bool = False,
    recursive: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[IngestResult]:
    """Ingest each file independently: one bad file is reported and skipped, the others go in.
    An item may be a web address (http:// or https://): the page or document is fetched, then read like a file;
    with `public_only` (demo mode) only from public addresses (see core.web.fetch_url). A folder or a .zip is
    its files, a result line each (core/file_sets.py); `recursive` takes a folder's subfolders too. Once
    `should_stop()` is true nothing more is stored: what was written stays, each file whole, and the rest is
    listed as cancelled."""
    splitter = make_splitter(chunking, embedder)

    def prepare(sources: list[Source | Listed], work_dir: Path,
                note: Note) -> Iterator[_Prepared | _Note | tuple[int, IngestResult]]:
        seen: dict[str, tuple[str, int]] = {}  # name -> (sha256, pages) of the files given in this call
        for index, source in enumerate(sources):
            if isinstance(source, Listed):
                yield index, IngestResult(source.name, source.status, source.reason)
                continue
            t0 = time.perf_counter()
            raw_path = source.path
            name = source.name or str(raw_path).strip()
            try:
                if looks_like_url(raw_path):  # downloaded first, then read like a file
                    yield _Note(f"Fetching {name}")
                    path = fetch_url(raw_path, work_dir / str(index), max_file_mb, public_only=public_only)
                else:
                    path = Path(raw_path)
                name = source.name or display_name(path.name)
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                existing = store.file(kb, name)
                # Known bytes are not read again (OCR of a scanned file takes minutes).
                if seen.get(name, ("",))[0] == digest or (existing is not None and existing.sha256 == digest):
                    twice = seen.get(name, ("",))[0] == digest
                    yield index, IngestResult(
                        name, "unchanged", f"{'given twice' if twice else 'already in the knowledge base'} with the "
                        "same content", seen[name][1] if twice else existing.pages, 0 if twice else existing.chunks)
                    continue
                yield _Note(f"Reading {name}")

                def on_page(done: int, total: int, by_ocr: bool, name=name) -> None:
                    note(f"Reading {name}: page {done}/{total}{' (OCR)' if by_ocr else ''}")

                pages = read_pages(path, name, max_file_mb, on_page)
                replaces = existing is not None or name in seen
                seen[name] = (digest, len(pages))
                nodes = split_pages(name, pages, splitter)
                if not nodes:
                    raise InputError("no text chunks could be made from the file", subject=name)
                record = FileRecord(kb, name, digest, len(pages), len(nodes), time.time(), uuid.uuid4().hex,
                                    chunking.size, chunking.overlap)
                verb = ("updated", "replaced the older version") if replaces else ("added", "added")
                yield _Prepared(index, record, pages, nodes, replaces, t0, verb)
            except NoTextFound as exc:
                yield index, IngestResult(name, "skipped", exc.reason)
            except InputError as exc:
                yield index, IngestResult(name, "failed", exc.reason)
            except OSError as exc:  # unreadable file (permissions, vanished): this file fails, the others go on
                yield index, IngestResult(name, "failed", f"cannot be read ({exc.strerror or exc})")

    def ensure_kb() -> None:
        if not store.has_kb(kb):
            store.create_kb(kb, embed_model, chunking)

    # Fetched pages and unpacked archives live in this folder until every file is stored.
    with tempfile.TemporaryDirectory(prefix="lab-ingest-") as work_dir:
        sources = expand_sources(paths, Path(work_dir) / "unpacked", max_file_mb, recursive)
        names = [s.name or (str(s.path) if looks_like_url(s.path) else Path(s.path).name) for s in sources]
        return _run_pipeline(lambda note: prepare(sources, Path(work_dir), note), names, store, embedder, progress,
                             before_write=ensure_kb, should_stop=should_stop)


def reindex_files(kb: str, records: list[FileRecord], chunking: Chunking, store: Store, embedder,
                  progress: ProgressFn | None = None) -> list[IngestResult]:
    """Split the stored text of these files again with new chunk settings, embed it and replace their chunks.
    Each file is swapped whole, so an interrupted re-index leaves every file searchable (old or new chunks)."""
    splitter = make_splitter(chunking, embedder)

    def prepare() -> Iterator[_Prepared | tuple[int, IngestResult]]:
        for index, old in enumerate(records):
            t0 = time.perf_counter()
            pages = [Page(text, label, read_by) for label, text, read_by in store.pages(old)]
            if not pages:
                yield index, IngestResult(old.name, "failed", "its text was stored before re-indexing was possible; "
                                          "add the file again to re-index it")
                continue
            nodes = split_pages(old.name, pages, splitter)
            record = FileRecord(kb, old.name, old.sha256, old.pages, len(nodes), old.added, uuid.uuid4().hex,
                                chunking.size, chunking.overlap)
            yield _Prepared(index, record, pages, nodes, True, t0, ("updated", f"re-indexed (was {old.chunks} chunks)"))

    return _run_pipeline(lambda note: prepare(), [r.name for r in records], store, embedder, progress)


CANCELLED = "not added: the ingest was cancelled before this file was stored"


def _run_pipeline(make_items: Callable[[Note], Iterator], names: list[str], store: Store, embedder,
                  progress: ProgressFn | None, before_write=None,
                  should_stop: Callable[[], bool] | None = None) -> list[IngestResult]:
    """`make_items(note)`: the reader's items (prepared files, results, notes); `note` lets a long read (a page at a
    time) say how far it is, and stops it once the ingest is cancelled."""
    report = progress or silent
    total = len(names)
    stopping = should_stop or (lambda: False)
    results: dict[int, IngestResult] = {}
    handoff: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
    done_marker = object()
    failure: list[BaseException] = []
    stop = threading.Event()

    def offer(item) -> bool:
        """Hand an item over, waiting for room; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def note(message: str) -> None:
        if stop.is_set() or stopping():
            raise _Stopped
        try:
            handoff.put_nowait(_Note(message))
        except queue.Full:
            pass  # the consumer is busy: this note would be stale by the time it was read

    def produce():
        try:
            for item in make_items(note):
                if not offer(item):
                    return
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
            failure.append(exc)
        finally:
            offer(done_marker)

    reader = threading.Thread(target=produce, name="ingest-reader", daemon=True)
    reader.start()
    # Writes run in their own thread, overlapping the next batch's embedding; one at a time, in order.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
    last_write: list[Future] = []
    t_start = time.perf_counter()
    batch: list[_Prepared] = []
    finished = False

    def status(fraction: float, what: str) -> None:
        elapsed = time.perf_counter() - t_start
        eta = f", ~{elapsed / fraction - elapsed:.0f}s left" if 0.02 < fraction < 1 and elapsed > 2 else ""
        report(fraction, f"{what} ({len(results)}/{total} files done{eta})")

    def flush() -> None:
        texts = [node.get_content() for item in batch for node in item.nodes]
        shown = ", ".join(item.record.name for item in batch[:3]) + (" …" if len(batch) > 3 else "")
        nodes = [node for item in batch for node in item.nodes]
        for offset in range(0, len(texts), EMBED_BATCH * 4):
            if stopping():  # nothing of this batch is stored
                return
            part = texts[offset: offset + EMBED_BATCH * 4]
            vectors = embedder.encode(part, batch_size=EMBED_BATCH, normalize_embeddings=True, convert_to_numpy=True)
            for node, vector in zip(nodes[offset: offset + EMBED_BATCH * 4], vectors):
                node.embedding = vector.tolist()
            share = (offset + len(part)) / len(texts)
            status((len(results) + 0.9 * share * len(batch)) / total,
                   f"Embedding {shown}: chunk {offset + len(part)}/{len(texts)}")
        finish_write()  # the previous batch is stored before this one is (and its errors surface here)
        if stopping():
            return
        status((len(results) + 0.95 * len(batch)) / total, f"Writing {shown}")
        last_write.append(writer.submit(write, list(batch)))
        batch.clear()

    def write(items: list[_Prepared]) -> list[_Prepared]:
        if before_write:
            before_write()
        store.put_files([(item.record, item.nodes, item.pages) for item in items])
        return items

    def finish_write() -> None:
        if not last_write:
            return
        for item in last_write.pop().result():
            status_word, verb = item.verb
            results[item.index] = IngestResult(
                item.record.name, status_word,
                f"{verb}: {item.record.pages} page(s), {item.record.chunks} chunks{page_summary(item.pages)}",
                item.record.pages, item.record.chunks, round(time.perf_counter() - item.t0, 3))

    try:
        status(0.0, "Reading")
        while not finished and not stopping():
            try:
                item = handoff.get(timeout=0.2)  # a cancel is seen even while a big file is being read
            except queue.Empty:
                continue
            if item is done_marker:
                finished = True
            elif isinstance(item, _Note):
                status(len(results) / total, item.message)
            elif isinstance(item, tuple):
                index, result = item
                results[index] = result
            else:
                batch.append(item)
            ready = sum(len(b.nodes) for b in batch)
            # Write when enough is ready, or when nothing more is ready yet (don't wait on a slow reader).
            if batch and (finished or ready >= WRITE_BATCH_CHUNKS or handoff.empty()):
                flush()
        finish_write()  # a write already started is finished: a file goes in whole or not at all
    finally:
        stop.set()
        writer.shutdown(wait=True)  # never leave a write running behind the caller's back
        reader.join(timeout=5)
    if failure:
        raise failure[0]
    cancelled = len(results) < total
    report(1.0, "Cancelled" if cancelled else "Done")
    return [results.get(i) or IngestResult(names[i], "cancelled", CANCELLED) for i in range(total)]
