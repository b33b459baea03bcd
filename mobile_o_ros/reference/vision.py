"""Mobile-O vision encoder: FastViTHD (Apple MobileCLIP "MCi") built from timm's ``FastVit``.

Mobile-O stores the tower under :data:`APPLE_KEY_PREFIX` with Apple's ml-fastvlm module names
(``patch_embed.*``, ``network.{n}.*``, ``conv_exp.*``, ``head.proj``). We run timm's ``FastVit`` with the
``fastvit_mci3`` settings instead, so this module provides the tower, the config and a bijective
key map between the two namings, for both the inference form (re-parameterised ``reparam_conv``
layers) and the training form (unfolded MobileOne / RepMixer / RepCPE branches).

Features are the output of the final MobileOne conv (Apple ``conv_exp``, timm ``final_conv``):
``[B, cls_ratio * embed_dims[-1], H / 64, W / 64]``, returned flattened as ``[B, N, C]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm2d
from timm.models.fastvit import Attention, FastVit, RepConditionalPosEnc
from timm.utils.model import reparameterize_model
from torch import nn

APPLE_KEY_PREFIX = "model.vision_tower.vision_tower.model."
"""Prefix of the vision tower's keys in the Mobile-O checkpoint (Apple naming follows it)."""

_TOKEN_MIXERS = ("repmixer", "attention")
_POS_EMBS = (None, "rcpe")


@dataclass(frozen=True)
class VisionConfig:
    """Shape of a FastViT-MCi tower. Every stage after the first downsamples by 2 (total stride 64).

    Attributes:
        layers: blocks per stage.
        embed_dims: channel width per stage.
        mlp_ratios: ConvFFN expansion per stage.
        token_mixers: ``"repmixer"`` or ``"attention"`` per stage.
        pos_embs: ``None`` or ``"rcpe"`` (7x7 depthwise RepCPE before the stage's blocks) per stage.
        cls_ratio: final conv width = ``cls_ratio * embed_dims[-1]`` (the feature width).
        image_size: square input resolution.
        head_dim: attention head width (fixed at 32 in both Apple's and timm's code).
        head_proj_dim: output width of Apple's unused CLIP projection ``head.proj``.
    """

    layers: tuple[int, ...]
    embed_dims: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    token_mixers: tuple[str, ...]
    pos_embs: tuple[str | None, ...]
    cls_ratio: float = 2.0
    image_size: int = 1024
    head_dim: int = 32
    head_proj_dim: int = 768

    def __post_init__(self) -> None:
        n = len(self.layers)
        per_stage = (self.embed_dims, self.mlp_ratios, self.token_mixers, self.pos_embs)
        if any(len(v) != n for v in per_stage):
            raise ValueError(f"per-stage fields must all have {n} entries: {self}")
        if any(m not in _TOKEN_MIXERS for m in self.token_mixers):
            raise ValueError(f"token_mixers must be in {_TOKEN_MIXERS}: {self.token_mixers}")
        if any(p not in _POS_EMBS for p in self.pos_embs):
            raise ValueError(f"pos_embs must be in {_POS_EMBS}: {self.pos_embs}")
        if self.head_dim != 32:
            raise ValueError("head_dim is fixed at 32 by the FastViT attention implementation")
        for dim, mixer in zip(self.embed_dims, self.token_mixers, strict=True):
            if mixer == "attention" and dim % self.head_dim:
                raise ValueError(f"attention stage width {dim} is not a multiple of {self.head_dim}")
        if self.feature_dim % 16:
            raise ValueError("feature width must be a multiple of 16 (SE reduction 1/16 must be exact)")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size must be a multiple of {self.patch_size}")

    @property
    def feature_dim(self) -> int:
        """Width of the output features (final conv channels)."""
        return int(self.embed_dims[-1] * self.cls_ratio)

    @property
    def patch_size(self) -> int:
        """Total stride: 4 in the stem, then 2 per later stage."""
        return 4 * 2 ** (len(self.layers) - 1)

    @property
    def num_tokens(self) -> int:
        """Tokens per image at ``image_size``."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (lists instead of tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VisionConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


FASTVITHD = VisionConfig(
    layers=(2, 12, 24, 4, 2),
    embed_dims=(96, 192, 384, 768, 1536),
    mlp_ratios=(4.0,) * 5,
    token_mixers=("repmixer",) * 3 + ("attention",) * 2,
    pos_embs=(None, None, None, "rcpe", "rcpe"),
)
"""The real tower (timm ``fastvit_mci3`` = Apple ``fastvithd``): 256 tokens x 3072 at 1024 px."""

TINY_VISION = VisionConfig(
    layers=(1, 1, 1, 1, 1),
    embed_dims=(8, 16, 32, 64, 64),
    mlp_ratios=(4.0,) * 5,
    token_mixers=("repmixer",) * 3 + ("attention",) * 2,
    pos_embs=(None, None, None, "rcpe", "rcpe"),
    head_proj_dim=32,
)
"""Same structure at toy width for tests: 256 tokens x 128 at 1024 px."""


class VisionTower(nn.Module):
    """timm ``FastVit`` trunk (classifier head removed) plus Apple's unused ``head.proj`` parameter.

    ``forward(images [B, 3, H, W]) -> [B, (H/64) * (W/64), feature_dim]``: the final conv's output,
    identical to ``trunk.forward_features`` flattened. Inputs are RGB in [0, 1] (Mobile-O uses
    mean 0 / std 1, i.e. no normalisation).
    """

    def __init__(self, cfg: VisionConfig, inference_mode: bool = True, fused_attn: bool = False) -> None:
        super().__init__()
        n = len(cfg.layers)
        self.cfg = cfg
        self.trunk = FastVit(
            layers=cfg.layers,
            token_mixers=cfg.token_mixers,
            embed_dims=cfg.embed_dims,
            mlp_ratios=cfg.mlp_ratios,
            downsamples=(False,) + (True,) * (n - 1),
            se_downsamples=(False,) * n,
            pos_embs=tuple(
                partial(RepConditionalPosEnc, spatial_shape=(7, 7)) if p else None for p in cfg.pos_embs
            ),
            lkc_use_act=True,
            norm_layer=partial(LayerNorm2d, eps=1e-5),
            stem_use_scale_branch=False,
            cls_ratio=cfg.cls_ratio,
            num_classes=0,
            inference_mode=inference_mode,
        )
        # Apple's explicit-softmax attention is bit-identical to timm's unfused path.
        for m in self.trunk.modules():
            if isinstance(m, Attention):
                m.fused_attn = fused_attn
        # MCi's CLIP projection (GlobalPool2D): never used for Mobile-O features, kept for strict loading.
        self.head_proj = nn.Parameter(torch.empty(cfg.feature_dim, cfg.head_proj_dim), requires_grad=False)
        nn.init.normal_(self.head_proj, std=cfg.feature_dim**-0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, 3, H, W]`` to visual tokens ``[B, N, C]``."""
        return self.trunk.forward_features(images).flatten(2).transpose(1, 2)


