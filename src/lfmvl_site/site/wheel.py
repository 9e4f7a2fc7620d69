"""Pure-Python wheels written with the standard library.

Why not ``pip wheel .``: that would package the whole project (CLI, model
builder, synth) and need a build backend, possibly from the network. The page
needs only the runtime (``lfmvl_site/__init__.py``, ``errors.py``,
``runtime/**``). Writing the zip ourselves ships exactly that, with fixed
timestamps and order, so the same sources give byte-identical wheels (stable
sha256 for caches) and the build stays offline.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import __version__

_EPOCH = (1980, 1, 1, 0, 0, 0)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/lfmvl_site


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def write_wheel(
    dest_dir: Path,
    name: str,
    version: str,
    files: Mapping[str, bytes],
    *,
    summary: str = "",
    requires: Sequence[str] = (),
) -> Path:
    """Write ``{name}-{version}-py3-none-any.whl`` holding ``files`` (archive path → bytes)."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    if summary:
        meta.append(f"Summary: {summary}")
    meta += [f"Requires-Dist: {r}" for r in requires]
    extra = {
        f"{info}/METADATA": ("\n".join(meta) + "\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: lfmvl-site\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    entries = {**{k: files[k] for k in sorted(files)}, **extra}
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries.items())
    record += f"{info}/RECORD,,\n"
    entries[f"{info}/RECORD"] = record.encode()

    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as zf:
        for path, data in entries.items():
            zi = zipfile.ZipInfo(path, date_time=_EPOCH)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, data)
    return out


def runtime_files(root: Path = PACKAGE_ROOT) -> dict[str, bytes]:
    """The package's runtime sources, as archive paths: what runs inside Pyodide."""
    picked = [root / "__init__.py", root / "errors.py", *sorted((root / "runtime").rglob("*.py"))]
    return {f"lfmvl_site/{p.relative_to(root).as_posix()}": p.read_bytes() for p in picked}


def runtime_wheel(dest_dir: Path) -> Path:
    """Build the runtime wheel the worker loads (``lfmvl_site-<version>-py3-none-any.whl``)."""
    return write_wheel(
        dest_dir,
        "lfmvl-site",
        __version__,
        runtime_files(),
        summary="lfmvl-site runtime (preprocess, tokenizer, prompt, generation) for Pyodide",
        requires=["numpy", "jinja2"],
    )


def pure_wheel_from_sdist(sdist: Path, dest_dir: Path, package: str, name: str, version: str) -> Path:
    """Repack an sdist's pure-Python package (``src/<package>/*.py`` and ``py.typed``) as a wheel.

    Used for MarkupSafe, whose PyPI wheels are all platform-specific but whose
    sources fall back to pure Python when the C speedups are missing.
    """
    files: dict[str, bytes] = {}
    with tarfile.open(sdist) as tf:
        for member in tf.getmembers():
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 4 and parts[1:3] == ("src", package):
                if parts[-1].endswith(".py") or parts[-1] == "py.typed":
                    data = tf.extractfile(member)
                    assert data is not None
                    files["/".join(parts[2:])] = data.read()
    if f"{package}/__init__.py" not in files:
        raise ValueError(f"{sdist.name} has no src/{package}/__init__.py")
    return write_wheel(dest_dir, name, version, files)
