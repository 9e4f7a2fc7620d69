"""The ``lfmvl-site`` command line. Click only: each command makes one library call.

Errors a user can act on (:class:`~lfmvl_site.errors.LfmvlError`) become one line
on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .caption import DEFAULT_MAX_PIXELS
from .errors import LfmvlError, describe_os_error
from .model.options import model_options
from .runtime.contract import DEFAULT_PROMPT
from .runtime.sampling import SamplingSettings

_SAMPLING = SamplingSettings()  # the runtime's defaults, shown by --help

def _replace_unencodable_output() -> None:
    """A terminal or pipe whose encoding cannot show a caption's characters gets replacements, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):
                pass


def _verbosity(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``-v``/``-q`` on every command: they set what lfmvl_site/log.py shows on stderr."""

    @functools.wraps(fn)
    def wrapper(*args: Any, verbose: int = 0, quiet: bool = False, **kwargs: Any) -> Any:
        from . import log

        log.setup(-1 if quiet else verbose)
        return fn(*args, **kwargs)

    wrapper = click.option("-q", "--quiet", is_flag=True, help="Show only warnings and errors.")(wrapper)
    return click.option("-v", "--verbose", count=True, help="Show more detail (-vv for debug output).")(wrapper)


def _clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _replace_unencodable_output()
        try:
            return fn(*args, **kwargs)
        except LfmvlError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, like other tools
            sys.stderr.close()
            sys.exit(141)
        except OSError as exc:
            click.echo(f"Error: {describe_os_error(exc)}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lfmvl-site")
def main() -> None:
    """Ship LFM2.5-VL-1.6B as a static website that captions a webcam in the browser."""


@main.command("synth-model")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="Weights are deterministic from this seed.")
@click.option(
    "--size",
    type=click.Choice(["tiny", "mid", "full", "450m"]),
    default="tiny",
    show_default=True,
    help="tiny: test fixture (seconds); mid: hundreds of MB; full / 450m: the real 1.6B / 450M dimensions "
    "(random weights).",
)
@click.option("--layout", type=click.Choice(["1.6b", "450m"]), default=None,
              help="File layout: 1.6b (onnx/embed_images, decoder) or 450m (onnx/vision_encoder, decoder_model_merged). "
              "Default: 450m for --size 450m, else 1.6b.")
@_verbosity
@_clean_errors
def synth_model(out_dir: Path, seed: int, size: str, layout: str | None) -> None:
    """Write a synthetic model directory in a published LFM2.5-VL ONNX file layout."""
    from .synth import write_model

    path = write_model(out_dir, seed=seed, size=size, layout=layout)
    click.echo(str(path))


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE_OR_VIDEO...",
                type=click.Path(dir_okay=True, path_type=Path))
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), help="A local model directory.")
@click.option("--model", "repo_id", help="A Hugging Face repo id, e.g. LiquidAI/LFM2.5-VL-1.6B-ONNX.")
@click.option("--revision", help="Hub revision (branch, tag or commit) with --model.")
@click.option("--preset", default=None, metavar="VISION/DECODER",
              help="Which precisions to run, as build's --preset (e.g. q4/q4); default: the model's first variants "
                   "(a built site's model folder: its default preset).")
@click.option("--prompt", default=None, show_default=DEFAULT_PROMPT, help="The instruction sent with each image.")
@click.option("--prompt-file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
              help="Read the prompt from a UTF-8 file ('-' = standard input) instead of --prompt.")
@click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=_SAMPLING.max_new_tokens, show_default=True,
              help="Most tokens per caption (prompt + these must fit the model's context).")
@click.option("--temperature", type=click.FloatRange(0.0), default=_SAMPLING.temperature, show_default=True,
              help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(0), default=_SAMPLING.top_k, show_default=True,
              help="Sample from the k most likely tokens only (0 = no limit; needs --temperature > 0).")
@click.option("--min-p", type=click.FloatRange(0.0, 1.0), default=_SAMPLING.min_p, show_default=True,
              help="Drop tokens less likely than this fraction of the most likely one (0 = off).")
@click.option("--repetition-penalty", type=click.FloatRange(0.0, min_open=True), default=_SAMPLING.repetition_penalty,
              show_default=True, help="Above 1 makes tokens already in the prompt or caption less likely (1 = off).")
@click.option("--seed", type=int, default=_SAMPLING.seed, show_default=True, help="Sampling seed.")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels than this (a guard against decompression bombs).")
@click.option("--every", type=click.FloatRange(0.0, min_open=True), default=1.0, show_default=True,
              help="Seconds between the frames taken from a video input (needs PyAV: pip install av).")
@click.option("--speculative/--no-speculative", default=True, show_default=True,
              help="Greedy: draft each caption from the previous one and verify drafts in one decoder run "
                   "(same tokens, fewer runs).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per frame (JSON lines): text, token ids, decoder runs, drafts, timings.")
@_verbosity
@_clean_errors
def caption(inputs: tuple[Path, ...], model_dir: Path | None, repo_id: str | None, revision: str | None,
            as_json: bool, **gen: Any) -> None:
    """Caption images (and video frames) in order as one stream, natively on onnxruntime (the page's runtime).

    An IMAGE may be '-' (standard input) or a pipe."""
    from .caption import caption_files

    caption_files(list(inputs), model_dir=model_dir, repo_id=repo_id, revision=revision, as_json=as_json, **gen)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("dist"), show_default=True,
              help="Where to write the site (replaced only when the build succeeds).")
@click.option("--pyodide-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A local copy of the Pyodide 0.27.7 release files (or set LFMVL_PYODIDE_DIR); "
                   "default: the official CDN, then PyPI/npm.")
@model_options
@_verbosity
@_clean_errors
def build(out: Path, pyodide_dir: Path | None, model_options: Any) -> None:
    """Build the static captioning site: page, worker, Pyodide, onnxruntime-web, runtime wheel and model."""
    from .site.build import build_site, serve_hint

    build_site(out, model_options, pyodide_dir=pyodide_dir)
    click.echo(serve_hint(out))


@main.command()
@click.argument("directory", required=False, default="dist", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 for every network interface.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser.")
@_verbosity
@_clean_errors
def serve(directory: Path, host: str, port: int, open_browser: bool) -> None:
    """Preview a built site (DIRECTORY, default: dist) with the headers it needs (COOP/COEP/CORP, MIME, Range)."""
    from .serve import serve as run_server

    run_server(directory, host=host, port=port, open_browser=open_browser)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("benchmarks/results"),
              show_default=True, help="Where to write cpu-<time>.json and .md.")
@click.option("--only", multiple=True, type=click.Choice(["preprocess", "loop", "graphopt", "start"]),
              help="Run only these sections (repeatable); default: all.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the built sites here and reuse them (default: a temporary directory).")
@click.option("--quick", is_flag=True, help="Fewer repetitions (a smoke run).")
@_verbosity
@_clean_errors
def bench(out: Path, only: tuple[str, ...], work_dir: Path | None, quick: bool) -> None:
    """Side-by-side CPU benchmarks in one run (Pyodide vs CPython, Python vs JS loop, graph optimizations, start).

    Runs from a source checkout: the benchmark code and its page live in benchmarks/, outside the installed package.
    """
    from .benchmarks import load_cpu_bench

    cpu_bench = load_cpu_bench()
    cpu_bench.run(out, only=only or cpu_bench.SECTIONS, work_dir=work_dir, quick=quick)


if __name__ == "__main__":  # pragma: no cover
    main()
