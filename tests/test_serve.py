"""``lfmvl-site serve``: headers, MIME types, Range, path confinement, port errors (checked with http.client)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from lfmvl_site.errors import InputError
from lfmvl_site.serve import make_server

BLOB = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "ort").mkdir(parents=True)
    (root / "model" / "onnx").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>t</title>")
    (root / "app.mjs").write_text("export const x = 1;")
    (root / "worker.js").write_text("self.onmessage = () => {};")
    (root / "ort" / "x.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "model" / "onnx" / "decoder.onnx").write_bytes(b"onnx")
    (root / "model" / "onnx" / "decoder.onnx_data").write_bytes(BLOB)
    (root / "model" / "onnx" / "decoder.onnx_data_1").write_bytes(BLOB)
    (root / "py.whl").write_bytes(b"PK")
    (root / "manifest.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    return root


@pytest.fixture()
def port(site: Path) -> Iterator[int]:
    server = make_server(site, "127.0.0.1", 0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def raw_get(port: int, target: str) -> int:
    """Send a request line exactly as written (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(200)
    return int(data.split()[1])


@pytest.mark.parametrize("path", ["/", "/index.html", "/app.mjs", "/nope.txt", "/../secret.txt"])
def test_isolation_headers_on_every_response(port: int, path: str) -> None:
    _, headers, _ = get(port, path)
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-embedder-policy"] == "require-corp"
    assert headers["cross-origin-resource-policy"] == "same-origin"


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("/index.html", "text/html"),
        ("/app.mjs", "text/javascript"),
        ("/worker.js", "text/javascript"),
        ("/ort/x.wasm", "application/wasm"),
        ("/model/onnx/decoder.onnx", "application/octet-stream"),
        ("/model/onnx/decoder.onnx_data", "application/octet-stream"),
        ("/model/onnx/decoder.onnx_data_1", "application/octet-stream"),
        ("/py.whl", "application/zip"),
        ("/manifest.json", "application/json"),
    ],
)
def test_mime_types(port: int, path: str, ctype: str) -> None:
    status, headers, _ = get(port, path)
    assert status == 200
    assert headers["content-type"].split(";")[0] == ctype


def test_directory_serves_index(port: int) -> None:
    status, _, body = get(port, "/")
    assert status == 200 and body.startswith(b"<!doctype html>")
    status, _, _ = get(port, "/model/")  # no index.html there, and no listing
    assert status == 404


def test_range_requests(port: int) -> None:
    status, headers, body = get(port, "/model/onnx/decoder.onnx_data", headers={"Range": "bytes=100-199"})
    assert status == 206
    assert body == BLOB[100:200]
    assert headers["content-range"] == f"bytes 100-199/{len(BLOB)}"
    assert headers["content-length"] == "100"
    status, _, body = get(port, "/model/onnx/decoder.onnx_data", headers={"Range": "bytes=10000-"})
    assert status == 206 and body == BLOB[10000:]
    status, _, body = get(port, "/model/onnx/decoder.onnx_data", headers={"Range": "bytes=-16"})
    assert status == 206 and body == BLOB[-16:]
    status, headers, _ = get(port, "/model/onnx/decoder.onnx_data", headers={"Range": f"bytes={len(BLOB)}-"})
    assert status == 416
    assert headers["content-range"] == f"bytes */{len(BLOB)}"


def test_head_has_length_but_no_body(port: int) -> None:
    status, headers, body = get(port, "/model/onnx/decoder.onnx_data", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(BLOB))


@pytest.mark.parametrize(
    "target",
    ["/../secret.txt", "/%2e%2e/secret.txt", "/ort/%2E%2E/%2e%2e/secret.txt", "/..%2fsecret.txt", "/link.txt",
     "/ort/..%5c..%5csecret.txt"],
)
def test_refuses_paths_outside_dir(port: int, target: str) -> None:
    assert raw_get(port, target) in (403, 404)
    status, _, body = get(port, target)
    assert b"outside" not in body and status in (403, 404)


def test_symlink_out_is_forbidden(port: int) -> None:
    status, _, body = get(port, "/link.txt")
    assert status == 403 and b"outside" not in body


