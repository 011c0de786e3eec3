"""Shared fixtures."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The shared folder beside the repository (real ISBI 2012 data); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent")
    return SHARED.resolve()


@pytest.fixture
def isbi_dir(shared_dir: Path) -> Path:
    """The real ISBI 2012 data (``shared/data/isbi2012``); skips when absent."""
    folder = shared_dir / "data" / "isbi2012"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; ``server.cut[path] = n`` sends only
    n bytes of the next response and closes; ``server.fail[path] = k`` answers 503 k times."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        if server.fail.get(self.path, 0) > 0:
            server.fail[self.path] -= 1
            self.send_error(503)
            return
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(match[1]) if match else 0
        if start >= len(data) > 0 and match:
            self.send_error(416)
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start : start + server.cut.pop(self.path, len(data))])

    def log_message(self, *args):
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    """A local HTTP server on 127.0.0.1 serving ``server.files`` (path -> bytes) at ``server.url``;
    ``server.requests`` lists the (path, Range header) of every request."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.cut, httpd.fail, httpd.requests = {}, {}, {}, []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
