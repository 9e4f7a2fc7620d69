"""Deploy configurations for a built site: one header/MIME/caching policy, written for every host.

Policy (the same on every target):

* every response: ``Cross-Origin-Opener-Policy: same-origin``, ``Cross-Origin-Embedder-Policy: require-corp``,
  ``Cross-Origin-Resource-Policy: same-origin`` (the page needs ``crossOriginIsolated`` for threaded wasm) and
  ``X-Content-Type-Options: nosniff``;
* MIME types browsers and onnxruntime-web insist on: ``.mjs``/``.js`` text/javascript, ``.wasm``
  application/wasm, ``.json`` application/json, model files (``.onnx``, ``.onnx_data``, ``.onnx_data_N``)
  application/octet-stream, wheels application/zip;
* caching: model graphs and shards, ``.wasm`` binaries and anything under a versioned directory
  (``.../1.2.3/...``) are ``public, max-age=31536000, immutable``; everything else (the page, ``sw.js``,
  ``manifest.json``, page modules, wheels) is ``no-cache`` (always revalidated, cheap with ETags).
  The service worker checks every file's sha256 and refetches past the HTTP cache on a mismatch, so a
  rebuilt shard under the same name is still picked up by visitors who have the service worker.

Files at the site root (read by the host from there): ``_headers`` (Netlify, Cloudflare Pages),
``netlify.toml``, ``vercel.json``, ``.htaccess`` (Apache). Everything else goes to ``deploy/``:
``nginx.conf`` (a server block), ``Caddyfile``, ``s3/`` (per-file metadata, CloudFront response-headers
policy, upload script), ``gcs/`` and ``azure/`` (upload scripts and notes), ``hf-space/`` (Dockerfile,
Space README, a stdlib server on port 7860). See docs/DEPLOY.md.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import BuildError
from ..static_server import IMMUTABLE, IMMUTABLE_PATTERN, ISOLATION_HEADERS, MIME_TYPES, SHARD_PATTERN
from ..static_server import cache_control as static_cache_control
from ..static_server import content_type as static_content_type

COI_HEADERS: dict[str, str] = dict(ISOLATION_HEADERS)
REVALIDATE = "no-cache"
# One policy for every host: the preview/Space server's own tables, media types without parameters.
MIME: dict[str, str] = {ext: t.split(";")[0] for ext, t in MIME_TYPES.items()}
ONNX_DATA_RE = SHARD_PATTERN
IMMUTABLE_RE = IMMUTABLE_PATTERN
HF_PORT = 7860
SERVER_SCRIPT = Path(__file__).parent.parent / "static_server.py"


def content_type(path: str) -> str:
    """Media type for a site path (``application/octet-stream`` when unknown)."""
    return static_content_type(path).split(";")[0]


def cache_control(path: str) -> str:
    """Cache-Control for a site path (relative or URL path)."""
    return static_cache_control("/" + path.lstrip("/"))


def manifest_paths(manifest: dict[str, Any]) -> list[str]:
    """Relative posix paths of the site's files: what the dist manifest lists (``files``: a list of
    ``{path, size, sha256}`` or a mapping keyed by path), plus ``manifest.json`` itself."""
    files = manifest.get("files")
    if isinstance(files, dict):
        paths = list(files)
    elif isinstance(files, list):
        paths = [f["path"] if isinstance(f, dict) else str(f) for f in files]
    else:
        raise BuildError("dist manifest has no 'files' list; rebuild the site (lfmvl-site build).")
    for p in paths:
        pp = PurePosixPath(p)
        if pp.is_absolute() or ".." in pp.parts or not p:
            raise BuildError(f"dist manifest lists a path outside the site: {p!r}; rebuild the site.")
    return sorted(set(paths) | {"manifest.json"})  # the manifest does not list itself


def _rules(paths: Iterable[str]) -> list[tuple[str, dict[str, str]]]:
    """Header rules besides the site-wide one, as (pattern, headers), for the hosts that match glob patterns
    (``_headers``, netlify.toml, vercel.json). Immutable model/wasm files share one ``/*<ext>`` splat per
    extension (one ``*`` at most: Cloudflare Pages allows no more); every other file gets a literal rule.
    Hosts merge all matching rules (Cloudflare joins repeated values with commas), so each file is matched
    by exactly one rule carrying Cache-Control."""
    ext_rx = r"(\.onnx_data(_[0-9]+)?|\.onnx|\.wasm)$"
    exts: set[str] = set()
    literal: set[str] = set()
    for p in paths:
        m = re.search(ext_rx, PurePosixPath(p).name)
        if m:
            exts.add(m.group(1))
        else:
            literal.add("/" + p)
    if "/index.html" in literal:
        literal.add("/")
    rules: list[tuple[str, dict[str, str]]] = []
    for e in sorted(exts):
        rules.append((f"/*{e}", {"Cache-Control": IMMUTABLE, "Content-Type": content_type("x" + e)}))
    for url in sorted(literal):
        vals = {"Cache-Control": cache_control(url)}
        if PurePosixPath(url).suffix.lower() in (".mjs", ".js", ".json", ".whl"):
            vals["Content-Type"] = content_type(url)
        rules.append((url, vals))
    return rules


def render_headers_file(paths: list[str]) -> str:
    """``_headers`` for Netlify and Cloudflare Pages (read from the site root)."""
    out = ["# Written by lfmvl-site build. Netlify and Cloudflare Pages read this file from the site root.", "/*"]
    out += [f"  {k}: {v}" for k, v in COI_HEADERS.items()]
    for pat, vals in _rules(paths):
        out += ["", pat] + [f"  {k}: {v}" for k, v in vals.items()]
    return "\n".join(out) + "\n"


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def render_netlify_toml(paths: list[str]) -> str:
    """``netlify.toml``: the same rules as ``_headers`` (use one of the two: Netlify merges both)."""
    out = ["# Written by lfmvl-site build. Publish directory: this folder. Keep this file OR _headers.",
           "[build]", '  publish = "."', ""]
    for pat, vals in [("/*", dict(COI_HEADERS)), *_rules(paths)]:
        out += ["[[headers]]", f"  for = {_toml_str(pat)}", "  [headers.values]"]
        out += [f"    {k} = {_toml_str(v)}" for k, v in vals.items()]
        out.append("")
    return "\n".join(out)


def _vercel_source(pattern: str) -> str:
    """A splat pattern as a Vercel (path-to-regexp) source."""
    if pattern.startswith("/*"):
        return "/(.*)" + pattern[2:].replace(".", "\\.")
    return re.sub(r"([:()*+?{}])", r"\\\1", pattern)  # literal path: escape path-to-regexp syntax


def render_vercel_json(paths: list[str]) -> str:
    """``vercel.json`` with the same header set (Vercel does not know .onnx/.wasm/.mjs types: set them)."""
    rules: list[dict[str, Any]] = [{"source": "/(.*)", "headers": [{"key": k, "value": v} for k, v in COI_HEADERS.items()]}]
    for pat, vals in _rules(paths):
        rules.append({"source": _vercel_source(pat), "headers": [{"key": k, "value": v} for k, v in vals.items()]})
    return json.dumps({"cleanUrls": False, "trailingSlash": False, "headers": rules}, indent=2) + "\n"


def render_nginx(root: str = "/var/www/lfmvl-site", listen: str = "80") -> str:
    """An nginx ``server`` block (include it from ``http {}``). ``add_header`` does not inherit into a
    location that has its own, so every location repeats the full set."""
    types = "\n".join(f"        {t} {ext[1:]};" for ext, t in sorted(MIME.items()))
    coi = "\n".join(f'        add_header {k} "{v}" always;' for k, v in COI_HEADERS.items())
    return f"""# Written by lfmvl-site build: nginx server block for the static site.
# Put the site in the root below and include this file from the http {{}} block.
server {{
    listen {listen};
    root {root};
    index index.html;
    autoindex off;
    # A complete types map (a types block replaces the inherited one); .onnx_data_N falls to default_type.
    types {{
{types}
    }}
    default_type application/octet-stream;
    etag on;
    gzip on;
    gzip_types text/css text/javascript application/json text/plain image/svg+xml;

    location ~ "{IMMUTABLE_RE}" {{
{coi}
        add_header Cache-Control "{IMMUTABLE}" always;
        try_files $uri =404;
    }}
    location / {{
{coi}
        add_header Cache-Control "{REVALIDATE}" always;
        try_files $uri $uri/ =404;
    }}
}}
"""


def render_htaccess() -> str:
    """Apache ``.htaccess`` (needs ``AllowOverride All``, mod_headers and mod_mime)."""
    types = "\n".join(f"  AddType {t} {ext}" for ext, t in sorted(MIME.items()) if ext != ".onnx_data")
    coi = "\n".join(f'  Header always set {k} "{v}"' for k, v in COI_HEADERS.items())
    return f"""# Written by lfmvl-site build. Needs AllowOverride All (or FileInfo Indexes Options), mod_headers, mod_mime.
Options -Indexes
DirectoryIndex index.html
<IfModule mod_mime.c>
{types}
</IfModule>
<FilesMatch "{ONNX_DATA_RE}">
  ForceType application/octet-stream
</FilesMatch>
<IfModule mod_headers.c>
{coi}
  Header always set Cache-Control "{REVALIDATE}"
  <If "%{{REQUEST_URI}} =~ m#{IMMUTABLE_RE}#">
    Header always set Cache-Control "{IMMUTABLE}"
  </If>
</IfModule>
"""


def render_caddyfile(root: str = "/srv/lfmvl-site", address: str = ":80") -> str:
    """A Caddyfile site block. Same-named ``header`` directives run most-specific first, so the two
    Cache-Control values use complementary matchers instead of overriding each other."""
    coi = "\n".join(f"\t\t{k} {json.dumps(v)}" for k, v in COI_HEADERS.items())
    typed = [(".mjs", r"\.mjs$"), (".js", r"\.js$"), (".wasm", r"\.wasm$"), (".onnx", r"\.onnx$"),
             (".onnx_data", ONNX_DATA_RE), (".whl", r"\.whl$"), (".json", r"\.json$")]
    matchers = "\n".join(
        f"\t@t{i} path_regexp t{i} {rx}\n\theader @t{i} Content-Type {json.dumps(content_type('x' + ext))}"
        for i, (ext, rx) in enumerate(typed)
    )
    return f"""# Written by lfmvl-site build: Caddy v2 site block. Change the address (a domain gets automatic HTTPS).
{address} {{
\troot * {root}
\tencode zstd gzip
\theader {{
{coi}
\t}}
\t@immutable path_regexp immutable {IMMUTABLE_RE}
\theader @immutable Cache-Control {json.dumps(IMMUTABLE)}
\t@revalidate not path_regexp revalidate {IMMUTABLE_RE}
\theader @revalidate Cache-Control {json.dumps(REVALIDATE)}
{matchers}
\tfile_server
}}
"""


def s3_objects(paths: list[str]) -> list[dict[str, str]]:
    """Per-object metadata for S3 (also what GCS and Azure uploads use)."""
    return [{"key": p, "content_type": content_type(p), "cache_control": cache_control(p)} for p in paths]


def render_cloudfront_policy() -> str:
    """A CloudFront ResponseHeadersPolicyConfig adding COOP/COEP/CORP (``aws cloudfront
    create-response-headers-policy --response-headers-policy-config file://...``)."""
    items = [{"Header": k, "Value": v, "Override": True} for k, v in COI_HEADERS.items() if k != "X-Content-Type-Options"]
    policy = {
        "Name": "lfmvl-site-cross-origin-isolation",
        "Comment": "COOP/COEP/CORP so the page is crossOriginIsolated (threaded wasm)",
        "CustomHeadersConfig": {"Quantity": len(items), "Items": items},
        "SecurityHeadersConfig": {"ContentTypeOptions": {"Override": True}},
    }
    return json.dumps(policy, indent=2) + "\n"


def _upload_script(kind: str, objects: list[dict[str, str]]) -> str:
    q = shlex.quote
    head = ["#!/usr/bin/env bash",
            f"# Written by lfmvl-site build: upload the site to {kind} with per-file Content-Type and Cache-Control.",
            "set -euo pipefail", 'SITE="$(cd "$(dirname "$0")/../.." && pwd)"']
    lines: list[str] = []
    if kind == "S3":
        head += [': "${BUCKET:?set BUCKET=my-bucket}"', 'PREFIX="${PREFIX:-}"  # e.g. PREFIX=demo/ (with a trailing slash)']
        for o in objects:
            lines.append(f'aws s3 cp "$SITE/"{q(o["key"])} "s3://$BUCKET/$PREFIX"{q(o["key"])} '
                         f'--content-type {q(o["content_type"])} --cache-control {q(o["cache_control"])}')
        # After the cp calls every object is newer than its local file, so sync only deletes stale keys.
        lines.append('aws s3 sync "$SITE" "s3://$BUCKET/$PREFIX" --delete --exclude "deploy/*" --exclude ".htaccess" '
                     '--exclude "_headers" --exclude "netlify.toml" --exclude "vercel.json"')
    elif kind == "Google Cloud Storage":
        head += [': "${BUCKET:?set BUCKET=my-bucket}"']
        for o in objects:
            lines.append(f'gcloud storage cp "$SITE/"{q(o["key"])} "gs://$BUCKET/"{q(o["key"])} '
                         f'--content-type={q(o["content_type"])} --cache-control={q(o["cache_control"])}')
    else:
        head += [': "${ACCOUNT:?set ACCOUNT=mystorageaccount}"', 'CONTAINER="${CONTAINER:-\\$web}"']
        for o in objects:
            lines.append(f'az storage blob upload --overwrite --account-name "$ACCOUNT" --container-name "$CONTAINER" '
                         f'--file "$SITE/"{q(o["key"])} --name {q(o["key"])} '
                         f'--content-type {q(o["content_type"])} --content-cache-control {q(o["cache_control"])}')
    return "\n".join(head + lines) + "\n"


_GCS_NOTES = """# Google Cloud Storage
Upload with `BUCKET=my-bucket bash deploy/gcs/upload.sh` (per-file Content-Type and Cache-Control).
A bucket cannot add COOP/COEP. Either put an external HTTPS load balancer with a backend bucket in front
(`gcloud compute backend-buckets update NAME --custom-response-header='Cross-Origin-Opener-Policy: same-origin'
--custom-response-header='Cross-Origin-Embedder-Policy: require-corp'
--custom-response-header='Cross-Origin-Resource-Policy: same-origin'`), or rely on the page's service-worker
header shim (one automatic reload on the first visit).
"""
_AZURE_NOTES = """# Azure Blob Storage (static website)
Enable the static website (`az storage blob service-properties update --account-name ACCOUNT --static-website
--index-document index.html`), then `ACCOUNT=... bash deploy/azure/upload.sh` (per-file Content-Type and
Cache-Control). The static-website endpoint cannot add COOP/COEP: use Azure Front Door with a rule set that
appends the three headers (Cross-Origin-Opener-Policy same-origin, Cross-Origin-Embedder-Policy require-corp,
Cross-Origin-Resource-Policy same-origin), or rely on the page's service-worker header shim (one reload).
"""


def render_dockerfile() -> str:
    """Dockerfile for a Hugging Face Docker Space (build context: the site folder)."""
    return f"""# Written by lfmvl-site build. Hugging Face Docker Space: copy this file and deploy/hf-space/README.md
# to the Space's root next to the site files. Locally: docker build -f deploy/hf-space/Dockerfile -t lfmvl-site .
FROM python:3.12-slim
RUN useradd -m -u 1000 user
USER user
WORKDIR /home/user/site
COPY --chown=user . .
EXPOSE {HF_PORT}
CMD ["python", "deploy/hf-space/server.py", "--host", "0.0.0.0", "--port", "{HF_PORT}", "--dir", "."]
"""


_HF_README = f"""---
title: LFM2.5-VL webcam captions
emoji: 📷
colorFrom: indigo
colorTo: blue
sdk: docker
app_port: {HF_PORT}
pinned: false
---

Webcam captioning in the browser (Pyodide + onnxruntime-web), built by `lfmvl-site build`.
Files over 10 MB (model shards, .wasm) must be tracked by Git LFS/Xet when pushing to the Space.
"""


def write_deploy_configs(dist: Path, manifest: dict[str, Any]) -> list[Path]:
    """Write every deploy configuration for the site in ``dist`` (described by its ``manifest.json`` dict).

    Call it after the site files and manifest are in place. The files written are not site content:
    leave them out of the manifest (the service worker need not cache them). Returns the paths written.
    """
    dist = Path(dist)
    if not dist.is_dir():
        raise BuildError(f"{dist} is not a directory; build the site first.")
    paths = manifest_paths(manifest)
    objects = s3_objects(paths)
    files: dict[str, str] = {
        "_headers": render_headers_file(paths),
        "netlify.toml": render_netlify_toml(paths),
        "vercel.json": render_vercel_json(paths),
        ".htaccess": render_htaccess(),
        "deploy/nginx.conf": render_nginx(),
        "deploy/Caddyfile": render_caddyfile(),
        "deploy/s3/objects.json": json.dumps(objects, indent=1) + "\n",
        "deploy/s3/cloudfront-response-headers-policy.json": render_cloudfront_policy(),
        "deploy/s3/upload.sh": _upload_script("S3", objects),
        "deploy/gcs/upload.sh": _upload_script("Google Cloud Storage", objects),
        "deploy/gcs/NOTES.md": _GCS_NOTES,
        "deploy/azure/upload.sh": _upload_script("Azure Blob Storage", objects),
        "deploy/azure/NOTES.md": _AZURE_NOTES,
        "deploy/hf-space/Dockerfile": render_dockerfile(),
        "deploy/hf-space/README.md": _HF_README,
    }
    written: list[Path] = []
    for rel, text in files.items():
        target = dist / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        if rel.endswith(".sh"):
            target.chmod(0o755)
        written.append(target)
    server = dist / "deploy/hf-space/server.py"
    shutil.copyfile(SERVER_SCRIPT, server)
    written.append(server)
    return written
