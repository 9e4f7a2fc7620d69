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


@pytest.fixture(scope="session")
def hf_tiny_model(tiny_model_dir: Path):  # -> transformers.Lfm2VlForConditionalGeneration
    """transformers' own LFM2-VL model holding the tiny model's weights: the independent reference."""
    import json

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from lfmvl_site.synth import make_weights

    config = transformers.Lfm2VlConfig.from_pretrained(tiny_model_dir)
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = "eager"
    model = transformers.Lfm2VlForConditionalGeneration(config).to(torch.float32).eval()
    weights = make_weights(json.loads((tiny_model_dir / "config.json").read_text()), seed=0)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    # lm_head is tied to the embedding, so the only key the weight dict leaves out is lm_head.weight.
    assert list(missing) == ["lm_head.weight"] and list(unexpected) == []
    return model


@pytest.fixture(scope="session")
def hf_tiny_processor(tiny_model_dir: Path):  # -> transformers.Lfm2VlProcessor
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torchvision")
    return transformers.AutoProcessor.from_pretrained(tiny_model_dir)