def build_vision_tower(
    cfg: VisionConfig, inference_mode: bool = True, fused_attn: bool = False
) -> VisionTower:
    """Build a :class:`VisionTower` (on the current default device; use ``torch.device("meta")`` for shapes).

    ``inference_mode=False`` builds the unfolded training form (to load training-form checkpoints,
    then :func:`reparameterize`). ``fused_attn=True`` switches attention to SDPA (not bit-identical).
    """
    return VisionTower(cfg, inference_mode=inference_mode, fused_attn=fused_attn)


def reparameterize(module: nn.Module) -> nn.Module:
    """Fold all MobileOne / RepMixer / RepCPE / large-kernel branches in place; returns ``module``.

    Fold in float32 and cast afterwards: BatchNorm folding in bf16/fp16 loses precision.
    """
    return reparameterize_model(module, inplace=True)


# ---------------------------------------------------------------------------------------------------
# Apple <-> timm key map.
#
# A key is split into a location (where the module sits in the network) and a local path inside the
# module. Locations: Apple ``patch_embed.{i}`` / ``conv_exp`` / ``network.{n}`` <-> our ``trunk.stem.{i}``
# / ``trunk.final_conv`` / ``trunk.stages.{s}.{blocks.{j}|downsample|pos_emb}``; Apple's flat ``network``
# list interleaves [pos_emb], blocks, downsample per stage (see ``_network_layout``). Local paths are
# translated by the grammar below: each rule maps a dotted prefix to a dotted prefix and names the
# grammar for the remainder (``None``: copied verbatim; ``""``: the key must end there). The same
# rules are read in both directions, so the two functions are inverses of each other.
# ---------------------------------------------------------------------------------------------------

