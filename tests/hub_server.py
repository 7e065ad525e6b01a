"""A stand-in for the Hugging Face Hub on 127.0.0.1, serving one folder as a model repository the way the Hub's HTTP
API does (the model info with file sizes, HEAD and GET on resolve/ URLs, byte ranges), so downloads are tested with
the real huggingface_hub client and no network. `stall_at` makes the first GET of a file stop sending after that
many bytes and hang, as a dropped connection does; `ranges` records the byte ranges asked for."""
from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo_id: str, folder: Path, stall_at: dict[str, int] | None = None):
        self.repo_id, self.folder = repo_id, Path(folder)
        self.stall_at = dict(stall_at or {})
        self.ranges: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                path = self.path.split("?", 1)[0]
                if path.startswith(f"/api/models/{hub.repo_id}"):
                    return self._send(200, json.dumps(hub.info()).encode(), "application/json", body)
                match = re.match(rf"^/{re.escape(hub.repo_id)}/resolve/[^/]+/(.+)$", path)
                file = hub.folder / match.group(1) if match else None
                if file is None or not file.is_file():
                    return self._send(404, b"not found", "text/plain", body, {"X-Error-Code": "EntryNotFound"})
                data = file.read_bytes()
                start = 0
                asked = self.headers.get("Range")
                if body:
                    hub.ranges.append((file.name, asked))
                if asked and (m := re.match(r"bytes=(\d+)-", asked)):
                    start = int(m.group(1))
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                           "Accept-Ranges": "bytes"}
                if start:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                stall = hub.stall_at.pop(file.name, None) if body else None
                self._send(206 if start else 200, data[start:], "application/octet-stream", body, headers,
                           stall=stall)

            def _send(self, code, data, kind, body, headers=None, stall=None):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if not body:
                    return
                if stall is None:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[:stall])
                self.wfile.flush()
                hub.release.wait(120)  # a connection that goes quiet mid-file

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def info(self) -> dict:
        files = sorted(p for p in self.folder.iterdir() if p.is_file())
        return {"id": self.repo_id, "modelId": self.repo_id, "sha": COMMIT, "private": False, "tags": [],
                "siblings": [{"rfilename": p.name, "size": p.stat().st_size,
                              "blobId": hashlib.sha1(p.read_bytes()).hexdigest(),
                              # large files are LFS files on the Hub: their sha256 comes with them
                              **({"lfs": {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                          "size": p.stat().st_size, "pointerSize": 134}}
                                 if p.suffix == ".safetensors" else {})} for p in files]}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
