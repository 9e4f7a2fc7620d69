"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic model directory (published LFM2.5-VL-1.6B-ONNX layout), built once per session, seed 0.

    Treat it as read-only: it is shared by every test in the session.
    """
    from lfmvl_site.synth import write_model

    return write_model(tmp_path_factory.mktemp("synth") / "tiny", seed=0, size="tiny")
