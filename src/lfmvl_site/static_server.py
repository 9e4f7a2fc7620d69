"""The one HTTP handler for a built site: standard library only, so it also ships as a script.

``lfmvl-site serve`` uses it for previews, and the build copies this file into
``dist/deploy/hf-space/server.py``, which the Hugging Face Space's Dockerfile runs:

    python deploy/hf-space/server.py --host 0.0.0.0 --port 7860 --dir .

Every response carries COOP/COEP/CORP (the page needs ``crossOriginIsolated``), the MIME types browsers
insist on (``.mjs`` as JavaScript, ``.wasm`` for streaming compilation), Cache-Control (immutable for
model files, ``.wasm`` and versioned folders when ``immutable`` is on; no-cache otherwise), HEAD,
single byte ranges (206, 416, If-Range) and gzip for text assets. Conditional requests follow RFC 9110
section 13: If-Match / If-Unmodified-Since (412), then If-None-Match (weak comparison, lists, ``*``),
which overrides If-Modified-Since (304). The gzip and identity bodies have distinct ETags.

Built for a crowd (it is the Space's server): one thread per connection, a listen backlog of
:data:`LISTEN_BACKLOG`, keep-alive connections closed after :data:`IDLE_TIMEOUT` s without a request,
and compressed bodies kept in a small bounded cache rather than recompressed per request. Paths resolving outside the directory
(``..``, encoded traversal, symlinks out) get 403; directories are never listed. Keep the caching rules
in step with ``lfmvl_site/site/deploy.py`` (its tests run this file).
"""

from __future__ import annotations

import argparse
import calendar
import email.utils
import gzip
import os
import posixpath
import re
import socket
import sys
import threading
import urllib.parse
from collections import OrderedDict
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
_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')
LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
IDLE_TIMEOUT = 15.0  # seconds a keep-alive connection may wait for its next request
SEND_TIMEOUT = 60.0  # seconds one block (WRITE_BLOCK bytes) may take to reach a slow client
WRITE_BLOCK = 256 << 10
GZIP_CACHE_BYTES = 64 << 20


def etag_for(st: os.stat_result, gzipped: bool = False) -> str:
    """The strong ETag of a file's identity body, or of its gzip body (a different representation)."""
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}{"-gz" if gzipped else ""}"'


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Whether an If-Match / If-None-Match value matches ``etag`` (RFC 9110 8.8.3.2).

    ``*`` matches any current representation; a list matches when one member does. Weak comparison
    ignores ``W/``; strong comparison needs both tags strong.
    """
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    for w, tag in _ENTITY_TAG.findall(header):
        if tag == opaque and (weak or (not w and not etag.startswith("W/"))):
            return True
    return False


def http_date(value: str | None) -> int | None:
    """Seconds since the epoch for an HTTP-date, or None when absent or invalid (then ignored)."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
    except (TypeError, ValueError):
        return None
    if parsed is None:
        return None
    try:
        return calendar.timegm(parsed[:9]) - (parsed[9] or 0)
    except (OverflowError, ValueError):
        return None


def accepts_gzip(value: str) -> bool:
    """Accept-Encoding allows gzip (``gzip``, ``x-gzip`` or ``*`` with q > 0, gzip not refused)."""
    allowed: dict[str, float] = {}
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if name.strip():
            allowed[name.strip().lower()] = q
    for name in ("gzip", "x-gzip"):
        if name in allowed:
            return allowed[name] > 0
    return allowed.get("*", 0.0) > 0