_Rule = tuple[str, str, str | None]
_GRAMMAR: dict[str, tuple[_Rule, ...]] = {
    "mobileone": (  # MobileOneBlock
        ("reparam_conv", "reparam_conv", None),
        ("rbr_conv", "conv_kxk", None),
        ("rbr_scale", "conv_scale", None),
        ("rbr_skip", "identity", None),
        ("se.reduce", "se.fc1", None),
        ("se.expand", "se.fc2", None),
    ),
    "large_kernel": (  # ReparamLargeKernelConv (its optional SE is timm's SqueezeExcite on both sides)
        ("lkb_reparam", "reparam_conv", None),
        ("lkb_origin", "large_conv", None),
        ("small_conv", "small_conv", None),
        ("se", "se", None),
    ),
    "downsample": (  # PatchEmbed
        ("proj.0", "proj.0", "large_kernel"),
        ("proj.1", "proj.1", "mobileone"),
    ),
    "pos_emb": (  # RepCPE
        ("reparam_conv", "reparam_conv", None),
        ("pe", "pos_enc", None),
    ),
    "block": (  # RepMixerBlock / AttentionBlock
        ("token_mixer.reparam_conv", "token_mixer.reparam_conv", None),
        ("token_mixer.mixer", "token_mixer.mixer", "mobileone"),
        ("token_mixer.norm", "token_mixer.norm", "mobileone"),
        ("token_mixer.layer_scale", "token_mixer.layer_scale.gamma", ""),
        ("token_mixer.qkv", "token_mixer.qkv", None),
        ("token_mixer.proj", "token_mixer.proj", None),
        ("norm", "norm", None),
        ("convffn", "mlp", None),
        ("layer_scale", "layer_scale.gamma", ""),
        ("layer_scale_1", "layer_scale_1.gamma", ""),
        ("layer_scale_2", "layer_scale_2.gamma", ""),
    ),
}

_TRAIN_ONLY = frozenset({"rbr_conv", "rbr_scale", "rbr_skip", "lkb_origin", "small_conv", "pe"})
_INFERENCE_ONLY = frozenset({"reparam_conv", "lkb_reparam"})


def _translate(parts: list[str], grammar: str, to_timm: bool, key: str) -> list[str]:
    """Translate a local dotted path with ``_GRAMMAR[grammar]`` (longest matching prefix wins)."""
    best: tuple[list[str], list[str], str | None] | None = None
    for apple, timm, sub in _GRAMMAR[grammar]:
        src, dst = (apple, timm) if to_timm else (timm, apple)
        src_parts = src.split(".")
        if parts[: len(src_parts)] == src_parts and (best is None or len(src_parts) > len(best[0])):
            best = (src_parts, dst.split("."), sub)
    if best is None:
        raise KeyError(f"unrecognised {grammar} parameter in {key!r}")
    src_parts, dst_parts, sub = best
    rest = parts[len(src_parts) :]
    if sub == "":
        if rest:
            raise KeyError(f"unexpected suffix in {key!r}")
        return dst_parts
    if not rest:
        raise KeyError(f"incomplete key {key!r}")
    return dst_parts + (rest if sub is None else _translate(rest, sub, to_timm, key))


def _network_layout(cfg: VisionConfig) -> list[tuple[str, int]]:
    """Apple's flat ``network`` list as ``(role, stage)``: per stage [pos_emb], blocks, next downsample."""
    layout: list[tuple[str, int]] = []
    for s, pos in enumerate(cfg.pos_embs):
        if pos is not None:
            layout.append(("pos_emb", s))
        layout.append(("blocks", s))
        if s < len(cfg.layers) - 1:
            layout.append(("downsample", s + 1))
    return layout


def _is_index(s: str) -> bool:
    return s.isdigit() and str(int(s)) == s


def apple_to_timm_key(key: str, cfg: VisionConfig = FASTVITHD) -> str:
    """Map an Apple FastViT/MCi key (no checkpoint prefix) to the :class:`VisionTower` key.

    Only ``cfg``'s stage count and ``pos_embs`` matter (they fix Apple's ``network`` indices).
    Raises ``KeyError`` for keys outside the FastViT-MCi layout.
    """
    parts = key.split(".")
    if key == "head.proj":
        return "head_proj"
    if parts[0] == "patch_embed" and len(parts) > 2 and _is_index(parts[1]):
        return ".".join(["trunk", "stem", parts[1], *_translate(parts[2:], "mobileone", True, key)])
    if parts[0] == "conv_exp" and len(parts) > 1:
        return ".".join(["trunk", "final_conv", *_translate(parts[1:], "mobileone", True, key)])
    layout = _network_layout(cfg)
    if parts[0] == "network" and len(parts) > 2 and _is_index(parts[1]) and int(parts[1]) < len(layout):
        role, s = layout[int(parts[1])]
        if role != "blocks":
            return ".".join(["trunk", "stages", str(s), role, *_translate(parts[2:], role, True, key)])
        if len(parts) > 3 and _is_index(parts[2]):
            return ".".join(
                ["trunk", "stages", str(s), "blocks", parts[2], *_translate(parts[3:], "block", True, key)]
            )
    raise KeyError(f"not a FastViT-MCi key: {key!r}")


