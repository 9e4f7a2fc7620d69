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


def _parse(*args: str) -> ModelBuildOptions:
    captured: list[ModelBuildOptions] = []

    @click.command()
    @model_options
    def c(model_options: ModelBuildOptions) -> None:
        captured.append(model_options)

    result = CliRunner().invoke(c, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return captured[0]


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


def test_stacks_with_other_options() -> None:
    result = CliRunner().invoke(cmd, ["--other", "y", "--decoder", "fp32"])
    assert result.exit_code == 0 and "decoder='fp32'" in result.output and result.output.endswith("y\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--synthetic", "--model-dir", "."], "exclusive"),
        (["--vision", "q8"], "Invalid value for '--vision'"),
        (["--max-shard-mb", "0"], "--max-shard-mb"),
        (["--model", "not-a-repo-id"], "OWNER/NAME"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cmd, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_dataclass_validates() -> None:
    with pytest.raises(InputError, match="--decoder 'q8'"):
        ModelBuildOptions(decoder="q8")
    with pytest.raises(InputError, match="--embed-tokens 'q4'"):
        ModelBuildOptions(embed_tokens="q4")
