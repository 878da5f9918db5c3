"""A deliberately broken OpenAI-compatible server, for the faults a real one will not show on
demand: an answer that is not JSON, a completion without log-probabilities. It injects faults;
the real server tests run llama-cpp-python's own server (llama_server.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(self, mode: str):
        self.mode = mode  # "garbage" | "no-logprobs" | "echo-auth"
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._answer()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer()

            def _answer(self):
                if server.mode == "garbage":
                    return self._send(200, b"<html>definitely not json")
                if server.mode == "echo-auth":  # a server that repeats the request's key
                    return self._send(401, json.dumps({"error": {"message": f"bad key {self.headers.get('Authorization')}"}}).encode())
                if self.path == "/v1/models":
                    return self._send(200, json.dumps({"data": [{"id": "m", "meta": {"n_vocab": 384}}]}).encode())
                if self.path == "/tokenize":
                    return self._send(200, json.dumps({"tokens": [1, 2]}).encode())
                return self._send(200, json.dumps({"choices": [{"text": "x", "logprobs": None}]}).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
