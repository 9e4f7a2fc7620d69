"""``lfmvl-site build``: assemble dist/ (page, worker, Pyodide, onnxruntime-web, runtime wheel, model).

Everything is staged in a temporary directory beside ``--out`` and renamed into
place at the very end, so a failed or interrupted build leaves the previous
dist/ as it was. ``dist/manifest.json`` lists the size and sha256 of every file.
What may be replaced, stale-staging cleanup and signal handling live in :mod:`.output`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import pyodide_dir_from_env
from ..errors import BuildError, LfmvlError, describe_os_error
from ..files import sha256_file
from ..runtime import contract
from . import assets, output
from .fetch import Progress, quiet, stderr_progress
from .wheel import runtime_wheel

# Every file of web/ is shipped as it is, except the templates, which are rendered.
WEB_TEMPLATES = ("index.html",)
FORMAT = contract.SITE_MANIFEST_FORMAT


def web_dir() -> Path:
    """The page sources: ``web/`` of the source tree (or packaged beside the module)."""
    here = Path(__file__).resolve()
    for candidate in (here.parent / "web", here.parents[3] / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    raise BuildError("The page sources (web/index.html) are missing from this installation; reinstall lfmvl-site "
                     "from a source checkout (`pip install -e .`).")


def build_site(
    out: Path,
    model_options: Any,
    *,
    pyodide_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the static site into ``out``; return its manifest."""
    say: Progress = stderr_progress if progress else quiet
    out = Path(out).resolve()
    mirror = pyodide_dir if pyodide_dir is not None else pyodide_dir_from_env()
    if mirror is not None and not Path(mirror).is_dir():
        raise BuildError(f"--pyodide-dir {mirror} is not a directory; point it at a copy of the Pyodide "
                         f"{assets.PYODIDE_VERSION} release files, or leave it out to download them.")
    models = _as_models(model_options)
    output.check_out(out, [m.model_dir for m in models if getattr(m, "model_dir", None) is not None])
    out.parent.mkdir(parents=True, exist_ok=True)
    output.sweep_stale(out, say)
    t0 = time.monotonic()
    with output.signals_end_build():
        staging: Path | None = None
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
            output.write_marker(staging, "building")
            manifest = _assemble(staging, models, Path(mirror) if mirror else None, say, progress)
            output.swap_into_place(staging, out, say)
        except BaseException as exc:
            removed = staging is None or not staging.exists() or output.remove_tree(staging, say, "the build's staging folder")
            if removed and isinstance(exc, output.Terminated):
                say(f"Stopped by {exc}; removed the build's staging folder, {out} left as it was.")
            if isinstance(exc, OSError):
                left = f"{out} was left as it was" if removed else "its staging folder could not be removed"
                raise BuildError(f"Could not write the site next to {out}: {describe_os_error(exc)} ({left})") from exc
            raise
    say(f"Built {out} in {time.monotonic() - t0:.1f} s ({manifest['total_bytes'] / 1e6:.1f} MB).")
    return manifest


def _as_models(model_options: Any) -> list[Any]:
    """``build_site`` takes one ModelBuildOptions or a sequence of them (one per model the site offers)."""
    if isinstance(model_options, (list, tuple)):
        if not model_options:
            raise BuildError("No model to build: name one with --model, --model-dir or --synthetic.")
        return list(model_options)
    return [model_options]


def _assemble(root: Path, models: list[Any], mirror: Path | None, say: Progress, progress: bool) -> dict[str, Any]:
    say(f"[1/5] onnxruntime-web {assets.ORT_VERSION}")
    ort_files = assets.fetch_ort(say)
    assets.copy_assets(ort_files, root / "ort")

    say(f"[2/5] Pyodide {assets.PYODIDE_VERSION} + {', '.join(assets.PYODIDE_PACKAGES)}"
        + (f" (mirror {mirror})" if mirror else ""))
    bundle = assets.fetch_pyodide(mirror, say)
    assets.copy_assets(bundle.runtime, root / "pyodide")
    assets.copy_assets([a for _, a in bundle.packages], root / "pyodide")
    (root / "pyodide" / "pyodide-lock.json").write_text(json.dumps(bundle.trimmed_lock(), indent=1))
    for entry, asset in bundle.packages:
        say(f"  {entry['name']} {entry['version']}: {asset.name} ({asset.source})")

    say("[3/5] runtime wheel")
    wheel = runtime_wheel(root / "py")

    from ..model.build import build_model
    from ..runtime.choices import site_choices

    built: list[dict[str, Any]] = []
    for i, options in enumerate(models):
        name = _short_name(options)
        slug = _slug(name, {b["slug"] for b in built})
        # One model keeps the classic layout (model/); several get a folder each (models/<slug>/).
        url = contract.MODEL_DIR + "/" if len(models) == 1 else f"{contract.MODELS_DIR}/{slug}/"
        say(f"[4/5] model {i + 1}/{len(models)}: {name}" if len(models) > 1 else "[4/5] model")
        try:
            model_manifest = build_model(options, root / url, progress=progress)
        except LfmvlError:
            raise
        except Exception as exc:  # keep the staging cleanup + one-line error contract
            raise BuildError(f"The model build failed ({type(exc).__name__}: {exc}); dist/ was left untouched.") from exc
        built.append({"slug": slug, "name": name, "url": url, "manifest": model_manifest,
                      "manifest_bytes": (root / url / "manifest.json").stat().st_size})
    choices = site_choices(built)

    say("[5/5] page")
    settings = _settings(wheel.relative_to(root).as_posix(), built, choices)
    _write_page(root, settings, built[0]["manifest"])
    manifest = _write_manifest(root, settings, built, choices)
    # Host configs are made from the site's file list, so they come last and are listed apart
    # ("deploy_files"): the service worker caches "files" only.
    from .deploy import write_deploy_configs

    manifest["deploy_files"] = [_file_entry(root, p) for p in sorted(write_deploy_configs(root, manifest))]
    contract.write_manifest(root / "manifest.json", manifest)
    return manifest


