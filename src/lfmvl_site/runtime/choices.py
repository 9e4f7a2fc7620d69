"""The site's model choices (model × precision preset): what each downloads per device, and the default one.

The build lists the choices in ``dist/manifest.json`` (:func:`site_choices`); in the page, Python picks the
default for the visitor's device (:func:`default_choice`) and narrows a model manifest to the chosen preset
(:func:`preset_manifest`) before :class:`~lfmvl_site.runtime.browser.BrowserBackend` picks the variants. Pure
Python: the same code runs at build time (sizes) and in Pyodide (the choice), so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ContractError

# What the download depends on: the device and whether its WebGPU adapter has shader-f16.
DEVICE_CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "webgpu-f16": ("webgpu", ("shader-f16",)),
    "webgpu": ("webgpu", ()),
    "wasm": ("wasm", ()),
}
# Bytes per parameter of a graph file, to estimate a model's size from its default variants.
_BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "q4": 0.5 + 2 / 32}


def device_class(device: str, features: Sequence[str] = ()) -> str:
    """``"webgpu-f16"``, ``"webgpu"`` or ``"wasm"``."""
    if device != "webgpu":
        return "wasm"
    return "webgpu-f16" if "shader-f16" in features else "webgpu"


def preset_label(name: str) -> str:
    vision, decoder = name.split("/")
    return f"{vision.upper()} vision / {decoder.upper()} decoder"


def preset_manifest(manifest: Mapping[str, Any], preset: str | None) -> dict[str, Any]:
    """``manifest`` with each role's variants narrowed to ``preset``'s, in its order (``None``: unchanged)."""
    if not preset:
        return dict(manifest)
    presets = {p.get("name"): p for p in manifest.get("presets") or []}
    if preset not in presets:
        raise ContractError(f"The model has no preset {preset!r} (it has {', '.join(map(str, presets)) or 'none'}); "
                            "rebuild the site with `lfmvl-site build`.")
    graphs = manifest.get("graphs") or {}
    narrowed = {}
    for role, variants in graphs.items():
        order = list(presets[preset].get("graphs", {}).get(role) or [])
        by_precision = {v.get("precision"): v for v in variants}
        narrowed[role] = [by_precision[p] for p in order if p in by_precision] or list(variants)
    return {**manifest, "graphs": narrowed}


def _params(manifest: Mapping[str, Any]) -> int:
    """A model's parameter count, estimated from the sizes of its first variant of every graph."""
    sizes = {f["path"]: f["size"] for f in manifest.get("files") or []}
    total = 0.0
    for variants in (manifest.get("graphs") or {}).values():
        v = variants[0]
        nbytes = sum(sizes.get(p, 0) for p in (v["file"], *(v.get("external_data") or ())))
        total += nbytes / _BYTES_PER_PARAM.get(str(v.get("precision")), 4.0)
    return int(total)


def site_choices(models: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per model × preset: ``models`` are ``{slug, name, url, manifest, manifest_bytes}`` (url: the model folder
    relative to the site root, e.g. ``model/``), in the build's order. Each entry says what it downloads
    (bytes and files, relative to the site root) on each :data:`DEVICE_CLASSES` device."""
    from .browser import choose_variant

    out: list[dict[str, Any]] = []
    for model in models:
        manifest, url = model["manifest"], str(model["url"]).rstrip("/") + "/"
        sizes = {f["path"]: f["size"] for f in manifest["files"]}
        sizes["manifest.json"] = int(model.get("manifest_bytes") or 0)  # the manifest does not list itself
        shared = sorted(p for p in sizes if "/" not in p)  # configs, tokenizer, manifest: every preset needs them
        params = _params(manifest)
        for preset in [p["name"] for p in manifest.get("presets") or []] or [None]:
            narrowed = preset_manifest(manifest, preset)
            downloads: dict[str, Any] = {}
            needs = {n for variants in narrowed["graphs"].values() for n in variants[0].get("needs") or []}
            for cls, (device, features) in DEVICE_CLASSES.items():
                files = list(shared)
                for role, variants in narrowed["graphs"].items():
                    c = choose_variant(role, variants, device, features)
                    files += [c.file, *c.external_data]
                files = list(dict.fromkeys(files))
                downloads[cls] = {"bytes": sum(sizes.get(p, 0) for p in files), "files": [url + p for p in files]}
            slug = str(model["slug"])
            out.append({
                "id": f"{slug}:{preset}" if preset else slug,
                "model": slug,
                "model_name": str(model["name"]),
                "params": params,
                "preset": preset,
                "label": f"{model['name']} · {preset_label(preset)}" if preset else str(model["name"]),
                "model_url": url,
                "needs": sorted(needs),
                "downloads": downloads,
            })
    return out


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def default_choice(choices: Sequence[Mapping[str, Any]], device: str, features: Sequence[str] = (),
                   remembered: str | None = None) -> dict[str, str]:
    """``{"id", "why", "device_class"}``: the visitor's remembered choice if the site still has it, else the best one this device
    runs well: the largest model with shader-f16, the smaller model without it, the smallest download on wasm."""
    picked = _default_choice(choices, device, features, remembered)
    return {**picked, "device_class": device_class(device, features)}


def _default_choice(choices: Sequence[Mapping[str, Any]], device: str, features: Sequence[str],
                    remembered: str | None) -> dict[str, str]:
    if not choices:
        raise ContractError("The site lists no model choices; rebuild it with `lfmvl-site build`.")
    by_id = {str(c["id"]): c for c in choices}
    if remembered and remembered in by_id:
        return {"id": remembered, "why": "your choice from your last visit"}
    cls = device_class(device, features)

    def size(c: Mapping[str, Any]) -> int:
        return int(c["downloads"][cls]["bytes"])

    if len(choices) == 1:
        return {"id": str(choices[0]["id"]), "why": "the only model this site offers"}
    if cls == "wasm":
        c = min(choices, key=size)  # min keeps the first of equals: the build's order
        return {"id": str(c["id"]), "why": f"no WebGPU here, so the CPU runs it: the smallest download "
                                           f"({_mb(size(c))}) is the fastest"}
    if cls == "webgpu":
        plain = [c for c in choices if not c["needs"]] or list(choices)
        smallest = min(int(c["params"]) for c in plain)
        c = next(c for c in plain if int(c["params"]) == smallest)
        return {"id": str(c["id"]), "why": "this GPU lacks shader-f16 (half-precision math), so the smaller model, "
                                           "in a preset that needs none"}
    largest = max(int(c["params"]) for c in choices)
    c = next(c for c in choices if int(c["params"]) == largest)
    return {"id": str(c["id"]), "why": "a GPU with shader-f16: the largest model, in its first preset"}


__all__ = ["DEVICE_CLASSES", "default_choice", "device_class", "preset_label", "preset_manifest", "site_choices"]
