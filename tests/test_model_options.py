"""The model flags of ``lfmvl-site build``: click parses them into ModelBuildOptions; bad values are usage errors."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lfmvl_site.errors import InputError
from lfmvl_site.model.options import DEFAULT_MAX_SHARD_MB, ModelBuildOptions, model_options


@click.command()
@model_options
@click.option("--other", default="x")
def cmd(model_options: ModelBuildOptions, other: str) -> None:
    click.echo(repr(model_options))
    click.echo(other)


def _parse_all(*args: str) -> tuple[ModelBuildOptions, ...]:
    captured: list[tuple[ModelBuildOptions, ...]] = []

    @click.command()
    @model_options
    def c(model_options: tuple[ModelBuildOptions, ...]) -> None:
        captured.append(model_options)

    result = CliRunner().invoke(c, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return captured[0]


def _parse(*args: str) -> ModelBuildOptions:
    (opts,) = _parse_all(*args)
    return opts


def test_defaults_are_the_published_webgpu_recipe() -> None:
    opts = _parse()
    assert opts == ModelBuildOptions()
    assert opts.repo_id == "LiquidAI/LFM2.5-VL-1.6B-ONNX" and opts.revision is None
    assert opts.preset == {"embed_tokens": "fp16", "embed_images": "fp16", "decoder": "q4"}
    assert opts.max_shard_mb == DEFAULT_MAX_SHARD_MB == 256 and opts.max_shard_bytes == 256 * 2**20
    assert opts.source_kind == "hub"


def test_every_flag(tmp_path: Path) -> None:
    opts = _parse("--model", "me/repo", "--revision", "abc", "--vision", "q4", "--decoder", "fp16",
                  "--embed-tokens", "fp32", "--max-shard-mb", "64", "--no-last-logits", "--no-q4-lm-head",
                  "--no-argmax")
    assert (opts.repo_id, opts.revision, opts.vision, opts.decoder, opts.embed_tokens, opts.max_shard_mb) == (
        "me/repo", "abc", "q4", "fp16", "fp32", 64)
    assert (opts.last_logits, opts.q4_lm_head, opts.argmax) == (False, False, False)
    local = _parse("--model-dir", str(tmp_path))
    assert local.model_dir == tmp_path and local.source_kind == "local"
    synth = _parse("--synthetic", "--seed", "7", "--synthetic-size", "mid")
    assert (synth.synthetic, synth.seed, synth.synthetic_size, synth.source_kind) == (True, 7, "mid", "synthetic")


def test_several_models_share_the_precision_options(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    models = _parse_all("--model", "me/one", "--model-dir", str(tmp_path / "a"), "--model-dir", str(tmp_path / "b"),
                        "--synthetic", "--synthetic-size", "tiny", "--synthetic-size", "450m",
                        "--preset", "fp16/q4", "--preset", "Q4/Q4", "--no-fuse")
    assert [m.source_kind for m in models] == ["hub", "local", "local", "synthetic", "synthetic"]
    assert [m.repo_id for m in models][0] == "me/one"
    assert [m.model_dir for m in models][1:3] == [tmp_path / "a", tmp_path / "b"]
    assert [m.synthetic_size for m in models][3:] == ["tiny", "450m"]
    assert all(m.presets == ("fp16/q4", "q4/q4") and not m.fuse for m in models)
    assert models[0].preset_of("q4/q4") == {"embed_tokens": "fp16", "embed_images": "q4", "decoder": "q4"}
    assert models[0].preset == models[0].preset_of("fp16/q4")


def test_presets_default_to_vision_and_decoder() -> None:
    assert _parse("--vision", "q4", "--decoder", "fp16").preset_names == ["q4/fp16"]
    assert _parse("--preset", "fp16/fp16", "--preset", "fp16/fp16").preset_names == ["fp16/fp16"]


def test_stacks_with_other_options() -> None:
    result = CliRunner().invoke(cmd, ["--other", "y", "--decoder", "fp32"])
    assert result.exit_code == 0 and "decoder='fp32'" in result.output and result.output.endswith("y\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--synthetic-size", "mid"], "--synthetic-size needs --synthetic"),
        (["--preset", "fp16"], "is not VISION/DECODER"),
        (["--preset", "q8/q4"], "is not VISION/DECODER"),
        (["--vision", "q8"], "Invalid value for '--vision'"),
        (["--max-shard-mb", "0"], "--max-shard-mb"),
        (["--model", "not-a-repo-id"], "OWNER/NAME"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cmd, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_dataclass_validates() -> None:
    with pytest.raises(InputError, match="exclusive"):
        ModelBuildOptions(synthetic=True, model_dir=Path("."))
    with pytest.raises(InputError, match="--decoder 'q8'"):
        ModelBuildOptions(decoder="q8")
    with pytest.raises(InputError, match="--embed-tokens 'q4'"):
        ModelBuildOptions(embed_tokens="q4")
