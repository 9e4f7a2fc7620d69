"""Static server for a built lfmvl-site (standard library only; copied into dist/deploy/hf-space/server.py).

It is what the Hugging Face Space's Dockerfile runs on port 7860, and runs anywhere Python 3.9+ does:

    python deploy/hf-space/server.py --host 0.0.0.0 --port 7860 --dir .

Every response carries COOP/COEP/CORP (the page needs crossOriginIsolated), the MIME types the page needs,
Cache-Control (immutable for model files, .wasm and versioned directories; no-cache otherwise), ETag/304,
HEAD and single byte ranges (206, 416). Paths resolving outside the directory and directory listings are
refused. Keep the rules in step with lfmvl_site/site/deploy.py (its tests run this file).
"""

from __future__ import annotations

import argparse
import email.utils
import os
import posixpath
import re
import sys
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COI = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
MIME = {
    ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
    ".json": "application/json", ".map": "application/json", ".wasm": "application/wasm",
    ".onnx": "application/octet-stream", ".whl": "application/zip", ".zip": "application/zip",
    ".tar": "application/x-tar", ".jinja": "text/plain", ".txt": "text/plain", ".md": "text/plain",
    ".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
}
IMMUTABLE_RE = re.compile(r"(\.onnx|\.wasm|\.onnx_data(_[0-9]+)?)$|/v?[0-9]+\.[0-9]+\.[0-9]+/")
NO_CACHE = {"/", "/index.html", "/sw.js", "/manifest.json"}
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Handler(BaseHTTPRequestHandler):
    root = "."
    server_version = "lfmvl-site"
    protocol_version = "HTTP/1.1"

    def _resolve(self, url_path: str) -> str | None:
        """A regular file under root for the URL path, or None (traversal, symlink out, missing, directory)."""
        path = posixpath.normpath(urllib.parse.unquote(url_path))
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if any(p == ".." or "\\" in p or "\0" in p for p in parts):
            return None
        full = os.path.join(self.root, *parts)
        if os.path.isdir(full):
            full = os.path.join(full, "index.html")
        real = os.path.realpath(full)
        if not (real.startswith(self.root + os.sep)) or not os.path.isfile(real):
            return None
        return real

    def _headers(self, url_path: str, ctype: str) -> None:
        for k, v in COI.items():
            self.send_header(k, v)
        cache = "no-cache" if url_path in NO_CACHE or not IMMUTABLE_RE.search(url_path) else \
            "public, max-age=31536000, immutable"
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")

    def _error(self, status: HTTPStatus, url_path: str, extra: dict[str, str] | None = None) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self._headers(url_path, "text/plain")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url_path = urllib.parse.urlsplit(self.path).path or "/"
        real = self._resolve(url_path)
        if real is None:
            return self._error(HTTPStatus.NOT_FOUND, url_path)
        name = os.path.basename(real)
        ctype = "application/octet-stream" if re.search(r"\.onnx_data(_[0-9]+)?$", name) else \
            MIME.get(os.path.splitext(name)[1].lower(), "application/octet-stream")
        st = os.stat(real)
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self._headers(url_path, ctype)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, status = 0, size - 1, HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng and self.headers.get("If-Range", etag) == etag:
            m = RANGE_RE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(size - int(m.group(2)), 0)
                if start >= size or start > end or (not m.group(1) and m.group(2) == "0"):
                    return self._error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, url_path,
                                       {"Content-Range": f"bytes */{size}"})
                status = HTTPStatus.PARTIAL_CONTENT
            # anything else (multiple ranges, other units) is ignored: a full 200 is a valid answer
        length = end - start + 1 if size else 0
        self.send_response(status)
        self._headers(url_path, ctype)
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Content-Length", str(length))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(real, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {fmt % args}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Serve a built lfmvl-site with COOP/COEP/CORP headers.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args(argv)
    Handler.root = os.path.realpath(args.dir)
    try:
        httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as exc:
        print(f"Error: cannot listen on {args.host}:{args.port} ({exc.strerror}); pick another --port.",
              file=sys.stderr)
        return 1
    print(f"Serving {Handler.root} on http://{args.host}:{httpd.server_address[1]}/", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
