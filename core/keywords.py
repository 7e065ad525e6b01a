"""Keyword search (BM25) over a knowledge base's chunks: an SQLite FTS5 index kept in the catalog's file.

Why FTS5: the index is saved with the catalog and changed in the same transaction that lists or unlists a file, so
it always holds exactly the listed files' chunks, survives a restart, and a change costs only the changed file's
rows (the in-memory BM25 index before it was rebuilt from every chunk after each change: 11.5 s at 100k chunks).

Words are lower-cased, English stop words dropped and the rest stemmed (Snowball) before FTS5 sees them, so a
search, its index and the highlighting of matched words (`matched_spans`) agree on what matches. FTS5 ranks with
its own bm25() (k1 1.2, b 0.75). Each knowledge base has its own tables (rows, index, word counts), named after its
Chroma collection (which a rename never changes), since BM25's word statistics are per corpus.

Every function takes an open connection: the catalog decides the transaction.
"""
from __future__ import annotations

import re
import sqlite3
from functools import lru_cache

# The English stop words Lucene's StandardAnalyzer drops: too common to tell passages apart.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split())
_WORD = re.compile(r"\w+")
ALL_WORDS_UP_TO = 10_000  # chunks: up to here, searching the common words as well costs under ~20 ms


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def words(text: str) -> list[str]:
    """The stems keyword search indexes and looks for, in order."""
    return _stemmer().stemWords([w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS])


def matched_spans(query: str, text: str) -> list[tuple[int, int]]:
    """(start, end) of the words in `text` that keyword search would match to a word of the query. For highlighting
    passages."""
    wanted = set(words(query))
    found = [m for m in _WORD.finditer(text) if m.group().lower() not in STOP_WORDS]
    stems = _stemmer().stemWords([m.group().lower() for m in found])
    return [(m.start(), m.end()) for m, stem in zip(found, stems) if stem in wanted]


def _tables(collection: str) -> tuple[str, str, str]:
    """(the rows table, the FTS5 table, its word counts) of a collection; its name is ours (kb_<hex>), checked all
    the same since it goes into SQL."""
    if not re.fullmatch(r"\w+", collection):
        raise ValueError(f"not a collection name: {collection!r}")
    return f"keyword_rows_{collection}", f"keyword_index_{collection}", f"keyword_vocabulary_{collection}"


def exists(db: sqlite3.Connection, collection: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name=?", (_tables(collection)[2],)).fetchone() is not None


def create(db: sqlite3.Connection, collection: str) -> None:
    rows, index, vocabulary = _tables(collection)
    # The rows table keeps each chunk's id, file version and indexed words (FTS5 needs the words to delete a row);
    # the index reads its text from there (external content) instead of keeping a second copy.
    db.execute(f'CREATE TABLE IF NOT EXISTS "{rows}" (id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL, '
               'ingest_id TEXT NOT NULL, words TEXT NOT NULL)')
    db.execute(f'CREATE INDEX IF NOT EXISTS "{rows}_by_ingest" ON "{rows}" (ingest_id)')
    # Words arrive stemmed and joined by spaces: the tokenizer must only split them again (\w keeps "_" and accents).
    db.execute(f'CREATE VIRTUAL TABLE IF NOT EXISTS "{index}" USING fts5(words, content="{rows}", '
               "content_rowid=id, tokenize=\"unicode61 remove_diacritics 0 tokenchars '_'\")")
    db.execute(f'CREATE VIRTUAL TABLE IF NOT EXISTS "{vocabulary}" USING fts5vocab("{index}", row)')


def drop(db: sqlite3.Connection, collection: str) -> None:
    rows, index, vocabulary = _tables(collection)
    db.execute(f'DROP TABLE IF EXISTS "{vocabulary}"')
    db.execute(f'DROP TABLE IF EXISTS "{index}"')
    db.execute(f'DROP TABLE IF EXISTS "{rows}"')


def add(db: sqlite3.Connection, collection: str, ingest_id: str, chunks: list[tuple[str, str]]) -> None:
    """Index one file version's chunks, given as (chunk id, text)."""
    rows, index, _ = _tables(collection)
    db.executemany(f'INSERT INTO "{rows}" (chunk_id, ingest_id, words) VALUES (?, ?, ?)',
                   [(chunk_id, ingest_id, " ".join(words(text))) for chunk_id, text in chunks])
    db.execute(f'INSERT INTO "{index}" (rowid, words) SELECT id, words FROM "{rows}" WHERE ingest_id=?', (ingest_id,))


def remove(db: sqlite3.Connection, collection: str, ingest_id: str) -> None:
    """Take one file version's chunks out of the index."""
    rows, index, _ = _tables(collection)
    db.execute(f'INSERT INTO "{index}" ("{index}", rowid, words) SELECT \'delete\', id, words FROM "{rows}" '
               'WHERE ingest_id=?', (ingest_id,))
    db.execute(f'DELETE FROM "{rows}" WHERE ingest_id=?', (ingest_id,))


def search(db: sqlite3.Connection, collection: str, query: str, limit: int) -> list[tuple[str, float]]:
    """Chunk ids matching words of the query, best BM25 score first, with their scores (higher is better).

    BM25 gives a word found in over half the chunks no weight (FTS5 sets its IDF to ~0), yet scoring the chunks
    that hold it is most of a search's time in a big knowledge base (~100 ms at 100k chunks). So those words are
    searched only when the telling ones find fewer than `limit` chunks, and only up to ALL_WORDS_UP_TO chunks; the
    ranking of the chunks found by telling words is the same either way."""
    wanted = list(dict.fromkeys(words(query)))  # each word once, in order
    if not wanted or limit < 1:
        return []
    rows, index, vocabulary = _tables(collection)
    total = db.execute(f'SELECT COUNT(*) FROM "{rows}"').fetchone()[0]
    chunks_with = {word: (db.execute(f'SELECT doc FROM "{vocabulary}" WHERE term=?', (word,)).fetchone() or (0,))[0]
                   for word in wanted}
    present = [word for word in wanted if chunks_with.get(word)]
    telling = [word for word in present if chunks_with[word] <= total / 2]
    found = _match(db, rows, index, telling, limit) if telling else []
    if len(found) < limit and len(telling) < len(present) and total <= ALL_WORDS_UP_TO:
        found = _match(db, rows, index, present, limit)
    return found


def _match(db: sqlite3.Connection, rows: str, index: str, wanted: list[str], limit: int) -> list[tuple[str, float]]:
    match = " OR ".join(f'"{word}"' for word in wanted)  # quoted: a word like "and" or "near" is not an operator
    found = db.execute(f'SELECT r.chunk_id, bm25("{index}") AS score FROM "{index}" JOIN "{rows}" r '
                       f'ON r.id = "{index}".rowid WHERE "{index}" MATCH ? ORDER BY score LIMIT ?',
                       (match, limit)).fetchall()
    return [(chunk_id, -score) for chunk_id, score in found]  # FTS5's bm25() is negative: lower is better
