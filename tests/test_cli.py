"""The CLI as a user runs it, and the proof that nothing reaches the network."""
import json
import sys

import pytest

from conftest import ROOT, cli_here, run_cli, subprocess_env

COMMANDS = [[], ["dataset"], ["train"], ["jobs"], ["adapters"], ["ingest"], ["ask"], ["search"], ["kb"], ["kb", "list"], ["kb", "show"], ["kb", "create"], ["kb", "configure"], ["kb", "rename"], ["kb", "delete"], ["info"], ["compare"], ["votes"], ["votes", "export"], ["votes", "leaderboard"], ["advise"], ["eval", "run"], ["demo", "load"]]


def test_help_everywhere(data_dir):
    """`python -m core --help` as a user types it (its own process: the entry point), then every command's help
    through the same main() in this process (one process start each would add ~1 s per command for nothing)."""
    top = run_cli(["--help"], data_dir)
    assert top.returncode == 0 and "usage: python -m core" in top.stdout
    for command in COMMANDS:
        done = cli_here([*command, "--help"], data_dir)
        assert done.returncode == 0 and f"usage: python -m core {' '.join(command)}".strip() in done.stdout, command


def test_ingest_ask_kb_roundtrip(handbook, data_dir, tmp_path):
    added = cli_here(["ingest", str(handbook), "--json"], data_dir)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["results"][0]["status"] == "added"

    asked = cli_here(["ask", "Who founded the Zorblat Institute?", "--variant", "rag", "--top-k", "2",
                     "--max-new-tokens", "32", "--json"], data_dir)
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert answer["variant"] == "rag" and "Quanz" in answer["answer"]
    assert answer["sources"][0]["file"] == "handbook.md" and {"page", "score", "text"} <= set(answer["sources"][0])
    assert {"retrieval_ms", "ttft_ms", "tokens_per_s"} <= set(answer["timings"])
    looping = cli_here(["ask", "List the chemical stereoisomers of the ring.", "--variant", "base", "--no-loop-stop",
                        "--max-new-tokens", "60", "--json"], data_dir)
    assert looping.returncode == 0 and json.loads(looping.stdout)["timings"]["new_tokens"] == 60  # ran to the limit

    listed = json.loads(cli_here(["kb", "list", "--json"], data_dir).stdout)
    assert listed["knowledge_bases"][0]["name"] == "default" and listed["knowledge_bases"][0]["files"] == 1
    renamed = cli_here(["kb", "rename", "default", "handbooks", "--json"], data_dir)
    assert renamed.returncode == 0 and json.loads(renamed.stdout) == {"renamed": "default", "to": "handbooks"}
    gone = cli_here(["kb", "delete", "handbooks", "--file", "handbook.md", "--json"], data_dir)
    assert gone.returncode == 0 and json.loads(gone.stdout)["file"] == "handbook.md"
    assert json.loads(cli_here(["kb", "show", "handbooks", "--json"], data_dir).stdout)["files"] == []


def test_errors_are_clear_with_exit_codes(data_dir, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    bad = cli_here(["ingest", str(tmp_path / "empty.txt")], data_dir)
    assert bad.returncode == 1 and "empty.txt" in bad.stdout and "empty" in bad.stdout
    missing = cli_here(["kb", "show", "nope", "--json"], data_dir)
    assert missing.returncode == 1 and "no such knowledge base" in json.loads(missing.stdout)["error"]
    usage = cli_here(["ask"], data_dir)
    assert usage.returncode == 2 and "required" in usage.stderr
    hot = cli_here(["compare", "hello", "--temperature", "5", "--json"], data_dir)
    assert hot.returncode == 1 and "temperature must be between 0" in json.loads(hot.stdout)["error"]
    fmt = cli_here(["votes", "export", str(tmp_path / "v.jsonl"), "--format", "csv"], data_dir)
    assert fmt.returncode == 2 and "invalid choice: 'csv'" in fmt.stderr
    empty = cli_here(["votes", "export", str(tmp_path / "v.jsonl"), "--json"], data_dir)
    assert empty.returncode == 0 and json.loads(empty.stdout)["rows"] == 0  # no votes yet: an empty, valid file
    assert (tmp_path / "v.jsonl").read_text() == ""


# Runs the CLI with every socket connection outside loopback recorded and refused, on top of dead proxies.
SEPARATOR = "\n--- next command ---\n"
NO_NETWORK_RUNNER = f"SEPARATOR = {SEPARATOR!r}\n" + r"""
import socket, sys
attempts = []
def guard(event, args):
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else str(address)
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            attempts.append(host)
            raise OSError(f"network blocked by test: {address}")
    if event == "socket.getaddrinfo" and args[0] not in ("127.0.0.1", "::1", "localhost", None):
        attempts.append(args[0])
        raise OSError(f"DNS blocked by test: {args[0]}")
sys.addaudithook(guard)
from core.cli import main
commands, current = [], []
for arg in sys.argv[1:] + ["::"]:  # several commands, "::" between them, in this one process
    if arg == "::":
        commands.append(current)
        current = []
    else:
        current.append(arg)
code = 0
for number, command in enumerate(commands):
    if number:
        print(SEPARATOR, flush=True)
    code = code or main(command)
if attempts:
    print("NETWORK ATTEMPTS:", attempts, file=sys.stderr)
    code = 99
raise SystemExit(code)
"""


def test_ingest_and_ask_work_with_no_network(handbook, data_dir):
    import subprocess

    dead = "http://127.0.0.1:9"
    env = subprocess_env(data_dir, HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead,
                         ALL_PROXY=dead, NO_PROXY="", HF_HUB_OFFLINE="1")

    # Both commands in one guarded process (ingest, then ask): a process start costs ~5 s here.
    done = subprocess.run([sys.executable, "-c", NO_NETWORK_RUNNER, "ingest", str(handbook), "--json", "::", "ask",
                           "When was the Zorblat Institute founded?", "--variant", "rag", "--max-new-tokens", "24",
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    added, asked = (json.loads(part) for part in done.stdout.split(SEPARATOR))
    assert added["results"][0]["status"] == "added"
    assert "1987" in asked["answer"] and asked["sources"][0]["file"] == "handbook.md"
