"""A site with several models and presets: the build lists each model × preset with what it downloads on each kind
of device (checked against the files on disk), and the default choice follows the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import pyodide_mirror

from lfmvl_site.cli import main
from lfmvl_site.errors import ContractError
from lfmvl_site.runtime.browser import choose_variant
from lfmvl_site.runtime.choices import default_choice, preset_manifest
from lfmvl_site.synth import write_model


@pytest.fixture(scope="module")
def two_model_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two")
    write_model(root / "big", seed=1, size="tiny", layout="1.6b")
    write_model(root / "small", seed=2, size="tiny", layout="450m")
    args = ["build", "--out", str(root / "dist"), "--model-dir", str(root / "big"), "--model-dir", str(root / "small"),
            "--preset", "fp16/q4", "--preset", "q4/q4", "--preset", "fp32/fp32", "-q"]
    if pyodide_mirror() is not None:
        args += ["--pyodide-dir", str(pyodide_mirror())]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "dist"


def test_each_model_has_its_folder_and_each_preset_its_entry(two_model_site: Path) -> None:
    site = json.loads((two_model_site / "manifest.json").read_text())
    assert [m["slug"] for m in site["models"]] == ["big", "small"]
    assert [c["id"] for c in site["choices"]] == [f"{m}:{p}" for m in ("big", "small")
                                                  for p in ("fp16/q4", "q4/q4", "fp32/fp32")]
    assert not (two_model_site / "model").exists()
    # The 450M layout's files were recognised and converted into the site's one layout.
    small = json.loads((two_model_site / "models/small/manifest.json").read_text())
    assert small["source"]["local_dir"].endswith("small")
    assert {v["precision"] for v in small["graphs"]["decoder"]} == {"q4", "fp32"}
    # Shared files are stored once: one Pyodide, one onnxruntime-web, one wheel for both models.
    paths = [f["path"] for f in site["files"]]
    assert sum(p.endswith("pyodide.asm.wasm") for p in paths) == 1
    assert sum(p.startswith("py/") and p.endswith(".whl") for p in paths) == 1


def test_downloads_are_the_files_the_page_would_fetch(two_model_site: Path) -> None:
    site = json.loads((two_model_site / "manifest.json").read_text())
    for c in site["choices"]:
        model = json.loads((two_model_site / c["model_url"] / "manifest.json").read_text())
        narrowed = preset_manifest(model, c["preset"])
        for cls, device, features in (("webgpu-f16", "webgpu", ["shader-f16"]), ("webgpu", "webgpu", []),
                                      ("wasm", "wasm", [])):
            graphs = []
            for role, variants in narrowed["graphs"].items():
                picked = choose_variant(role, variants, device, features)
                assert picked.precision in {"fp32", "fp16", "q4"}
                graphs += [picked.file, *picked.external_data]
            listed = c["downloads"][cls]["files"]
            assert {c["model_url"] + g for g in graphs} <= set(listed)
            # The bytes are those of the files on disk, each counted once.
            assert c["downloads"][cls]["bytes"] == sum((two_model_site / p).stat().st_size for p in set(listed))
    by_id = {c["id"]: c for c in site["choices"]}
    # A q4 vision encoder is smaller than fp32 on every device; fp16 needs shader-f16, fp32/fp32 does not
    # (its embedding table still prefers fp16, with an fp32 fallback).
    assert by_id["big:q4/q4"]["downloads"]["wasm"]["bytes"] < by_id["big:fp32/fp32"]["downloads"]["wasm"]["bytes"]
    assert by_id["big:fp16/q4"]["needs"] == ["shader-f16"]


def test_a_preset_narrows_the_variants_in_its_order(two_model_site: Path) -> None:
    model = json.loads((two_model_site / "models/big/manifest.json").read_text())
    precisions = {r: [v["precision"] for v in vs] for r, vs in preset_manifest(model, "q4/q4")["graphs"].items()}
    assert precisions == {"embed_tokens": ["fp16", "fp32"], "embed_images": ["q4"], "decoder": ["q4"]}
    precisions = {r: [v["precision"] for v in vs] for r, vs in preset_manifest(model, "fp16/q4")["graphs"].items()}
    assert precisions["embed_images"] == ["fp16", "q4"]
    with pytest.raises(ContractError, match="no preset 'fp16/fp16'"):
        preset_manifest(model, "fp16/fp16")


def _choice(cid: str, params: int, needs: list[str], sizes: tuple[int, int, int]) -> dict:
    classes = ("webgpu-f16", "webgpu", "wasm")
    return {"id": cid, "params": params, "needs": needs,
            "downloads": {k: {"bytes": b, "files": []} for k, b in zip(classes, sizes, strict=True)}}


CHOICES = [
    _choice("1.6b:fp16/q4", 1_600, ["shader-f16"], (1_200, 2_000, 1_200)),
    _choice("1.6b:q4/q4", 1_600, [], (900, 900, 900)),
    _choice("450m:fp16/q4", 450, ["shader-f16"], (420, 700, 420)),
    _choice("450m:q4/q4", 450, [], (300, 300, 300)),
]


@pytest.mark.parametrize(("device", "features", "expected", "said"), [
    ("webgpu", ["shader-f16"], "1.6b:fp16/q4", "largest model"),
    ("webgpu", [], "450m:q4/q4", "lacks shader-f16"),
    ("wasm", [], "450m:q4/q4", "smallest download"),
])
def test_default_choice_follows_the_device(device: str, features: list[str], expected: str, said: str) -> None:
    got = default_choice(CHOICES, device, features)
    assert got["id"] == expected and said in got["why"]


def test_a_remembered_choice_wins_while_the_site_has_it() -> None:
    assert default_choice(CHOICES, "wasm", [], "1.6b:fp16/q4")["id"] == "1.6b:fp16/q4"
    assert default_choice(CHOICES, "wasm", [], "gone:q4/q4")["id"] == "450m:q4/q4"
    with pytest.raises(ContractError, match="no model choices"):
        default_choice([], "wasm")


def test_caption_takes_the_same_presets(two_model_site: Path, tmp_path: Path) -> None:
    from PIL import Image

    from lfmvl_site.caption import resolve_model_dir
    from lfmvl_site.runtime.native import NativeBackend

    folder = two_model_site / "models" / "small"
    directory, precision = resolve_model_dir(folder, None, None, "q4/Q4")
    backend = NativeBackend(directory, precision=precision)
    model = json.loads((folder / "manifest.json").read_text())
    q4 = {role: next(v["file"] for v in model["graphs"][role] if v["precision"] == "q4")
          for role in ("embed_images", "decoder")}
    assert {role: backend.graph_path(role) for role in q4} == {role: folder / f for role, f in q4.items()}
    Image.new("RGB", (64, 48), (90, 120, 30)).save(tmp_path / "x.png")
    result = CliRunner().invoke(main, ["caption", str(tmp_path / "x.png"), "--model-dir", str(folder),
                                       "--preset", "q4/q4", "--max-new-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output.strip().splitlines()[-1])["token_ids"]) > 0
    bad = CliRunner().invoke(main, ["caption", str(tmp_path / "x.png"), "--model-dir", str(folder), "--preset", "q4"])
    assert bad.exit_code != 0 and "is not VISION/DECODER" in bad.output and "Traceback" not in bad.output


def test_size_estimate_from_shapes_matches_the_built_graphs(two_model_site: Path) -> None:
    """The README's real-model download sizes come from benchmarks/measure.py's shape arithmetic; on the tiny
    model it must give the graphs' file sizes up to their node definitions (tens of KB per graph)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from measure import graph_sizes

    estimate = graph_sizes("tiny")
    model = json.loads((two_model_site / "models/big/manifest.json").read_text())
    sizes = {f["path"]: f["size"] for f in model["files"]}
    seen = 0
    for role, variants in model["graphs"].items():
        for v in variants:
            actual = sum(sizes[p] for p in (v["file"], *v["external_data"]))
            assert 0 <= actual - estimate[role][v["precision"]] <= 64_000, (role, v["precision"], actual)
            seen += 1
    assert seen == 7  # embed_tokens fp16/fp32, vision fp16/q4/fp32, decoder q4/fp32