class _GzipCache:
    """Compressed bodies by (path, mtime, size), least recently used dropped beyond ``limit`` bytes."""

    def __init__(self, limit: int = GZIP_CACHE_BYTES) -> None:
        self.limit, self.size = limit, 0
        self.items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str, st: os.stat_result) -> bytes:
        key = (path, st.st_mtime_ns, st.st_size)
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        with open(path, "rb") as f:
            body = gzip.compress(f.read(), compresslevel=6, mtime=0)
        with self.lock:
            if key not in self.items and len(body) <= self.limit:
                self.items[key] = body
                self.size += len(body)
                while self.size > self.limit:
                    _, dropped = self.items.popitem(last=False)
                    self.size -= len(dropped)
        return body


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
    # Headers and body go out in separate writes: with Nagle on, a keep-alive client's delayed ACK held each
    # response ~40 ms (the soak test ran at 134 requests/s). TCP_NODELAY on every connection.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT  # applied to the socket by setup(); reset before each request below
    idle_timeout = IDLE_TIMEOUT
    gzip_cache = _GzipCache()

    def handle_one_request(self) -> None:
        # Waiting for a request line: the idle limit. http.server closes the connection on timeout.
        self.connection.settimeout(self.idle_timeout)
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def log_error(self, fmt: str, *args: object) -> None:
        if fmt.startswith("Request timed out"):
            return  # an idle keep-alive connection closed: routine, not an error
        super().log_error(fmt, *args)

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

    def _headers(self, url_path: str, ctype: str, length: int | None,
                 extra: dict[str, str] | None = None) -> None:
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Cache-Control", cache_control(url_path, self.immutable))
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        if length is not None:  # none on 304: a Content-Length there must be the 200's (RFC 9110 8.6)
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

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url_path = urllib.parse.urlsplit(self.path).path or "/"
        real, status = self._resolve(url_path)
        if real is None:
            return self._error(status, url_path)
        ctype = content_type(os.path.basename(real))
        st = os.stat(real)
        size = st.st_size
        compressible = ctype.startswith(COMPRESSIBLE) and 256 <= size <= GZIP_MAX_BYTES
        gzipped = compressible and "Range" not in self.headers and accepts_gzip(self.headers.get("Accept-Encoding", ""))
        etag = etag_for(st, gzipped)
        mtime = int(st.st_mtime)
        validators = {"ETag": etag, "Last-Modified": email.utils.formatdate(mtime, usegmt=True)}
        if compressible:
            validators["Vary"] = "Accept-Encoding"
        if not self._preconditions_hold(etag, mtime):
            return self._error(HTTPStatus.PRECONDITION_FAILED, url_path, validators)
        if self._not_modified(etag, mtime):
            self.send_response(HTTPStatus.NOT_MODIFIED)
            return self._headers(url_path, ctype, None, validators)
        start, end, status = 0, size - 1, HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng and not gzipped and self._if_range_holds(etag, mtime):
            span: tuple[int, int] | tuple[()] | None
            try:
                span = parse_range(rng, size)
            except ValueError:
                span = ()  # not a range we serve partially: the whole file
            if span is None:
                return self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, url_path,
                                   {**validators, "Content-Range": f"bytes */{size}"})
            if span:
                (start, end), status = span, HTTPStatus.PARTIAL_CONTENT
        if gzipped:
            body = self.gzip_cache.get(real, st)
            self.send_response(status)
            self._headers(url_path, ctype, len(body), {**validators, "Content-Encoding": "gzip"})
            if self.command != "HEAD":
                self._send(body)
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
                block = f.read(min(left, WRITE_BLOCK))
                if not block or not self._send(block):
                    break
                left -= len(block)
        return None

    def _send(self, data: bytes) -> bool:
        """Write ``data`` with the per-block send limit; False (connection closed) when the client is gone."""
        self.connection.settimeout(SEND_TIMEOUT)
        try:
            for i in range(0, len(data), WRITE_BLOCK):
                self.wfile.write(data[i:i + WRITE_BLOCK])
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return False
        return True

    def _preconditions_hold(self, etag: str, mtime: int) -> bool:
        """If-Match (strong comparison), else If-Unmodified-Since; False means 412."""
        if_match = self.headers.get("If-Match")
        if if_match is not None:
            return etag_matches(if_match, etag, weak=False)
        since = http_date(self.headers.get("If-Unmodified-Since"))
        return since is None or mtime <= since

    def _not_modified(self, etag: str, mtime: int) -> bool:
        """If-None-Match (weak comparison) decides when present; else If-Modified-Since."""
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            return etag_matches(if_none_match, etag, weak=True)
        since = http_date(self.headers.get("If-Modified-Since"))
        return since is not None and mtime <= since

    def _if_range_holds(self, etag: str, mtime: int) -> bool:
        """No If-Range, or one naming this identity body: a strong ETag, or exactly its Last-Modified date."""
        value = self.headers.get("If-Range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith(("\"", "W/")):
            return not value.startswith("W/") and value == etag
        return http_date(value) == mtime


class Server(ThreadingHTTPServer):
    """Thread per connection, a deep listen queue, quiet about clients that hang up."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def bind(root: str, host: str, port: int, *, immutable: bool = True) -> Server:
    """A server for ``root`` (port 0 picks a free one); OSError when the address cannot be bound."""
    handler = type("BoundHandler", (Handler,), {"root": os.path.realpath(root), "immutable": immutable})
    return Server((host, port), handler)


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
