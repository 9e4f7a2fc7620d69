"""The one HTTP handler for a built site: standard library only, so it also ships as a script.

``lfmvl-site serve`` uses it for previews, and the build copies this file into
``dist/deploy/hf-space/server.py``, which the Hugging Face Space's Dockerfile runs:

    python deploy/hf-space/server.py --host 0.0.0.0 --port 7860 --dir .

Every response carries COOP/COEP/CORP (the page needs ``crossOriginIsolated``), the MIME types browsers
insist on (``.mjs`` as JavaScript, ``.wasm`` for streaming compilation), Cache-Control (immutable for
model files, ``.wasm`` and versioned folders when ``immutable`` is on; no-cache otherwise), ETag/304,
HEAD, single byte ranges (206, 416) and gzip for text assets. Paths resolving outside the directory
(``..``, encoded traversal, symlinks out) get 403; directories are never listed. Keep the caching rules
in step with ``lfmvl_site/site/deploy.py`` (its tests run this file).
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import os
import posixpath
import re
import sys
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".onnx_data": "application/octet-stream",
    ".whl": "application/zip",
    ".zip": "application/zip",
    ".tar": "application/x-tar",
    ".jinja": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}
# Types worth compressing on the fly; wasm and model weights are left alone (Range + already dense).
COMPRESSIBLE = ("text/", "application/json", "image/svg+xml", "application/manifest+json")
GZIP_MAX_BYTES = 32 << 20
# The caching and shard patterns, as strings: deploy.py writes the same ones into nginx/Apache/Caddy
# configs (written so PCRE, RE2 and Python agree), applied to the URL path (leading "/").
IMMUTABLE_PATTERN = r"(\.onnx|\.wasm|\.onnx_data(_[0-9]+)?)$|/v?[0-9]+\.[0-9]+\.[0-9]+/"
SHARD_PATTERN = r"\.onnx_data(_[0-9]+)?$"
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = ("/", "/index.html", "/sw.js", "/manifest.json")
_IMMUTABLE = re.compile(IMMUTABLE_PATTERN)
_SHARD = re.compile(SHARD_PATTERN)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_type(path: str) -> str:
    """The Content-Type served for ``path`` (shards ``x.onnx_data_1`` included)."""
    if _SHARD.search(path):
        return MIME_TYPES[".onnx_data"]
    return MIME_TYPES.get(posixpath.splitext(path)[1].lower(), "application/octet-stream")


def cache_control(url_path: str, immutable: bool = True) -> str:
    """Cache-Control for a URL path: long and immutable for model files and versioned assets."""
    if immutable and url_path not in NO_CACHE and _IMMUTABLE.search(url_path):
        return IMMUTABLE
    return "no-cache"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(start, end_inclusive)`` for one ``bytes=`` range, or None when it cannot be satisfied.

    Raises ValueError for a header we do not serve partially (several ranges, other units): a full
    200 is then a valid answer (RFC 9110).
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


class Handler(BaseHTTPRequestHandler):
    """GET/HEAD of files under ``root``; nothing else."""

    root = "."  # a real (symlink-free) absolute path, set by the server's owner
    immutable = True  # long caching for model files and versioned assets (off for previews)
    server_version = "lfmvl-site"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def _resolve(self, url_path: str) -> tuple[str | None, HTTPStatus]:
        """A regular file under root, or None with 403 (leaves root) / 404 (missing)."""
        path = urllib.parse.unquote(url_path)
        if "\x00" in path or "\\" in path:
            return None, HTTPStatus.FORBIDDEN
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            return None, HTTPStatus.FORBIDDEN
        full = os.path.join(self.root, *parts)
        if os.path.isdir(full):
            full = os.path.join(full, "index.html")  # no directory listings
        if not os.path.exists(full):
            return None, HTTPStatus.NOT_FOUND
        real = os.path.realpath(full)
        if not real.startswith(self.root + os.sep):
            return None, HTTPStatus.FORBIDDEN  # a symlink out of root
        return (real, HTTPStatus.OK) if os.path.isfile(real) else (None, HTTPStatus.NOT_FOUND)

    def _headers(self, url_path: str, ctype: str, length: int, extra: dict[str, str] | None = None) -> None:
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Cache-Control", cache_control(url_path, self.immutable))
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def _error(self, status: HTTPStatus, url_path: str, extra: dict[str, str] | None = None) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self._headers(url_path, "text/plain; charset=utf-8", len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url_path = urllib.parse.urlsplit(self.path).path or "/"
        real, status = self._resolve(url_path)
        if real is None:
            return self._error(status, url_path)
        ctype = content_type(os.path.basename(real))
        st = os.stat(real)
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        validators = {"ETag": etag, "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True)}
        if self.headers.get("If-None-Match") == etag:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            return self._headers(url_path, ctype, 0, validators)
        start, end, status = 0, size - 1, HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng and self.headers.get("If-Range", etag) == etag:
            try:
                span = parse_range(rng, size)
            except ValueError:
                span = ()  # not a range we serve partially: the whole file
            if span is None:
                return self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, url_path,
                                   {"Content-Range": f"bytes */{size}"})
            if span:
                (start, end), status = span, HTTPStatus.PARTIAL_CONTENT
        if status == HTTPStatus.OK and self._wants_gzip(ctype, size):
            with open(real, "rb") as f:
                body = gzip.compress(f.read(), compresslevel=6, mtime=0)
            self.send_response(status)
            self._headers(url_path, ctype, len(body), {**validators, "Content-Encoding": "gzip",
                                                       "Vary": "Accept-Encoding"})
            if self.command != "HEAD":
                self.wfile.write(body)
            return None
        length = end - start + 1 if size else 0
        extra = dict(validators)
        if status == HTTPStatus.PARTIAL_CONTENT:
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        self._headers(url_path, ctype, length, extra)
        if self.command == "HEAD":
            return None
        with open(real, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    return None
                left -= len(block)
        return None

    def _wants_gzip(self, ctype: str, size: int) -> bool:
        accepted = self.headers.get("Accept-Encoding", "")
        return (
            "gzip" in accepted
            and ctype.startswith(COMPRESSIBLE)
            and 256 <= size <= GZIP_MAX_BYTES
            and "Range" not in self.headers
        )


def bind(root: str, host: str, port: int, *, immutable: bool = True) -> ThreadingHTTPServer:
    """A server for ``root`` (port 0 picks a free one); OSError when the address cannot be bound."""
    handler = type("BoundHandler", (Handler,), {"root": os.path.realpath(root), "immutable": immutable})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a built lfmvl-site with COOP/COEP/CORP headers.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args(argv)
    try:
        httpd = bind(args.dir, args.host, args.port)
    except OSError as exc:
        print(f"Error: cannot listen on {args.host}:{args.port} ({exc.strerror}); pick another --port.",
              file=sys.stderr)
        return 1
    print(f"Serving {os.path.realpath(args.dir)} on http://{args.host}:{httpd.server_address[1]}/", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
