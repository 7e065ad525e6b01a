"""kill -9 during an ingest: the knowledge base stays consistent (a file is fully in and listed, or not listed)."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import ROOT, subprocess_env
from core.store import Store


def chunk_counts_by_ingest(store: Store, kb: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for page in store._all_chunks(kb):
        for meta in page["metadatas"]:
            counts[meta["ingest_id"]] = counts.get(meta["ingest_id"], 0) + 1
    return counts


def kill_when(proc: subprocess.Popen, marker: str, delay: float, timeout: float = 300) -> bool:
    """SIGKILL the process `delay` seconds after `marker` shows in its progress output. False if it ended first."""
    seen, deadline = "", time.time() + timeout
    fd = proc.stderr.fileno()
    while marker not in seen:
        chunk = os.read(fd, 4096).decode(errors="replace")
        if not chunk or time.time() > deadline:
            return False
        seen += chunk
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_kill_9_mid_ingest_leaves_a_consistent_store(data_dir, tmp_path, handbook):
    big = tmp_path / "big.txt"
    big.write_text("\n\n".join(f"Section {i}. " + "The archive keeps records of river trade and harbour fees. " * 12
                               for i in range(150)))
    command = [sys.executable, "-m", "core", "ingest", str(handbook), str(big)]
    outcomes = []
    for delay in (0.0, 0.15, 0.4):
        proc = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(data_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        killed = kill_when(proc, "Writing big.txt", delay)
        with sqlite3.connect(data_dir / "catalog.sqlite") as db:  # read before the reopen below recovers
            half_written = db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
        store = Store(data_dir)  # a fresh open, as the next start of the app: runs recovery
        listed = {f.name: f.chunks for f in store.files("default")}
        by_ingest = chunk_counts_by_ingest(store, "default")
        expected = {f.ingest_id: f.chunks for f in store.files("default")}
        assert by_ingest == expected, f"kill after {delay}s: chunks {by_ingest} vs catalog {expected}"
        with store._db() as db:
            assert db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0
        assert "handbook.md" in listed  # written before the kill, and kept
        outcomes.append((killed, half_written, "big.txt" in listed))
        store.delete_file("default", "big.txt") if "big.txt" in listed else None
    # The kills landed while big.txt was being written or listed, and the store was consistent every time.
    assert all(killed for killed, _, _ in outcomes), outcomes
    assert any(half_written for _, half_written, _ in outcomes), f"no kill caught a half-written file: {outcomes}"
