"""A checkpoint's files and digest without torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mobile_o_ros.checkpoint_files import CheckpointError, checkpoint_sha256, weight_files

pytestmark = pytest.mark.runtime


def test_digest_covers_the_config_and_every_shard_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "b.safetensors").write_bytes(b"second")
    (tmp_path / "a.safetensors").write_bytes(b"first")
    index = {"weight_map": {"x": "b.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert weight_files(tmp_path) == [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    assert checkpoint_sha256(tmp_path) == hashlib.sha256(b'{"a": 1}firstsecond').hexdigest()
    (tmp_path / "model.safetensors").write_bytes(b"single")  # a single file wins over an index
    assert checkpoint_sha256(tmp_path) == hashlib.sha256(b'{"a": 1}single').hexdigest()


def test_missing_and_corrupt_checkpoints_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        weight_files(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        weight_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"x": "gone.safetensors"}}')
    with pytest.raises(CheckpointError, match=r"missing: gone\.safetensors"):
        weight_files(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        weight_files(tmp_path)