def test_port_in_use_is_a_clear_error(site: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(InputError, match="already in use"):
            make_server(site, "127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()


def test_binds_localhost_by_default_and_cli_serves(site: Path) -> None:
    """The real command: `lfmvl-site serve DIR --port N` answers on 127.0.0.1 with the headers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lfmvl_site.cli", "serve", str(site), "--port", str(free)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, headers, _ = get(free, "/index.html")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert status == 200 and headers["cross-origin-embedder-policy"] == "require-corp"
    finally:
        proc.terminate()
        proc.wait(10)
    assert f"http://localhost:{free}/" in (proc.stderr.read() if proc.stderr else "")


def test_default_bind_is_loopback(site: Path) -> None:
    import inspect

    from lfmvl_site.serve import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    server = make_server(site, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="lfmvl-site build"):
        make_server(tmp_path / "nope")


def test_etag_gives_304_and_changes_with_the_file(port: int, site: Path) -> None:
    status, headers, _ = get(port, "/worker.js")
    assert status == 200 and headers["etag"] and headers["last-modified"]
    status, again, body = get(port, "/worker.js", headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and again["cross-origin-embedder-policy"] == "require-corp"
    (site / "worker.js").write_text("self.onmessage = () => { /* rebuilt */ };")
    status, changed, _ = get(port, "/worker.js", headers={"If-None-Match": headers["etag"]})
    assert status == 200 and changed["etag"] != headers["etag"]


def test_gzip_for_text_only_when_asked_and_never_for_binaries_or_ranges(port: int, site: Path) -> None:
    import gzip

    (site / "big.js").write_text("const filler = 1;\n" * 400)
    status, headers, body = get(port, "/big.js", headers={"Accept-Encoding": "gzip, br"})
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == (site / "big.js").read_bytes() and int(headers["content-length"]) == len(body)
    status, headers, body = get(port, "/big.js")  # the client did not ask
    assert "content-encoding" not in headers and body == (site / "big.js").read_bytes()
    _, headers, body = get(port, "/model/onnx/decoder.onnx_data", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in headers and body == BLOB
    status, headers, body = get(port, "/big.js", headers={"Accept-Encoding": "gzip", "Range": "bytes=0-9"})
    assert status == 206 and "content-encoding" not in headers and body == (site / "big.js").read_bytes()[:10]


def test_preview_never_caches_immutably(port: int) -> None:
    for path in ("/index.html", "/ort/x.wasm", "/model/onnx/decoder.onnx_data_1"):
        assert get(port, path)[1]["cache-control"] == "no-cache", path


# ---- RFC 9110 section 13 conditional requests, representations, and a crowd (the Space's server)

def test_if_none_match_uses_weak_comparison_lists_and_star(port: int) -> None:
    _, headers, _ = get(port, "/worker.js")
    etag = headers["etag"]
    assert etag.startswith('"')  # strong
    for value in (f"W/{etag}", f'"nope", {etag}', f'"a", W/{etag} , "b"', "*"):
        status, h, body = get(port, "/worker.js", headers={"If-None-Match": value})
        assert status == 304 and body == b"" and h["etag"] == etag, value
        assert "content-length" not in h  # a 304 must not claim the 200's body length differently
    assert get(port, "/worker.js", headers={"If-None-Match": '"nope", W/"other"'})[0] == 200
    # If-None-Match decides over If-Modified-Since (RFC 9110 13.1.3).
    future = "Sun, 01 Jan 2040 00:00:00 GMT"
    assert get(port, "/worker.js", headers={"If-None-Match": '"nope"', "If-Modified-Since": future})[0] == 200
    assert get(port, "/worker.js", headers={"If-Modified-Since": future})[0] == 304
    assert get(port, "/worker.js", headers={"If-Modified-Since": "not a date"})[0] == 200


def test_if_match_uses_strong_comparison_and_fails_with_412(port: int) -> None:
    _, headers, _ = get(port, "/worker.js")
    etag = headers["etag"]
    assert get(port, "/worker.js", headers={"If-Match": etag})[0] == 200
    assert get(port, "/worker.js", headers={"If-Match": "*"})[0] == 200
    assert get(port, "/worker.js", headers={"If-Match": f"W/{etag}"})[0] == 412  # weak never matches strongly
    assert get(port, "/worker.js", headers={"If-Match": '"other"'})[0] == 412
    assert get(port, "/worker.js", headers={"If-Unmodified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"})[0] == 412


def test_gzip_and_identity_bodies_have_different_etags(port: int, site: Path) -> None:
    (site / "big.js").write_text("const filler = 1;\n" * 400)
    _, plain, _ = get(port, "/big.js")
    _, packed, _ = get(port, "/big.js", headers={"Accept-Encoding": "gzip"})
    assert packed["content-encoding"] == "gzip" and plain["etag"] != packed["etag"]
    assert plain["vary"] == packed["vary"] == "Accept-Encoding"
    # A cache holding the identity body must not revalidate the gzip one with it, and the other way round.
    assert get(port, "/big.js", headers={"Accept-Encoding": "gzip", "If-None-Match": plain["etag"]})[0] == 200
    assert get(port, "/big.js", headers={"If-None-Match": packed["etag"]})[0] == 200
    assert get(port, "/big.js", headers={"Accept-Encoding": "gzip", "If-None-Match": packed["etag"]})[0] == 304
    assert get(port, "/big.js", headers={"Accept-Encoding": "gzip;q=0"})[1].get("content-encoding") is None


def test_if_range_serves_the_range_only_for_the_current_file(port: int) -> None:
    path = "/model/onnx/decoder.onnx_data"
    _, headers, _ = get(port, path)
    status, _, body = get(port, path, headers={"Range": "bytes=0-9", "If-Range": headers["etag"]})
    assert status == 206 and body == BLOB[:10]
    status, _, body = get(port, path, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert status == 200 and body == BLOB
    status, _, body = get(port, path, headers={"Range": "bytes=0-9", "If-Range": headers["last-modified"]})
    assert status == 206 and body == BLOB[:10]


def test_two_hundred_concurrent_connections_are_all_served(port: int) -> None:
    """socketserver's default backlog (5) refused a crowd; every one of 200 simultaneous clients is answered."""
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(200)

    def client() -> None:
        start.wait()
        try:
            status = get(port, "/model/onnx/decoder.onnx_data")[0]
        except OSError:
            status = -1
        with lock:
            results.append(status)

    threads = [threading.Thread(target=client) for _ in range(200)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(200) == 200, sorted(set(results))
    assert time.monotonic() - t0 < 20


def test_idle_keep_alive_connections_are_closed(site: Path) -> None:
    from lfmvl_site import static_server

    server = make_server(site, "127.0.0.1", 0)
    server.RequestHandlerClass.idle_timeout = 0.5  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
            s.sendall(b"GET /worker.js HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            while len(body) < length:
                body += s.recv(65536)
            t0 = time.monotonic()
            assert s.recv(1) == b""  # the server hung up on the idle connection
            assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()
        server.server_close()
    assert static_server.IDLE_TIMEOUT > 0.5  # (the default, for real clients, is longer)


def test_unresolvable_host_is_one_clear_line(site: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lfmvl_site.cli", "serve", str(site), "--host", "no.such.host.invalid",
                          "--port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
    assert len(lines) == 1 and "--host 'no.such.host.invalid'" in lines[0], lines


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's memory from /proc")
def test_soak_twenty_thousand_requests_with_flat_memory(site: Path) -> None:
    """A bounded soak of the real CLI server: 20,000 requests over keep-alive connections (full bodies, Range,
    conditional 304s, HEAD, gzip), every answer as expected, and its resident memory flat after warm-up."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "lfmvl_site.cli", "serve", str(site), "--port", str(free), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                etag = get(free, "/model/onnx/decoder.onnx_data")[1]["etag"]
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
                time.sleep(0.2)
        cases = [  # (method, path, headers, expected status, expected body length or None)
            ("GET", "/model/onnx/decoder.onnx_data", {}, 200, len(BLOB)),
            ("GET", "/model/onnx/decoder.onnx_data", {"Range": "bytes=100-1123"}, 206, 1024),
            ("GET", "/model/onnx/decoder.onnx_data", {"If-None-Match": etag}, 304, 0),
            ("HEAD", "/model/onnx/decoder.onnx_data_1", {}, 200, 0),
            ("GET", "/worker.js", {"Accept-Encoding": "gzip"}, 200, None),
            ("GET", "/missing.js", {}, 404, None),
        ]
        bad: list[tuple[str, int]] = []

        def client(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", free, timeout=30)
            for i in range(n):
                method, path, headers, status, length = cases[i % len(cases)]
                conn.request(method, path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != status or (length is not None and len(body) != length):
                    bad.append((path, resp.status))
                if resp.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", free, timeout=30)
            conn.close()

        def wave(total: int) -> None:
            threads = [threading.Thread(target=client, args=(total // 4,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)

        wave(2_000)  # warm-up: caches, thread pool, allocator arenas
        warm = _rss_kb(proc.pid)
        wave(18_000)
        end = _rss_kb(proc.pid)
        assert proc.poll() is None, "the server died"
    finally:
        proc.terminate()
        proc.wait(10)
    assert not bad, bad[:10]
    print(f"serve soak: 20,000 requests, RSS {warm} kB after warm-up -> {end} kB")
    assert end - warm < 8_000, (warm, end)
