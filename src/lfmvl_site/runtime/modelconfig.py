"""The model's JSON configs, parsed once and checked against what the runtime needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import ContractError


def parse_json(text: str, filename: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(
            f"{filename} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            "the model download may be truncated: delete it and fetch it again."
        ) from None
    if not isinstance(data, dict):
        raise ContractError(f"{filename} must hold a JSON object.")
    return data


@dataclass(frozen=True)
class TextModelConfig:
    """What the generation loop reads from config.json and generation_config.json."""

    hidden_size: int
    vocab_size: int
    image_token_id: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    context: int | None = None  # max_position_embeddings: prompt + new tokens must fit

    @classmethod
    def from_texts(cls, config_json: str, generation_config_json: str | None) -> TextModelConfig:
        cfg = parse_json(config_json, "config.json")
        text = cfg.get("text_config", cfg)
        gen = parse_json(generation_config_json, "generation_config.json") if generation_config_json else {}
        try:
            hidden = int(text["hidden_size"])
            vocab = int(text["vocab_size"])
        except (KeyError, TypeError, ValueError):
            raise ContractError(
                "config.json lacks text_config.hidden_size / vocab_size; is this an LFM2-VL model directory?"
            ) from None
        image_token_id = int(cfg.get("image_token_id", 396))
        eos = gen.get("eos_token_id", text.get("eos_token_id", 7))
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
        if not eos_ids:
            raise ContractError("generation_config.json names no eos_token_id; generation could never stop.")
        bos = gen.get("bos_token_id", text.get("bos_token_id"))
        context = text.get("max_position_embeddings")
        return cls(hidden, vocab, image_token_id, eos_ids, None if bos is None else int(bos),
                   context=int(context) if isinstance(context, int) and context > 0 else None)
