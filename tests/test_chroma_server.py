"""Scale-out: the same engine against a real Chroma server (`chroma run`) on 127.0.0.1 instead of the embedded store."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, run_cli
from core.config import load_settings
from core.errors import LabError
from core.lab import Lab

CHROMA = Path(sys.executable).with_name("chroma")


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    if not CHROMA.exists():
        pytest.skip("the chroma command of the chromadb package is not installed")
    port = free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    proc = subprocess.Popen([str(CHROMA), "run", "--path", str(folder / "db"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with no_proxy.open(f"{url}/api/v2/heartbeat", timeout=2):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((folder / "server.log").read_text())
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("chroma server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_ingest_search_delete_against_a_chroma_server(chroma_url, data_dir, handbook, tmp_path):
    lab = Lab(load_settings(data_dir=data_dir, chroma_url=chroma_url))
    other = tmp_path / "bridges.txt"
    other.write_text("The Quorvin Bridge was designed by Tessaly Brandt in 1962.")
    results = lab.kbs.ingest([handbook, other])
    assert [r.status for r in results] == ["added", "added"]
    assert not (data_dir / "chroma").exists(), "vectors must go to the server, not the embedded store"

    hits, _ = lab.kbs.search("Who designed the Quorvin Bridge?", top_k=2)
    assert hits[0].file == "bridges.txt" and hits[0].vector_rank and hits[0].keyword_rank

    # Another process (the CLI) sharing the server and the data folder sees the same knowledge base.
    shown = run_cli(["kb", "show", "default", "--json"], data_dir, LAB_CHROMA_URL=chroma_url)
    assert {f["file"] for f in json.loads(shown.stdout)["files"]} == {"handbook.md", "bridges.txt"}
    searched = run_cli(["search", "Mirela Quanz", "--json", "--top-k", "1"], data_dir, LAB_CHROMA_URL=chroma_url)
    assert json.loads(searched.stdout)["hits"][0]["file"] == "handbook.md", searched.stderr

    lab.kbs.delete_file("default", "bridges.txt")
    assert lab.kbs.store.chunk_count("default") == lab.kbs.show("default")["chunks"]
    assert {h.file for h in lab.kbs.search("Quorvin Bridge Brandt", top_k=5)[0]} == {"handbook.md"}
    lab.kbs.delete("default")
    assert lab.kbs.list() == []


def test_unreachable_server_is_a_clear_error(data_dir, handbook):
    lab = Lab(load_settings(data_dir=data_dir, chroma_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(LabError, match="cannot reach the Chroma server"):
        lab.kbs.ingest([handbook])
