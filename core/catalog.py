"""The knowledge bases' catalog: a SQLite file listing knowledge bases, files, their stored page text, and the marks
that make writes recoverable (see core/store.py for how a write uses them)."""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core import keywords
from core.errors import InputError


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


FILE_COLUMNS = "kb, name, sha256, pages, chunks, added, ingest_id, chunk_size, chunk_overlap"


@dataclass
class Chunking:
    """How a knowledge base splits text: chunk size and overlap, in the embedding model's tokens."""

    size: int
    overlap: int

    def to_dict(self) -> dict:
        return {"chunk_size": self.size, "chunk_overlap": self.overlap}


SCHEMA = """
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
# Catalogs made before these were kept gain the columns (NULL: the defaults of the time; a page's text layer).
ADDED_COLUMNS = (("kbs", "chunk_size", "INTEGER"), ("kbs", "chunk_overlap", "INTEGER"), ("files", "chunk_size", "INTEGER"),
                 ("files", "chunk_overlap", "INTEGER"), ("pages", "read_by", "TEXT"))


class Catalog:
    """`pending` holds ingest ids whose chunks must not survive (a file being written, replaced or deleted) and
    `dropped` holds collections being deleted; only listed files' chunks are ever searched."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with self.db() as db:
            db.executescript(SCHEMA)
            for table, column, kind in ADDED_COLUMNS:
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @contextmanager
    def db(self):
        """One transaction (committed on success, rolled back on error)."""
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:
                yield db
        finally:
            db.close()

    # ---- knowledge bases ------------------------------------------------------------------------------------
    def kb_names(self) -> list[str]:
        with self.db() as db:
            return [row[0] for row in db.execute("SELECT name FROM kbs ORDER BY name")]

    def last_used_kb(self) -> str | None:
        """The knowledge base a file was last added to (else the newest one), or None when there is none."""
        with self.db() as db:
            row = db.execute("SELECT kb FROM files ORDER BY added DESC LIMIT 1").fetchone()
            row = row or db.execute("SELECT name FROM kbs ORDER BY created DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def has_kb(self, kb: str) -> bool:
        return self.collection(kb) is not None

    def collection(self, kb: str) -> str | None:
        """The Chroma collection holding a knowledge base's chunks (not its name: a rename never touches Chroma)."""
        with self.db() as db:
            row = db.execute("SELECT collection FROM kbs WHERE name=?", (kb,)).fetchone()
        return row[0] if row else None

    def embed_model(self, kb: str) -> str | None:
        with self.db() as db:
            row = db.execute("SELECT embed_model FROM kbs WHERE name=?", (kb,)).fetchone()
        return row[0] if row else None

    def add_kb(self, kb: str, collection: str, embed_model: str | None, chunking: Chunking | None) -> None:
        size, overlap = (chunking.size, chunking.overlap) if chunking else (None, None)
        with self.db() as db:
            db.execute("INSERT INTO kbs (name, created, collection, embed_model, chunk_size, chunk_overlap)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (kb, time.time(), collection, embed_model, size, overlap))
            keywords.create(db, collection)

    def chunking(self, kb: str) -> Chunking | None:
        with self.db() as db:
            row = db.execute("SELECT chunk_size, chunk_overlap FROM kbs WHERE name=?", (kb,)).fetchone()
        return Chunking(row[0], row[1]) if row and row[0] is not None else None

    def set_chunking(self, kb: str, chunking: Chunking) -> None:
        with self.db() as db:
            db.execute("UPDATE kbs SET chunk_size=?, chunk_overlap=? WHERE name=?", (chunking.size, chunking.overlap, kb))

    def rename_kb(self, kb: str, new_name: str) -> None:
        if self.has_kb(new_name):
            raise InputError("a knowledge base with this name already exists", subject=new_name)
        with self.db() as db:  # one transaction, catalog only: a rename cannot half-happen
            db.execute("UPDATE kbs SET name=? WHERE name=?", (new_name, kb))
            db.execute("UPDATE files SET kb=? WHERE kb=?", (new_name, kb))

    def unlist_kb(self, kb: str, collection: str) -> None:
        """Forget a knowledge base and mark its collection to be dropped, in one transaction."""
        with self.db() as db:
            db.execute("INSERT OR IGNORE INTO dropped (collection, since) VALUES (?, ?)", (collection, time.time()))
            db.execute("DELETE FROM pages WHERE ingest_id IN (SELECT ingest_id FROM files WHERE kb=?)", (kb,))
            db.execute("DELETE FROM files WHERE kb=?", (kb,))
            db.execute("DELETE FROM pending WHERE collection=?", (collection,))
            db.execute("DELETE FROM kbs WHERE name=?", (kb,))
            keywords.drop(db, collection)

    # ---- files ------------------------------------------------------------------------------------------------
    def files(self, kb: str) -> list[FileRecord]:
        with self.db() as db:
            rows = db.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE kb=? ORDER BY added", (kb,)).fetchall()
        return [FileRecord(*row) for row in rows]

    def file(self, kb: str, name: str) -> FileRecord | None:
        with self.db() as db:
            row = db.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE kb=? AND name=?", (kb, name)).fetchone()
        return FileRecord(*row) if row else None

    def listed_ingest_ids(self, kb: str) -> frozenset:
        """Ingest ids of the files the catalog lists: only their chunks may be searched (not half-written ones)."""
        with self.db() as db:
            return frozenset(row[0] for row in db.execute("SELECT ingest_id FROM files WHERE kb=?", (kb,)))

    def pages(self, ingest_id: str) -> list[tuple[str, str, str]]:
        """(label, text, how it was read) of each page, in order."""
        with self.db() as db:
            return db.execute("SELECT label, text, COALESCE(read_by, 'text') FROM pages WHERE ingest_id=? ORDER BY seq",
                              (ingest_id,)).fetchall()

    def ocr_pages(self, kb: str) -> dict[str, list[str]]:
        """File name -> labels of its pages read by OCR, for the files that have any."""
        with self.db() as db:
            rows = db.execute("SELECT f.name, p.label FROM files f JOIN pages p ON p.ingest_id = f.ingest_id "
                              "WHERE f.kb=? AND p.read_by='ocr' ORDER BY f.name, p.seq", (kb,)).fetchall()
        out: dict[str, list[str]] = {}
        for name, label in rows:
            out.setdefault(name, []).append(label)
        return out

    def list_files(self, items: list[tuple[FileRecord, list, list]], collection: str) -> list[str]:
        """List new file versions with their pages, index their chunks' words, clear their marks and mark the versions
        they replace (out of the keyword index), in one transaction; returns the replaced ingest ids (whose chunks
        must now go). Items are (record, pages, chunks as (chunk id, text))."""
        replaced = []
        with self.db() as db:
            indexed = keywords.exists(db, collection)  # not yet in a catalog made before it: built on first search
            for record, pages, chunks in items:
                old = db.execute("SELECT ingest_id FROM files WHERE kb=? AND name=?",
                                 (record.kb, record.name)).fetchone()
                db.execute(f"INSERT OR REPLACE INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (record.kb, record.name, record.sha256, record.pages, record.chunks, record.added,
                            record.ingest_id, record.chunk_size, record.chunk_overlap))
                db.executemany("INSERT OR REPLACE INTO pages (ingest_id, seq, label, text, read_by) VALUES (?, ?, ?, ?, ?)",
                               [(record.ingest_id, seq, p.label, p.text, p.read_by) for seq, p in enumerate(pages)])
                db.execute("DELETE FROM pending WHERE ingest_id=?", (record.ingest_id,))
                if old is not None and old[0] != record.ingest_id:
                    _mark(db, old[0], collection)
                    replaced.append(old[0])
                if indexed:
                    if old is not None:
                        keywords.remove(db, collection, old[0])
                    keywords.add(db, collection, record.ingest_id, chunks)
        return replaced

    def unlist_file(self, record: FileRecord, collection: str) -> None:
        """Unlist a file and mark its chunks to go, in one transaction."""
        with self.db() as db:
            db.execute("DELETE FROM files WHERE kb=? AND name=?", (record.kb, record.name))
            _mark(db, record.ingest_id, collection)
            if keywords.exists(db, collection):
                keywords.remove(db, collection, record.ingest_id)

    # ---- keyword index ------------------------------------------------------------------------------------
    def has_keyword_index(self, collection: str) -> bool:
        with self.db() as db:
            return keywords.exists(db, collection)

    def keyword_search(self, collection: str, query: str, limit: int) -> list[tuple[str, float]] | None:
        """Listed chunks matching the query's words, best first; None if this knowledge base has no keyword index
        yet (made by an older version: `build_keyword_index`)."""
        with self.db() as db:
            if not keywords.exists(db, collection):
                return None
            return keywords.search(db, collection, query, limit)

    def build_keyword_index(self, collection: str, chunks_by_ingest: dict[str, list[tuple[str, str]]]) -> None:
        """Index every listed file's chunks at once, for a knowledge base made before the keyword index was kept.
        The caller holds the store's write lock, so no file is listed meanwhile."""
        with self.db() as db:
            keywords.drop(db, collection)
            keywords.create(db, collection)
            for ingest_id, chunks in chunks_by_ingest.items():
                keywords.add(db, collection, ingest_id, chunks)

    # ---- marks --------------------------------------------------------------------------------------------
    def mark_pending(self, ingest_ids: list[str], collection: str) -> None:
        with self.db() as db:
            for ingest_id in ingest_ids:
                _mark(db, ingest_id, collection)

    def clear_pending(self, ingest_id: str) -> None:
        """The marked chunks are gone: forget their stored text and the mark."""
        with self.db() as db:
            db.execute("DELETE FROM pages WHERE ingest_id=?", (ingest_id,))
            db.execute("DELETE FROM pending WHERE ingest_id=?", (ingest_id,))

    def clear_dropped(self, collection: str) -> None:
        with self.db() as db:
            db.execute("DELETE FROM dropped WHERE collection=?", (collection,))

    def has_marks(self) -> bool:
        with self.db() as db:
            return bool(db.execute("SELECT (SELECT COUNT(*) FROM pending) + (SELECT COUNT(*) FROM dropped)").fetchone()[0])

    def marks(self) -> tuple[list[tuple[str, str]], list[str]]:
        """(pending (ingest id, collection) pairs, dropped collections)."""
        with self.db() as db:
            pending = db.execute("SELECT ingest_id, collection FROM pending").fetchall()
            dropped = [row[0] for row in db.execute("SELECT collection FROM dropped")]
        return pending, dropped


def _mark(db, ingest_id: str, collection: str) -> None:
    """Mark an ingest id whose chunks must go unless its file ends up listed."""
    db.execute("INSERT INTO pending (ingest_id, collection, started) VALUES (?, ?, ?)", (ingest_id, collection, time.time()))
