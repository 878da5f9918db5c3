"""HTTP to an OpenAI-compatible server: JSON in, JSON out, one line per failure.

The standard library's http.client, one keep-alive connection per thread (the prefetch pool
sends requests in parallel). The API key goes only into the Authorization header: it is
never logged, stored, or put into an error message (`_scrub` removes it even from a server's
own words).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from urllib.parse import urlsplit

from tokentree.errors import ModelLoadError


class ServerError(ModelLoadError):
    """A server problem, as one line. `transient`: worth retrying (down, timeout, 5xx)."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


class Client:
    def __init__(self, url: str, *, timeout: float, api_key: str | None = None):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"--server {url!r} is not an http(s) URL, e.g. http://127.0.0.1:8000")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.netloc = parts.netloc.rsplit("@", 1)[-1]  # user:password@ never shown
        self.base = parts.path.rstrip("/")
        if self.base.endswith("/v1"):  # people paste the OpenAI base URL
            self.base = self.base[: -len("/v1")]
        self.timeout = timeout
        self._key = api_key or None
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self.host, self.port, timeout=self.timeout)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def get(self, path: str) -> object:
        return self._request("GET", path, None)

    def post(self, path: str, body: dict) -> object:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict | None) -> object:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        where = f"{self.netloc}{path}"
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            try:
                conn = self._connection()
                conn.request(method, self.base + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if attempt:
                    raise ServerError(f"server {self.netloc} closed the connection ({_why(exc)})",
                                      transient=True) from None
            except (TimeoutError, socket.timeout):
                self._drop()
                raise ServerError(f"server {self.netloc} did not answer within {self.timeout:g} s",
                                  transient=True) from None
            except OSError as exc:  # refused, unreachable, DNS
                self._drop()
                raise ServerError(f"cannot reach server {self.netloc} ({_why(exc)})", transient=True) from None
            except http.client.HTTPException as exc:
                self._drop()
                raise ServerError(f"server {self.netloc} sent a broken HTTP answer ({_why(exc)})",
                                  transient=True) from None
        if response.status >= 400:
            message = self._scrub(_error_text(raw))
            raise ServerError(f"server said {response.status} to {method} {where}: {message}",
                              transient=response.status >= 500 or response.status == 429, status=response.status)
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"server {where} answered with something that is not JSON: "
                              f"{self._scrub(_short(raw))}", transient=True) from None

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def close(self) -> None:
        self._drop()


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _short(raw: bytes, limit: int = 120) -> str:
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    return text[:limit] + ("..." if len(text) > limit else "") or "(empty)"


def _error_text(raw: bytes) -> str:
    """The server's own message: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or text."""
    try:
        data = json.loads(raw)
    except ValueError:
        return _short(raw)
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return _short(str(err).encode())
    return _short(raw)