def timm_to_apple_key(key: str, cfg: VisionConfig = FASTVITHD) -> str:
    """Inverse of :func:`apple_to_timm_key`: map a :class:`VisionTower` key to Apple's naming."""
    parts = key.split(".")
    if key == "head_proj":
        return "head.proj"
    if parts[0] == "trunk":
        parts = parts[1:]
        if parts[:1] == ["stem"] and len(parts) > 2 and _is_index(parts[1]):
            return ".".join(["patch_embed", parts[1], *_translate(parts[2:], "mobileone", False, key)])
        if parts[:1] == ["final_conv"] and len(parts) > 1:
            return ".".join(["conv_exp", *_translate(parts[1:], "mobileone", False, key)])
        if parts[:1] == ["stages"] and len(parts) > 3 and _is_index(parts[1]):
            index = {loc: n for n, loc in enumerate(_network_layout(cfg))}
            n = index.get((parts[2], int(parts[1])))
            if n is not None and parts[2] != "blocks":
                return ".".join(["network", str(n), *_translate(parts[3:], parts[2], False, key)])
            if n is not None and len(parts) > 4 and _is_index(parts[3]):
                return ".".join(["network", str(n), parts[3], *_translate(parts[4:], "block", False, key)])
    raise KeyError(f"not a VisionTower key: {key!r}")


class StateDictMismatchError(KeyError):
    """A checkpoint's keys do not map one-to-one onto the tower's state dict."""

    def __str__(self) -> str:
        return str(self.args[0])


def _format_keys(title: str, keys: list[str], limit: int = 20) -> str:
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}):\n  " + "\n  ".join(keys[:limit]) + more


def convert_apple_state_dict(
    sd: dict[str, torch.Tensor], cfg: VisionConfig
) -> tuple[dict[str, torch.Tensor], bool]:
    """Rename an Apple-named tower state dict (prefix already stripped) to :class:`VisionTower` keys.

    Returns ``(state_dict, is_inference_form)``. For the training form (unfolded branches), build
    the tower with ``inference_mode=False``, load, then :func:`reparameterize`. Missing BatchNorm
    ``num_batches_tracked`` counters are filled with 0 (they do not affect eval numerics).

    Raises:
        StateDictMismatchError (a ``KeyError``): keys that do not map, or tower keys left unfilled.
        ValueError: a mix of folded and unfolded modules, or mismatched shapes.
    """
    segments = {s for k in sd for s in k.split(".")}
    if segments & _TRAIN_ONLY and segments & _INFERENCE_ONLY:
        raise ValueError("checkpoint mixes re-parameterised and unfolded modules; cannot pick a tower form")
    inference_form = not segments & _TRAIN_ONLY
    with torch.device("meta"):
        expected = {k: v.shape for k, v in build_vision_tower(cfg, inference_form).state_dict().items()}

    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in sd.items():
        try:
            new = apple_to_timm_key(key, cfg)
        except KeyError:
            new = None
        if new is None or new not in expected:
            unmapped.append(key)
        else:
            out[new] = value
    for key in expected.keys() - out.keys():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(expected.keys() - out.keys())
    if unmapped or missing:
        form = "inference" if inference_form else "training"
        parts = [_format_keys("unmapped checkpoint keys", sorted(unmapped))] if unmapped else []
        parts += [_format_keys("tower keys not filled", missing)] if missing else []
        raise StateDictMismatchError(f"FastViT-MCi ({form} form) key mismatch:\n" + "\n".join(parts))
    bad = [
        f"{timm_to_apple_key(k, cfg)}: {tuple(v.shape)} != {tuple(expected[k])}"
        for k, v in out.items()
        if v.shape != expected[k]
    ]
    if bad:
        raise ValueError(_format_keys("shape mismatches (checkpoint != tower)", bad))
    return out, inference_form


def load_vision_tower(
    sd: dict[str, torch.Tensor], cfg: VisionConfig, fused_attn: bool = False
) -> VisionTower:
    """Build a tower from an Apple-named state dict in either form; returns it folded, in eval mode, fp32."""
    converted, inference_form = convert_apple_state_dict(sd, cfg)
    tower = build_vision_tower(cfg, inference_mode=inference_form, fused_attn=fused_attn)
    tower.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in converted.items()})
    if not inference_form:
        reparameterize(tower)
    return tower.eval()
