"""Checkpoint loading: round trip of the released layout, strictness, and errors that name keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mobile_o_ros.model_config import checkpoint_config_json, preset
from mobile_o_ros.reference.checkpoint import (
    CheckpointError,
    load_checkpoint,
    split_checkpoint,
    to_checkpoint_state_dict,
)
from mobile_o_ros.reference.vision import APPLE_KEY_PREFIX
from mobile_o_ros.shapes import embedded_model_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_round_trip_is_exact(tiny_checkpoint: Path, tiny_loaded) -> None:
    stored = load_file(str(tiny_checkpoint / "model.safetensors"))
    again = to_checkpoint_state_dict(tiny_loaded.model)
    assert set(again) == set(stored)
    for key, value in stored.items():
        assert torch.equal(again[key], value), key


def test_layout_has_every_released_prefix(tiny_checkpoint: Path) -> None:
    keys = load_file(str(tiny_checkpoint / "model.safetensors")).keys()
    parts, unknown = split_checkpoint(dict.fromkeys(keys))
    assert unknown == []
    assert all(parts[c] for c in parts)
    assert any(k.startswith(APPLE_KEY_PREFIX + "network.") for k in keys)
    assert "model.diffusion_connector.fusion.temperature" in keys
    assert "model.dit.caption_norm.weight" in keys and "model.vae.decoder.conv_out.weight" in keys
    assert "lm_head.weight" not in keys  # tied, left out like save_pretrained does


def test_tied_lm_head_may_be_present(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    sd = load_file(str(ckpt / "model.safetensors"))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    save_file(sd, str(ckpt / "model.safetensors"))
    loaded = load_checkpoint(ckpt, load_tokenizer_files=False)
    assert torch.equal(loaded.model.llm.lm_head.weight, sd["model.embed_tokens.weight"])


def test_sharded_checkpoint_loads(tiny_checkpoint: Path, tiny_loaded, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    sd = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    keys = sorted(sd)
    half = len(keys) // 2
    weight_map = {}
    for i, chunk in enumerate((keys[:half], keys[half:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: sd[k] for k in chunk}, str(ckpt / name))
        weight_map.update(dict.fromkeys(chunk, name))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_checkpoint(ckpt, load_tokenizer_files=False)
    ref = tiny_loaded.model.state_dict()
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, ref[k]), k


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("drop", "1 missing key(s): model.dit.caption_norm.weight"),
        ("junk", "1 unexpected key(s): model.extra.junk"),
        ("reshape", "model.mm_projector.0.bias (checkpoint [7] vs model"),
        ("drop_vision", "missing key(s): " + APPLE_KEY_PREFIX + "conv_exp"),
    ],
)
def test_errors_name_the_offending_keys(
    tiny_checkpoint: Path, tmp_path: Path, edit: str, expected: str
) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    sd = load_file(str(ckpt / "model.safetensors"))
    if edit == "drop":
        del sd["model.dit.caption_norm.weight"]
    elif edit == "junk":
        sd["model.extra.junk"] = torch.zeros(3)
    elif edit == "reshape":
        sd["model.mm_projector.0.bias"] = torch.zeros(7)
    elif edit == "drop_vision":
        for k in [k for k in sd if k.startswith(APPLE_KEY_PREFIX + "conv_exp")]:
            del sd[k]
    save_file(sd, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, load_tokenizer_files=False)
    assert expected in str(err.value)


def test_non_strict_ignores_only_unexpected(tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    sd = load_file(str(ckpt / "model.safetensors"))
    sd["base_model.model.extra"] = torch.zeros(1)
    save_file(sd, str(ckpt / "model.safetensors"))
    load_checkpoint(ckpt, strict=False, load_tokenizer_files=False)


def test_missing_and_corrupt_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nope")
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"cannot read model\.safetensors"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"corrupt config\.json"):
        load_checkpoint(ckpt)


def test_dtype_is_selectable(tiny_checkpoint: Path) -> None:
    loaded = load_checkpoint(tiny_checkpoint, dtype=torch.bfloat16, load_tokenizer_files=False)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def _shipped() -> Path:
    path = embedded_model_dir()
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"the shipped shapes model is not present ({path})")
    return path


def _set_tower(ckpt: Path, name: str) -> None:
    cj = json.loads((ckpt / "config.json").read_text())
    cj["mm_vision_tower"] = name
    (ckpt / "config.json").write_text(json.dumps(cj))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "mobileclip_l_256",
            "'mobileclip_l_256' says 256 px but image_size is 1024: name it 'mobileclip_l_1024'",
        ),
        ("mobileclip_l", "'mobileclip_l' does not end in its input size"),
    ],
)
def test_vision_tower_name_must_end_in_the_input_size(
    tiny_checkpoint: Path, tmp_path: Path, name: str, expected: str
) -> None:
    ckpt = _copy(tiny_checkpoint, tmp_path / "ckpt")
    _set_tower(ckpt, name)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, load_tokenizer_files=False)
    assert expected in str(err.value)


def test_shapes_like_checkpoint_named_1024_is_rejected(tmp_path: Path) -> None:
    """The embedded model's layout (256 px in) under the 1024 px name: the error names both sizes."""
    ckpt = _copy(_shipped(), tmp_path / "shapes")
    _set_tower(ckpt, "mobileclip_l_1024")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, load_tokenizer_files=False)
    message = str(err.value)
    assert "'mobileclip_l_1024' says 1024 px" in message
    assert "image_size is 256" in message and "vision image_size is 256" in message
    assert "name it 'mobileclip_l_256'" in message


def test_shipped_model_names_its_256_px_tower_and_loads_strictly() -> None:
    cj = json.loads((_shipped() / "config.json").read_text())
    assert cj["mm_vision_tower"] == "mobileclip_l_256"
    loaded = load_checkpoint(_shipped(), strict=True)
    assert loaded.config.image_size == 256
    assert checkpoint_config_json(preset("shapes"))["mm_vision_tower"] == "mobileclip_l_256"
    assert checkpoint_config_json(preset("tiny"))["mm_vision_tower"] == "mobileclip_l_1024"
