"""Helpers shared by the shapes training tests (test_shapes_train_*.py); not collected as tests."""

from __future__ import annotations

from pathlib import Path

import torch

from mobile_o_ros.model_config import preset
from mobile_o_ros.reference.checkpoint import build_model
from mobile_o_ros.reference.model import MobileO
from mobile_o_ros.reference.tiny_tokenizer import build_tiny_tokenizer
from mobile_o_ros.shapes.train.data import TOKENIZER_VOCAB, PromptTokens


def untrained_shapes_model(tmp_path: Path) -> tuple[PromptTokens, MobileO]:
    """A shapes tokenizer in ``tmp_path`` and the untrained ``shapes`` model (seed 0, eval mode)."""
    vocab = build_tiny_tokenizer(tmp_path, vocab_size=TOKENIZER_VOCAB)
    tok = PromptTokens(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    return tok, build_model(preset("shapes", vocab_size=vocab)).eval()
