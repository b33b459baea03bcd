"""Tests for the FastViTHD vision tower and the Apple <-> timm checkpoint key map (CPU, seconds)."""

import json
from pathlib import Path

import pytest
import timm
import torch

from mobile_o_ros.reference.vision import (
    APPLE_KEY_PREFIX,
    FASTVITHD,
    TINY_VISION,
    StateDictMismatchError,
    VisionConfig,
    VisionTower,
    apple_to_timm_key,
    build_vision_tower,
    convert_apple_state_dict,
    load_vision_tower,
    reparameterize,
    timm_to_apple_key,
)

FIXTURE = Path(__file__).resolve().parents[1] / "mobile_o_ros" / "configs" / "fastvithd_apple_keys.json"
FORMS = {"inference": True, "train": False}


@pytest.fixture(scope="module")
def apple_keys() -> dict:
    return json.loads(FIXTURE.read_text())


def _meta_shapes(cfg: VisionConfig, inference_mode: bool) -> dict[str, list[int]]:
    with torch.device("meta"):
        tower = build_vision_tower(cfg, inference_mode)
    return {k: list(v.shape) for k, v in tower.state_dict().items()}


def _randomize_(module: torch.nn.Module, seed: int) -> None:
    """Give every tensor (BN statistics and layer scales included) non-trivial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(r.abs() + 0.5)
            elif "layer_scale" in name:
                t.copy_(0.1 + 0.05 * r)
            elif t.dim() > 1:
                t.copy_(r / t[0].numel() ** 0.5)
            else:
                t.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * r)


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(seed))


def _to_apple(tower: VisionTower, cfg: VisionConfig) -> dict[str, torch.Tensor]:
    return {timm_to_apple_key(k, cfg): v.clone() for k, v in tower.state_dict().items()}


@pytest.mark.parametrize("form", FORMS)
def test_map_is_bijection_onto_real_tower(apple_keys: dict, form: str) -> None:
    apple = apple_keys[form]
    mapped = {apple_to_timm_key(k): shape for k, shape in apple.items()}
    assert len(mapped) == len(apple)  # injective
    assert mapped == _meta_shapes(FASTVITHD, FORMS[form])  # onto, with equal shapes


@pytest.mark.parametrize("form", FORMS)
def test_key_round_trip(apple_keys: dict, form: str) -> None:
    for key in apple_keys[form]:
        assert timm_to_apple_key(apple_to_timm_key(key)) == key
    for key in _meta_shapes(FASTVITHD, FORMS[form]):
        assert apple_to_timm_key(timm_to_apple_key(key)) == key


@pytest.mark.parametrize("form", FORMS)
def test_convert_real_layout(apple_keys: dict, form: str) -> None:
    sd = {k: torch.empty(shape, device="meta") for k, shape in apple_keys[form].items()}
    converted, inference_form = convert_apple_state_dict(sd, FASTVITHD)
    assert inference_form == FORMS[form]
    assert {k: list(v.shape) for k, v in converted.items()} == _meta_shapes(FASTVITHD, FORMS[form])


def test_fixture_metadata(apple_keys: dict) -> None:
    assert apple_keys["prefix"] == APPLE_KEY_PREFIX
    assert apple_keys["inference"]["conv_exp.reparam_conv.weight"] == [3072, 1, 3, 3]
    assert apple_keys["inference"]["head.proj"] == [3072, 768]


@pytest.mark.parametrize("form", FORMS)
def test_fastvithd_is_timm_fastvit_mci3(form: str) -> None:
    with torch.device("meta"):
        ref = timm.create_model("fastvit_mci3", num_classes=0, inference_mode=FORMS[form])
    ours = _meta_shapes(FASTVITHD, FORMS[form])
    ours.pop("head_proj")
    assert ours == {f"trunk.{k}": list(v.shape) for k, v in ref.state_dict().items()}


def test_parameter_counts() -> None:
    with torch.device("meta"):
        folded = build_vision_tower(FASTVITHD)
        unfolded = build_vision_tower(FASTVITHD, inference_mode=False)
    count = sum(p.numel() for p in folded.parameters())
    assert count == 125_073_504  # incl. Apple's head.proj (3072 x 768 = 2,359,296)
    assert sum(p.numel() for p in folded.trunk.parameters()) == 122_714_208
    # timm's 125,235,648 for fastvit_mci3 is the unfolded form with a 3072 -> 768 fc (+768 bias).
    assert sum(p.numel() for p in unfolded.parameters()) == 125_235_648 - 768


def test_config_presets() -> None:
    for cfg in (FASTVITHD, TINY_VISION):
        assert VisionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert cfg.num_tokens == 256 and cfg.patch_size == 64
    assert FASTVITHD.feature_dim == 3072 and TINY_VISION.feature_dim == 128
    with pytest.raises(ValueError):
        VisionConfig(
            layers=(1,), embed_dims=(48,), mlp_ratios=(4.0,), token_mixers=("attention",), pos_embs=(None,)
        )


@pytest.mark.slow
def test_tiny_apple_round_trip_bit_exact() -> None:
    src = build_vision_tower(TINY_VISION).eval()
    _randomize_(src, 0)
    sd, inference_form = convert_apple_state_dict(_to_apple(src, TINY_VISION), TINY_VISION)
    assert inference_form
    dst = build_vision_tower(TINY_VISION).eval()
    dst.load_state_dict(sd)
    x = _image()
    with torch.no_grad():
        ref, out = src(x), dst(x)
        features = src.trunk.forward_features(x)
    assert out.shape == (1, 256, 128)
    assert torch.equal(out, ref)
    assert torch.equal(ref, features.flatten(2).transpose(1, 2))


@pytest.mark.slow
def test_tiny_train_form_reparameterizes() -> None:
    src = build_vision_tower(TINY_VISION, inference_mode=False).eval()
    _randomize_(src, 1)
    x = _image(1)
    with torch.no_grad():
        ref = src(x)
    sd, inference_form = convert_apple_state_dict(_to_apple(src, TINY_VISION), TINY_VISION)
    assert not inference_form
    tower = build_vision_tower(TINY_VISION, inference_mode=False).eval()
    tower.load_state_dict(sd)
    reparameterize(tower)
    assert set(tower.state_dict()) == set(_meta_shapes(TINY_VISION, True))
    with torch.no_grad():
        out = tower(x)
        out_loaded = load_vision_tower(_to_apple(src, TINY_VISION), TINY_VISION)(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out_loaded, out)


def test_unmapped_keys_are_named() -> None:
    tower = build_vision_tower(TINY_VISION)
    sd = _to_apple(tower, TINY_VISION)
    sd["network.0.0.junk.weight"] = torch.zeros(1)
    sd["visual_proj"] = torch.zeros(1)
    del sd["conv_exp.se.reduce.weight"]
    with pytest.raises(KeyError) as err:
        convert_apple_state_dict(sd, TINY_VISION)
    assert isinstance(err.value, StateDictMismatchError)
    msg = str(err.value)
    assert "network.0.0.junk.weight" in msg and "visual_proj" in msg
    assert "trunk.final_conv.se.fc1.weight" in msg


def test_other_checkpoint_problems() -> None:
    tower = build_vision_tower(TINY_VISION)
    sd = _to_apple(tower, TINY_VISION)
    trackers = [k for k in sd if k.endswith("num_batches_tracked")]
    converted, _ = convert_apple_state_dict({k: v for k, v in sd.items() if k not in trackers}, TINY_VISION)
    assert len(converted) == len(sd)  # missing BN counters are filled
    with pytest.raises(ValueError, match="shape"):
        convert_apple_state_dict({**sd, "head.proj": torch.zeros(128, 7)}, TINY_VISION)
    with pytest.raises(ValueError, match="mixes"):
        convert_apple_state_dict({**sd, "network.6.pe.weight": torch.zeros(64, 1, 7, 7)}, TINY_VISION)
    with pytest.raises(KeyError):
        apple_to_timm_key("network.99.0.norm.weight")
    with pytest.raises(KeyError):
        timm_to_apple_key("trunk.stages.0.downsample.proj.0.reparam_conv.weight")
