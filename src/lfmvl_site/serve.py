"""``lfmvl-site serve``: a preview server with the headers the page needs.

* COOP ``same-origin`` + COEP ``require-corp`` (+ CORP ``same-origin``) on every
  response make the page cross-origin isolated: SharedArrayBuffer, hence
  multi-threaded wasm.
* MIME types browsers insist on (``.mjs`` as JavaScript, ``.wasm`` for streaming
  compilation) and binary ones for model files and wheels.
* Range requests (206 / 416), so large files can be fetched in parts.
* Only files under DIR: ``..``, encoded traversal and symlinks that leave DIR are refused.
"""

from __future__ import annotations

import errno
import http.server
import posixpath
import re
import sys
import threading
import urllib.parse
import webbrowser
from pathlib import Path
from typing import Any

from .errors import InputError

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".onnx_data": "application/octet-stream",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".txt": "text/plain; charset=utf-8",
    ".jinja": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
_SHARD = re.compile(r"\.onnx_data(_\d+)?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_type(path: str) -> str:
    """The Content-Type served for ``path`` (shards ``x.onnx_data_1`` included)."""
    if _SHARD.search(path):
        return MIME_TYPES[".onnx_data"]
    return MIME_TYPES.get(posixpath.splitext(path)[1].lower(), "application/octet-stream")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for one ``bytes=`` range, or None when it cannot be satisfied.

    Raises ValueError for a malformed header (served as the whole file, as RFC 9110 allows).
    """
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise ValueError(header)
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return None
    return start, end


class Handler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD of files under ``root``; nothing else."""

    root: Path
    server_version = "lfmvl-site"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from the base class
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _resolve(self) -> tuple[Path | None, int]:
        """The file a request names, or None with 403 (outside DIR) / 404 (missing, or a directory)."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if "\x00" in path or "\\" in path:
            return None, 403
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            return None, 403
        target = self.root.joinpath(*parts)
        try:
            real = target.resolve(strict=True)
        except (OSError, RuntimeError):
            return None, 404
        if real != self.root and self.root not in real.parents:
            return None, 403  # a symlink out of DIR
        if real.is_dir():
            real = real / "index.html"  # no directory listings
        return (real, 200) if real.is_file() else (None, 404)

    def _headers(self, code: int, length: int, ctype: str | None = None, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-cache")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _error(self, code: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = f"{code} {text}\n".encode()
        self._headers(code, len(body), "text/plain; charset=utf-8", extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path, status = self._resolve()
        if path is None:
            self._error(status, "Forbidden" if status == 403 else "Not Found")
            return
        size = path.stat().st_size
        ctype = content_type(path.name)
        rng = self.headers.get("Range")
        start, end, code = 0, size - 1, 200
        if rng:
            try:
                span = parse_range(rng, size)
            except ValueError:
                span = (0, size - 1)
            if span is None:
                self._error(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
                return
            start, end = span
            code = 206
        length = max(0, end - start + 1)
        extra = {"Content-Range": f"bytes {start}-{end}/{size}"} if code == 206 else None
        self._headers(code, length, ctype, extra)
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    return
                left -= len(block)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def make_server(directory: Path, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A ready-to-run server for ``directory`` (port 0 picks a free one)."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise InputError(f"{directory} is not a directory; build the site first with `lfmvl-site build --out {directory}`.")
    handler = type("BoundHandler", (Handler,), {"root": root})
    try:
        return Server((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"Port {port} on {host} is already in use; pick another with --port N "
                             "(or stop the other server).") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
            raise InputError(f"Cannot listen on {host}:{port} ({exc.strerror}); check --host/--port.") from None
        raise


def serve(directory: Path, *, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False) -> None:
    """Serve ``directory`` until interrupted."""
    server = make_server(directory, host, port)
    shown = "localhost" if host in ("127.0.0.1", "::1", "localhost") else host
    url = f"http://{shown}:{server.server_address[1]}/"
    if not (Path(directory) / "index.html").is_file():
        print(f"Note: {directory} has no index.html; is it a built site?", file=sys.stderr)
    print(f"Serving {Path(directory).resolve()} at {url} (Ctrl+C to stop)", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        print("Note: browsers allow the camera only on https or localhost.", file=sys.stderr)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


__all__ = ["serve", "make_server", "content_type", "parse_range", "ISOLATION_HEADERS"]
