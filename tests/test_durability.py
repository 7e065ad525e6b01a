"""kill -9 during an ingest: the knowledge base stays consistent (a file is fully in and listed, or not listed)."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, subprocess_env
from core.store import Store


def chunk_counts_by_ingest(store: Store, kb: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for page in store.all_chunks(kb):
        for meta in page["metadatas"]:
            counts[meta["ingest_id"]] = counts.get(meta["ingest_id"], 0) + 1
    return counts


def kill_when(proc: subprocess.Popen, marker: str, delay: float, timeout: float = 300) -> bool:
    """SIGKILL the process `delay` seconds after `marker` shows in its progress output. False if it ended first."""
    if not read_until(proc, marker, timeout):
        return False
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def kill_mid_write(proc: subprocess.Popen, marker: str, catalog: Path, timeout: float = 300) -> bool:
    """SIGKILL the process as soon as, after `marker`, the catalog holds a pending (half-written) file. Watching the
    catalog instead of a clock catches the write on a busy machine too (fixed delays missed it 10 times in CI)."""
    if not read_until(proc, marker, timeout):
        return False
    os.set_blocking(proc.stderr.fileno(), False)  # keep draining progress so the writer never blocks on the pipe
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        with sqlite3.connect(catalog, timeout=60) as db:
            if db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
        try:
            os.read(proc.stderr.fileno(), 65536)
        except BlockingIOError:
            pass
    return False


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> bool:
    seen, deadline = "", time.time() + timeout
    fd = proc.stderr.fileno()
    while marker not in seen:
        chunk = os.read(fd, 4096).decode(errors="replace")
        if not chunk or time.time() > deadline:
            return False
        seen += chunk
    return True


def test_kill_9_mid_ingest_leaves_a_consistent_store(data_dir, tmp_path, handbook):
    # Big enough that storing it takes a while (~250 chunks), so the catalog watch below sees it half written.
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(f"Section {i}. " + "The archive keeps records of river trade and harbour fees. " * 12
                               for i in range(250)))
    command = [sys.executable, "-m", "core", "ingest", str(handbook), str(big)]
    outcomes = []
    # A kill mid-write (the case that matters), and one just as the write starts.
    for when in ("mid-write", 0.0):
        proc = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(data_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if when == "mid-write":
            killed = kill_mid_write(proc, "Writing big.txt", data_dir / "catalog.sqlite")
        else:
            killed = kill_when(proc, "Writing big.txt", when)
        with sqlite3.connect(data_dir / "catalog.sqlite") as db:  # read before the reopen below recovers
            half_written = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        store = Store(data_dir)  # a fresh open, as the next start of the app: runs recovery
        listed = {f.name: f.chunks for f in store.files("default")}
        by_ingest = chunk_counts_by_ingest(store, "default")
        expected = {f.ingest_id: f.chunks for f in store.files("default")}
        assert by_ingest == expected, f"kill at {when}: chunks {by_ingest} vs catalog {expected}"
        with store.catalog.db() as db:
            assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
        assert "handbook.md" in listed  # written before the kill, and kept
        outcomes.append((when, killed, half_written, "big.txt" in listed))
        store.delete_file("default", "big.txt") if "big.txt" in listed else None
    print("kill outcomes (when, killed, half written, listed):", outcomes)
    # Every kill landed while big.txt was being written or listed, and the store was consistent every time.
    assert all(killed for _, killed, _, _ in outcomes), outcomes
    mid = [half for when, _, half, listed in outcomes if when == "mid-write"]
    assert all(mid), f"a mid-write kill found no half-written file: {outcomes}"


def test_opening_the_store_never_touches_a_live_writers_chunks(lab, handbook, data_dir):
    """Another process opening the store mid-ingest (say `kb list`) must neither wait for it nor clean it up."""
    lab.kbs.ingest([handbook])
    store = lab.kbs.store
    collection = store.collection_name("default")
    with store.writing():  # this test plays a long ingest that holds the lock
        with store.catalog.db() as db:
            db.execute("INSERT INTO pending VALUES ('live-ingest', ?, 0)", (collection,))
        store.collection("default").add(ids=["live-1"], embeddings=[[0.0] * 383 + [1.0]], documents=["live chunk"],
                                         metadatas=[{"file": "live.md", "page": "", "ingest_id": "live-ingest"}])
        t0 = time.perf_counter()
        listed = subprocess.run([sys.executable, "-m", "core", "kb", "list", "--json"], cwd=ROOT,
                                env=subprocess_env(data_dir), capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0 and time.perf_counter() - t0 < 60
        assert store.collection("default").get(ids=["live-1"])["ids"] == ["live-1"], "a live ingest was cleaned up"
        with store.catalog.db() as db:  # the "ingest" finishes: listed, mark cleared
            db.execute("INSERT INTO files (kb, name, sha256, pages, chunks, added, ingest_id)"
                       " VALUES ('default', 'live.md', 'x', 1, 1, 0, 'live-ingest')")
            db.execute("DELETE FROM pending WHERE ingest_id='live-ingest'")
    assert Store(data_dir).recover() == 0
    assert {f.name for f in store.files("default")} == {"handbook.md", "live.md"}
    assert store.collection("default").get(ids=["live-1"])["ids"] == ["live-1"]


def test_a_delete_interrupted_after_the_catalog_is_finished_on_next_open(lab, handbook, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("Unrelated words about tomatoes and basil.")
    lab.kbs.ingest([handbook, other])
    store = lab.kbs.store
    record = store.file("default", "handbook.md")
    store.catalog.unlist_file(record, store.collection_name("default"))  # what delete_file does first; then it dies
    assert {h.file for h in lab.kbs.search("Mirela Quanz Zorblat", top_k=5)[0]} == {"other.txt"}  # already unlisted
    assert store.recover() == 1
    assert store.chunk_count("default") == store.file("default", "other.txt").chunks


def test_a_knowledge_base_delete_interrupted_is_finished_on_next_open(lab, handbook):
    lab.kbs.ingest([handbook], kb="temp")
    store = lab.kbs.store
    collection = store.collection_name("temp")
    with store.catalog.db() as db:  # delete_kb's catalog transaction, then the process dies before Chroma is touched
        db.execute("INSERT INTO dropped VALUES (?, 0)", (collection,))
        db.execute("DELETE FROM files WHERE kb='temp'")
        db.execute("DELETE FROM kbs WHERE name='temp'")
    assert store.recover() == 1
    assert collection not in [c.name for c in store.chroma.client().list_collections()]


def test_two_processes_ingesting_into_one_knowledge_base_lose_nothing(data_dir, tmp_path):
    """Two uploads at once (two CLI processes): every chunk of both is stored, listed and searchable."""
    files = []
    for name, topic in (("alpha.txt", "lighthouse keepers"), ("beta.txt", "glacier surveyors")):
        path = tmp_path / name
        path.write_text("\n\n".join(f"Report {i} about {topic}: station {name[:-4]}-{i} logged its readings."
                                    for i in range(120)))
        files.append(path)
    env = subprocess_env(data_dir)
    procs = [subprocess.Popen([sys.executable, "-m", "core", "ingest", str(path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for path in files]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    store = Store(data_dir)
    listed = {f.name: f for f in store.files("default")}
    assert set(listed) == {"alpha.txt", "beta.txt"}
    assert chunk_counts_by_ingest(store, "default") == {f.ingest_id: f.chunks for f in listed.values()}
    collection = store.collection("default")
    for record in listed.values():  # each stored vector is findable: query with its own embedding
        got = collection.get(where={"ingest_id": record.ingest_id}, include=["embeddings"], limit=5)
        for chunk_id, vector in zip(got["ids"], got["embeddings"]):
            found = collection.query(query_embeddings=[list(vector)], n_results=1)["ids"][0]
            assert found == [chunk_id]


def test_ctrl_c_mid_ingest_keeps_the_files_written_and_lists_the_rest_as_cancelled(data_dir, tmp_path):
    """The first Ctrl-C stops `python -m core ingest` cleanly: the batch being written goes in whole, nothing after
    it, every file gets its line, and the store is as consistent as after any write."""
    files = []
    for n in range(4):  # ~100 chunks each: the first write (256 chunks or fewer) cannot hold them all
        path = tmp_path / f"part{n}.txt"
        path.write_text("\n\n".join(f"Part {n}, section {i}. " + "The archive keeps records of river trade. " * 14
                                    for i in range(150)))
        files.append(path)
    proc = subprocess.Popen([sys.executable, "-m", "core", "ingest", *map(str, files)], cwd=ROOT,
                            env=subprocess_env(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert read_until(proc, "Writing", 300), "the ingest never started writing"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"cancelling: the file being written is finished" in err
    lines = out.decode().splitlines()
    assert len(lines) == 4, lines
    added = [line.split()[1].rstrip(":") for line in lines if line.split()[0] == "added"]
    cancelled = [line.split()[1].rstrip(":") for line in lines if line.split()[0] == "cancelled"]
    assert added and cancelled and added + cancelled == [f"part{n}.txt" for n in range(4)], lines
    assert all(line.endswith("not added: the ingest was cancelled before this file was stored")
               for line in lines if line.split()[0] == "cancelled")
    store = Store(data_dir)
    listed = {f.name: f for f in store.files("default")}
    assert sorted(listed) == added
    assert chunk_counts_by_ingest(store, "default") == {f.ingest_id: f.chunks for f in listed.values()}
    with store.catalog.db() as db:
        assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
