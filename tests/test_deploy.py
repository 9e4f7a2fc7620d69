"""Deploy configs, proven: real nginx, Apache and Caddy (Debian packages) and the Hugging Face Space's
serving command serve a site with the emitted configs; the host files we cannot run (Netlify, Cloudflare
Pages, Vercel, S3/GCS/Azure) are parsed and evaluated with their documented matching rules.

The expected headers below are the policy restated from the issue (COOP/COEP/CORP everywhere; model files,
.wasm and versioned directories immutable; everything else no-cache; MIME types by extension), written
independently of lfmvl_site.site.deploy.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Iterator

import pytest

from support import pyodide_mirror

from lfmvl_site.site.deploy import write_deploy_configs

IMMUTABLE = "public, max-age=31536000, immutable"
COI = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-embedder-policy": "require-corp",
    "cross-origin-resource-policy": "same-origin",
}


def expected_type(path: str) -> str:
    if re.search(r"\.onnx_data(_\d+)?$", path) or path.endswith(".onnx"):
        return "application/octet-stream"
    table = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
             ".json": "application/json", ".whl": "application/zip", ".html": "text/html", ".css": "text/css",
             ".zip": "application/zip", ".jinja": "text/plain"}
    return table[os.path.splitext(path)[1]]


def expected_cache(path: str) -> str:
    p = path.lstrip("/")
    if p in ("", "index.html", "sw.js", "manifest.json"):
        return "no-cache"
    if re.search(r"\.onnx_data(_\d+)?$", p) or p.endswith((".onnx", ".wasm")) or re.search(r"(^|/)\d+\.\d+\.\d+/", p):
        return IMMUTABLE
    return "no-cache"


# ---------------------------------------------------------------- a site with every file type the build emits

FAKE_FILES = {
    "index.html": b"<!doctype html><meta charset=utf-8><title>t</title><script type=module src=app.mjs></script>",
    "sw.js": b"self.addEventListener('fetch', () => {});\n",
    "sw-register.js": b"export async function registerServiceWorker() {}\n",
    "app.mjs": b"export const x = 1;\n",
    "worker.js": b"self.onmessage = () => {};\n",
    "style.css": b"body { margin: 0 }\n",
    "lfmvl_site-0.1.0-py3-none-any.whl": b"PK\x05\x06" + bytes(18),
    "pyodide/pyodide.mjs": b"export const loadPyodide = 1;\n",
    "pyodide/pyodide.asm.js": b"var _createPyodideModule = 1;\n",
    "pyodide/pyodide.asm.wasm": b"\0asm\x01\0\0\0" + os.urandom(70_000),
    "pyodide/python_stdlib.zip": b"PK\x05\x06" + bytes(18),
    "pyodide/pyodide-lock.json": b'{"info": {"version": "0.27.7"}, "packages": {}}',
    "pyodide/numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl": b"PK\x05\x06" + bytes(18),
    "ort/ort.webgpu.min.mjs": b"export const InferenceSession = 1;\n",
    "ort/ort-wasm-simd-threaded.asyncify.wasm": b"\0asm\x01\0\0\0" + os.urandom(50_000),
    "vendor/1.2.3/lib.js": b"export default 3;\n",
    "model/manifest.json": b'{"format": 1, "graphs": {}, "files": []}',
    "model/config.json": b'{"model_type": "lfm2_vl"}',
    "model/chat_template.jinja": b"{{ messages }}",
    "model/onnx/decoder_q4.onnx": os.urandom(3_000),
    "model/onnx/decoder_q4.onnx_data": os.urandom(200_000),
    "model/onnx/decoder_q4.onnx_data_1": os.urandom(150_001),
}


def make_site(root: Path) -> dict:
    """Write the fake site and its manifest.json (same format as the build's: path, size, sha256)."""
    for rel, data in FAKE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = {"format": 1, "files": [
        {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for rel, data in FAKE_FILES.items()
    ]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def build_tiny_site(root: Path) -> dict:
    """`lfmvl-site build --synthetic` (the tiny model), with the offline Pyodide mirror when there is one."""
    from click.testing import CliRunner

    from lfmvl_site.cli import main

    args = ["build", "--synthetic", "--out", str(root)]
    mirror = pyodide_mirror()
    if mirror is not None:
        args += ["--pyodide-dir", str(mirror)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((root / "manifest.json").read_text())


@pytest.fixture(scope="module", params=["fake", "built"])
def site(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A world-readable site dir (Apache and nginx workers drop root and must read it): a small fake with
    every file type, or the real tiny-model build."""
    tmp = Path(tempfile.mkdtemp(prefix="lfmvl-deploy-"))
    try:
        root = tmp / "site"
        if request.param == "fake":
            root.mkdir()
            manifest = make_site(root)
        else:
            manifest = build_tiny_site(root)
        written = write_deploy_configs(root, manifest)
        assert all(p.is_file() for p in written)
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IROTH | stat.S_IRGRP | (stat.S_IXOTH | stat.S_IXGRP if p.is_dir() else 0))
        yield root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- running servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path, **kw) -> Iterator[None]:
    """Start a server in its own process group; wait (≤ 20 s) for the port; always stop it."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd[0]} did not listen on {port} in 20 s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def request(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def check_served(port: int, site: Path) -> None:
    """Headers, MIME, caching and body of every manifest file; Range on a model shard."""
    manifest = json.loads((site / "manifest.json").read_text())
    urls = ["/"] + ["/" + f["path"] for f in manifest["files"]] + ["/manifest.json"]
    for url in urls:
        status, h, body = request(port, url)
        rel = "index.html" if url == "/" else url[1:]
        assert status == 200, (url, status)
        assert body == (site / rel).read_bytes(), url
        for k, v in COI.items():
            assert h.get_all(k) == [v], (url, k, h.get_all(k))
        assert h.get_content_type() == expected_type(rel), (url, h.get("content-type"))
        assert h.get_all("cache-control") == [expected_cache(url)], (url, h.get_all("cache-control"))

    shards = [f for f in manifest["files"] if re.search(r"\.onnx_data(_\d+)?$", f["path"])]
    shard = max(shards, key=lambda f: f["size"])["path"]
    data = (site / shard).read_bytes()
    size = len(data)
    status, h, body = request(port, "/" + shard, headers={"Range": "bytes=100-1099"})
    assert (status, h["content-range"], body) == (206, f"bytes 100-1099/{size}", data[100:1100])
    assert h.get_all("cross-origin-embedder-policy") == ["require-corp"]
    assert h.get_all("cache-control") == [IMMUTABLE]
    status, h, body = request(port, "/" + shard, headers={"Range": "bytes=-16"})
    assert (status, h["content-range"], body) == (206, f"bytes {size - 16}-{size - 1}/{size}", data[-16:])
    status, h, _ = request(port, "/" + shard, headers={"Range": f"bytes={size + 10}-"})
    # RFC 9110 says a 416 SHOULD carry Content-Range; Apache omits it, so only its value is checked
    assert status == 416 and h.get("content-range") in (None, f"bytes */{size}")
    status, _, _ = request(port, "/model/")  # a directory without index.html: no listing
    assert status in (403, 404)


def need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.skip(f"{binary} is not installed (scripts/setup-test.sh installs it from Debian)")
    return path


def test_nginx(site: Path, tmp_path: Path) -> None:
    nginx = need("nginx")
    port = free_port()
    conf = (site / "deploy/nginx.conf").read_text()
    conf = re.sub(r"(?m)^(\s*)listen .*;$", rf"\1listen 127.0.0.1:{port};", conf, count=1)
    conf = re.sub(r"(?m)^(\s*)root .*;$", rf"\1root {site};", conf, count=1)
    (tmp_path / "server.conf").write_text(conf)
    temps = "\n".join(f"  {d}_temp_path {tmp_path}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(f"""daemon off;
{user}
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {tmp_path}/access.log;
{temps}
  include {tmp_path}/server.conf;
}}
""")
    with running([nginx, "-e", f"{tmp_path}/error.log", "-p", str(tmp_path), "-c", f"{tmp_path}/nginx.conf"],
                 port, tmp_path / "out.log"):
        check_served(port, site)


def test_apache(site: Path, tmp_path: Path) -> None:
    apache = need("apache2")
    port = free_port()
    mods = Path("/usr/lib/apache2/modules")
    load = "\n".join(f"LoadModule {m}_module {mods}/mod_{m}.so" for m in ("mpm_event", "authz_core", "mime", "headers", "dir"))
    user = "User www-data\nGroup www-data" if os.geteuid() == 0 else ""
    (tmp_path / "httpd.conf").write_text(f"""ServerRoot {tmp_path}
{load}
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
PidFile {tmp_path}/httpd.pid
DefaultRuntimeDir {tmp_path}
Mutex file:{tmp_path} default
ErrorLog {tmp_path}/error.log
{user}
TypesConfig /etc/mime.types
DocumentRoot {site}
<Directory />
  AllowOverride None
  Require all denied
</Directory>
<Directory {site}>
  AllowOverride All
  Require all granted
</Directory>
""")
    with running([apache, "-X", "-f", f"{tmp_path}/httpd.conf"], port, tmp_path / "out.log"):
        check_served(port, site)


def test_caddy(site: Path, tmp_path: Path) -> None:
    caddy = need("caddy")
    port = free_port()
    conf = (site / "deploy/Caddyfile").read_text()
    conf, n = re.subn(r"(?m)^:80 \{$", f"http://127.0.0.1:{port} {{\n\tbind 127.0.0.1", conf)
    assert n == 1
    conf = re.sub(r"(?m)^(\s*)root \* .*$", rf"\1root * {site}", conf, count=1)
    (tmp_path / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n" + conf)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    with running([caddy, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                 port, tmp_path / "out.log", env=env):
        check_served(port, site)


def test_hf_space_command(site: Path, tmp_path: Path) -> None:
    """The Dockerfile's CMD, run as written (python → this interpreter, host/port → loopback/free)."""
    dockerfile = (site / "deploy/hf-space/Dockerfile").read_text()
    assert re.search(r"(?m)^EXPOSE 7860$", dockerfile)
    workdir = re.findall(r"(?m)^WORKDIR (.+)$", dockerfile)[-1]
    assert re.search(rf"(?m)^COPY (--chown=\S+ )?\. {re.escape(workdir)}|^COPY (--chown=\S+ )?\. \.$", dockerfile)
    cmd = json.loads(re.findall(r"(?m)^CMD (\[.*\])$", dockerfile)[-1])
    assert cmd[cmd.index("--port") + 1] == "7860" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = free_port()
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    assert cmd[0] == "python"
    cmd[0] = sys.executable
    with running(cmd, port, tmp_path / "out.log", cwd=site):
        check_served(port, site)
        # refused: traversal (plain and encoded) and absolute paths; conditional GET
        for bad in ("/../site/index.html", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/model/..%2f..%2f..%2fetc/passwd"):
            assert request(port, bad)[0] in (403, 404), bad
        _, h, _ = request(port, "/index.html")
        assert request(port, "/index.html", headers={"If-None-Match": h["etag"]})[0] == 304
        status, h, body = request(port, "/index.html", method="HEAD")
        assert status == 200 and body == b"" and int(h["content-length"]) == (site / "index.html").stat().st_size


# ---------------------------------------------------------------- hosts evaluated from their config files

def _splat_re(pattern: str) -> re.Pattern[str]:
    """Netlify / Cloudflare Pages path pattern: '*' matches anything (Cloudflare allows one per rule)."""
    assert pattern.count("*") <= 1, f"Cloudflare Pages allows one splat per rule: {pattern}"
    return re.compile("^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$")


def _vercel_re(source: str) -> re.Pattern[str]:
    """The subset of path-to-regexp used by Vercel sources: (regex) groups, backslash escapes, literals."""
    out, i = "", 0
    while i < len(source):
        c = source[i]
        if c == "\\":
            out += re.escape(source[i + 1])
            i += 2
        elif c == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(source[j], 0)
                j += 1
            out += source[i:j]
            i = j
        else:
            assert c not in ":*+?{}", f"unexpected path-to-regexp syntax in {source!r}"
            out += re.escape(c)
            i += 1
    return re.compile("^" + out + "$")


def _effective(rules: list[tuple[re.Pattern[str], dict[str, str]]], url: str) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for rx, vals in rules:
        if rx.match(url):
            for k, v in vals.items():
                merged.setdefault(k.lower(), []).append(v)
    return merged


def _check_rules(rules: list[tuple[re.Pattern[str], dict[str, str]]], site: Path, host: str) -> None:
    manifest = json.loads((site / "manifest.json").read_text())
    for url in ["/", "/manifest.json"] + ["/" + f["path"] for f in manifest["files"]]:
        h = _effective(rules, url)
        for k, v in COI.items():
            assert h.get(k) == [v], (host, url, k, h.get(k))
        assert h.get("cache-control") == [expected_cache(url)], (host, url, h.get("cache-control"))
        ct = h.get("content-type")
        if url.endswith((".wasm", ".onnx", ".mjs", ".whl", ".json")) or "onnx_data" in url:
            assert ct == [expected_type(url)], (host, url, ct)
        else:
            assert ct is None or ct == [expected_type(url)], (host, url, ct)


def test_headers_file(site: Path) -> None:
    rules, current = [], None
    for line in (site / "_headers").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            current = {}
            rules.append((_splat_re(line.strip()), current))
        else:
            k, _, v = line.strip().partition(":")
            assert current is not None and k not in current
            current[k] = v.strip()
    _check_rules(rules, site, "_headers")


def test_netlify_toml(site: Path) -> None:
    cfg = tomllib.loads((site / "netlify.toml").read_text())
    assert cfg["build"]["publish"] == "."
    _check_rules([(_splat_re(r["for"]), r["values"]) for r in cfg["headers"]], site, "netlify.toml")


def test_vercel_json(site: Path) -> None:
    cfg = json.loads((site / "vercel.json").read_text())
    rules = [(_vercel_re(r["source"]), {h["key"]: h["value"] for h in r["headers"]}) for r in cfg["headers"]]
    _check_rules(rules, site, "vercel.json")


def test_cloudfront_policy(site: Path) -> None:
    policy = json.loads((site / "deploy/s3/cloudfront-response-headers-policy.json").read_text())
    items = policy["CustomHeadersConfig"]["Items"]
    assert policy["CustomHeadersConfig"]["Quantity"] == len(items)
    assert {i["Header"].lower(): i["Value"] for i in items} == COI
    assert all(i["Override"] is True for i in items)


@pytest.mark.parametrize("script,tool", [("s3/upload.sh", "aws"), ("gcs/upload.sh", "gcloud"), ("azure/upload.sh", "az")])
def test_upload_scripts(site: Path, tmp_path: Path, script: str, tool: str) -> None:
    """Run each upload script against a recording stand-in for its CLI: every file goes up once with
    its own Content-Type and Cache-Control."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.jsonl"
    (bindir / tool).write_text(f"#!{sys.executable}\nimport json, sys\n"
                               f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    (bindir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "BUCKET": "b", "ACCOUNT": "a"}
    subprocess.run(["bash", str(site / "deploy" / script)], env=env, check=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()]

    def opt(args: list[str], *names: str) -> str:
        for i, a in enumerate(args):
            for n in names:
                if a == n:
                    return args[i + 1]
                if a.startswith(n + "="):
                    return a.split("=", 1)[1]
        raise AssertionError(f"{names} missing in {args}")

    uploaded = {}
    for args in calls:
        if args[:2] in (["s3", "cp"], ["storage", "cp"]):
            src, dst = args[2], args[3]
        elif args[:3] == ["storage", "blob", "upload"]:
            src, dst = opt(args, "--file"), opt(args, "--name")
        else:
            continue
        rel = os.path.relpath(src, site)
        assert dst.endswith(rel) and rel not in uploaded, (src, dst)
        uploaded[rel] = (opt(args, "--content-type"), opt(args, "--cache-control", "--content-cache-control"))
    manifest = json.loads((site / "manifest.json").read_text())
    paths = [f["path"] for f in manifest["files"]] + ["manifest.json"]
    assert uploaded == {p: (expected_type(p), expected_cache(p)) for p in paths}
    if tool == "aws":
        assert any(a[:2] == ["s3", "sync"] and "--delete" in a for a in calls)