def _short_name(options: Any) -> str:
    """What the page calls a model: the hub repo's name without -ONNX, the folder's name, or the synthetic size."""
    if getattr(options, "synthetic", False):
        return f"synthetic {options.synthetic_size}"
    if getattr(options, "model_dir", None) is not None:
        return Path(options.model_dir).resolve().name
    name = str(options.repo_id).split("/")[-1]
    return name[:-5] if name.lower().endswith("-onnx") else name


def _slug(name: str, taken: set[str]) -> str:
    base = "".join(ch if ch.isalnum() or ch in ".-_" else "-" for ch in name.lower()).strip("-.") or "model"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def _model_name(model_manifest: dict[str, Any]) -> str:
    source = model_manifest.get("source") or {}
    if source.get("synthetic"):
        return "a synthetic test model (random weights: its captions are gibberish)"
    return str(source.get("repo_id") or source.get("local_dir") or "LFM2.5-VL")


def _settings(wheel_path: str, built: list[dict[str, Any]], choices: list[dict[str, Any]]) -> dict[str, Any]:
    # Build facts only: setting keys, defaults and ranges are in contract.js (C.settings).
    return {
        "version": __version__,
        "title": "Live captions · LFM2.5-VL",
        "model_name": _model_name(built[0]["manifest"]) if len(built) == 1 else
        " or ".join(b["name"] for b in built),
        "model_url": built[0]["url"],
        "choices": choices,
        "runtime_wheel": wheel_path,
        "pyodide_packages": list(assets.PYODIDE_PACKAGES),
        "pyodide_version": assets.PYODIDE_VERSION,
        "ort_version": assets.ORT_VERSION,
    }


def _write_page(root: Path, settings: dict[str, Any], model_manifest: dict[str, Any]) -> None:
    import jinja2

    src = web_dir()
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(src)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # JSON inside <script>: "<" escaped so no "</script>" can end the element early.
    settings_json = json.dumps(settings, ensure_ascii=False).replace("<", "\\u003c")
    html = env.get_template("index.html").render(settings_json=settings_json, **settings)
    (root / "index.html").write_text(html, encoding="utf-8")
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in WEB_TEMPLATES and not path.name.startswith("."):
            shutil.copyfile(path, root / path.name)
    (root / contract.CONTRACT_JS).write_text(contract.render_js(), encoding="utf-8")  # names web/*.js read


def _part(path: str) -> str:
    top = path.split("/", 1)[0]
    return {"pyodide": "pyodide", "ort": "ort", "py": "runtime", contract.MODEL_DIR: "model",
            contract.MODELS_DIR: "model"}.get(top, "page")


def _file_entry(root: Path, path: Path) -> dict[str, Any]:
    return {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)}


def _write_manifest(root: Path, settings: dict[str, Any], built: list[dict[str, Any]],
                    choices: list[dict[str, Any]]) -> dict[str, Any]:
    files = [_file_entry(root, p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != output.MARKER]
    parts: dict[str, int] = {}
    for f in files:
        parts[_part(f["path"])] = parts.get(_part(f["path"]), 0) + f["size"]
    manifest = {
        "format": FORMAT,
        "generator": f"lfmvl-site {__version__}",
        "versions": {"pyodide": assets.PYODIDE_VERSION, "onnxruntime-web": assets.ORT_VERSION,
                     "runtime": __version__},
        "model": {"manifest": built[0]["url"] + "manifest.json", "source": built[0]["manifest"].get("source"),
                  "preset": built[0]["manifest"].get("preset")},
        # Every model the page offers, and every model × preset with what it downloads per device class.
        "models": [{"slug": b["slug"], "name": b["name"], "manifest": b["url"] + "manifest.json",
                    "source": b["manifest"].get("source"), "presets": [p["name"] for p in
                                                                       b["manifest"].get("presets") or []]}
                   for b in built],
        "choices": choices,
        "runtime_wheel": settings["runtime_wheel"],
        "parts": parts,
        "total_bytes": sum(f["size"] for f in files),
        "files": files,
    }
    contract.write_manifest(root / "manifest.json", manifest)
    return manifest


def serve_hint(out: Path) -> str:
    """The command that previews the built site."""
    try:
        shown = os.path.relpath(out)
    except ValueError:
        shown = str(out)
    if shown.startswith(".."):
        shown = str(out)
    return f"lfmvl-site serve {shown}"


__all__ = ["build_site", "serve_hint", "web_dir"]
