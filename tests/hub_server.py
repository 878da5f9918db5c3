"""A stand-in for the Hugging Face model hub, which no machine that runs these tests can reach.

It serves model directories on a loopback port the way huggingface.co serves repositories,
but only the endpoints tokentree's download (huggingface_hub's `model_info` and
`hf_hub_download`) calls, read from huggingface_hub's hf_api.py and file_download.py:

- GET  /api/models/{repo}[/revision/{rev}][?blobs=True]  -> {"id", "sha", "siblings": [...]}
  (each sibling {"rfilename"}, plus "size" and "blobId" with blobs=True, as the hub does);
- HEAD /{repo}/resolve/{rev}/{file}  -> 200, X-Repo-Commit, ETag, Content-Length, no body;
- GET  /{repo}/resolve/{rev}/{file}  -> the bytes (a `Range: bytes=N-` request gets 206).

An unknown repository is 404 with `X-Error-Code: RepoNotFound` (huggingface_hub raises
RepositoryNotFoundError for it), an unknown file 404 `EntryNotFound`, anything else a plain
404. Every request is recorded in `requests` as (method, path). With `stall` set, the weights
stop after their first chunk until `release()` (`stalled` is set once that chunk is sent), so
a test can interrupt a download in the middle: a state it waits for, not a moment it hopes
to hit while the bytes trickle in.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CHUNK = 4096


class FakeHub:
    """`FakeHub({"owner/name": Path(model_dir)})`; `with hub:` serves it at `hub.endpoint`."""

    def __init__(self, repos: dict[str, Path]):
        self.repos = {name: {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}
                      for name, d in repos.items()}
        self.requests: list[tuple[str, str]] = []
        self.stall = False  # True: *.safetensors stop after their first chunk until release()
        self.stalled = threading.Event()  # a stalled download has sent its first chunk
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()  # 40 hex digits, like a git commit

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def release(self) -> None:
        """Let every stalled download go on."""
        self._released.set()

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects of the hub

            def log_message(self, *args) -> None:  # quiet: the test reads `requests`
                pass

            def do_GET(self) -> None:
                hub._serve(self, body=True)

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        self.requests.append((h.command, path))
        if (m := _API.match(path)) and body:
            blobs = parse_qs(url.query).get("blobs", [""])[0].lower() in ("true", "1")
            return self._model_info(h, m["repo"], blobs=blobs)
        if m := _RESOLVE.match(path):
            return self._file(h, m["repo"], m["file"], body)
        self._send(h, 404, b"not a hub endpoint this stand-in knows", body=body)

    def _model_info(self, h, repo: str, blobs: bool) -> None:
        files = self.repos.get(repo)
        if files is None:
            return self._send(h, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        siblings = [{"rfilename": name} | ({"size": len(data), "blobId": _etag(data)} if blobs else {})
                    for name, data in files.items()]
        info = {"id": repo, "modelId": repo, "sha": self.commit(repo), "private": False, "siblings": siblings}
        self._send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"})

    def _file(self, h, repo: str, name: str, body: bool) -> None:
        files = self.repos.get(repo)
        if files is None:
            return self._send(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body=body)
        data = files.get(name)
        if data is None:
            return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"}, body=body)
        start = 0
        if m := re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", "")):
            start = min(int(m[1]), len(data))
        headers = {"X-Repo-Commit": self.commit(repo), "ETag": f'"{_etag(data)}"',
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        stall = self.stall and name.endswith(".safetensors")
        self._send(h, 206 if start else 200, data[start:], headers, body=body, stall=stall)

    def _send(self, h, status: int, data: bytes, headers: dict | None = None, *, body: bool = True,
              stall: bool = False) -> None:
        try:
            h.send_response(status)
            for key, value in (headers or {}).items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if not body:
                return
            for i in range(0, len(data), _CHUNK):
                h.wfile.write(data[i : i + _CHUNK])
                if stall and i == 0:
                    h.wfile.flush()
                    self.stalled.set()
                    self._released.wait(600)  # never forever: a test that forgot release()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a test interrupted it)


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()  # as the hub's ETag of an LFS file
