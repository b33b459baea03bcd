"""Mobile-O model configuration: which sizes each part has, built from presets or a checkpoint's config.json.

Pure Python (no torch): the runtime reads the same presets. The reference builds modules from it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

#: The block our tiny checkpoints add to config.json to describe non-standard part sizes.
EXTENSION_KEY = "mobile_o_ros"

#: The released vision tower's name without its size; the full name ends in the input size in pixels.
VISION_TOWER_PREFIX = "mobileclip_l_"


def load_json_config(name: str) -> dict[str, Any]:
    """Read an embedded JSON config from ``mobile_o_ros/configs`` (no network, no hub)."""
    text = resources.files("mobile_o_ros.configs").joinpath(name).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_source")}


@dataclass
class MCPConfig:
    """Mobile Conditioning Projector sizes (the released 0.5B model's by default)."""

    input_dim: int = 896
    hidden_dim: int = 512
    output_dim: int = 2304
    num_layers: int = 4
    num_refinement_blocks: int = 2


@dataclass
class Defaults:
    """Pipeline defaults of the released Python code: 20 steps, CFG 1.5, 256 new tokens, greedy."""

    steps: int = 20
    guidance_scale: float = 1.5
    max_new_tokens: int = 256
    temperature: float = 0.0


@dataclass
class MobileOConfig:
    """Everything needed to build Mobile-O's parts: LLM, vision tower, projector, MCP, DiT, VAE, scheduler."""

    name: str
    llm: dict[str, Any]
    vision: dict[str, Any]
    mm_hidden_size: int
    mcp: MCPConfig
    dit: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    image_size: int = 1024
    num_image_tokens: int = 256
    defaults: Defaults = field(default_factory=Defaults)

    @property
    def hidden_size(self) -> int:
        """Width of the LLM residual stream."""
        return int(self.llm["hidden_size"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Latent (C, H, W) the DiT denoises."""
        s = int(self.dit["sample_size"])
        return (int(self.dit["in_channels"]), s, s)

    @property
    def output_size(self) -> int:
        """Decoded image side: latent side × the VAE's spatial compression (2 per stage after the first)."""
        stages = len(self.vae["decoder_block_out_channels"])
        return self.latent_shape[1] * 2 ** (stages - 1)

    @property
    def vae_scaling_factor(self) -> float:
        """Latents are divided by this before decoding (divide only, no shift)."""
        return float(self.vae["scaling_factor"])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MobileOConfig:
        """Inverse of :meth:`to_dict`."""
        d = copy.deepcopy(d)
        d["mcp"] = MCPConfig(**d["mcp"])
        d["defaults"] = Defaults(**d.get("defaults", {}))
        return cls(**d)


def _tiny_llm(vocab_size: int) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "vocab_size": vocab_size,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
    }


def _tiny_dit() -> dict[str, Any]:
    return {
        "attention_bias": False,
        "attention_head_dim": 16,
        "caption_channels": 64,
        "cross_attention_dim": 32,
        "cross_attention_head_dim": 16,
        "dropout": 0.0,
        "in_channels": 32,
        "interpolation_scale": None,
        "mlp_ratio": 2.5,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "num_attention_heads": 2,
        "num_cross_attention_heads": 2,
        "num_layers": 2,
        "out_channels": 32,
        "patch_size": 1,
        "sample_size": 16,
    }


def _tiny_vae() -> dict[str, Any]:
    vae = load_json_config("dc_ae_f32c32_sana_1_0.json")
    vae.pop("_class_name", None)
    vae.update(
        attention_head_dim=8,
        decoder_block_out_channels=[8, 8, 16, 16, 32, 32],
        encoder_block_out_channels=[8, 8, 16, 16, 32, 32],
        decoder_layers_per_block=[1, 1, 1, 1, 1, 1],
        encoder_layers_per_block=[1, 1, 1, 1, 1, 1],
    )
    return vae


def _shapes_llm(vocab_size: int) -> dict[str, Any]:
    llm = _tiny_llm(vocab_size)
    llm.update(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,  # no GQA at this width: measured to learn VQA faster
        intermediate_size=384,
    )
    return llm


def _shapes_vision() -> dict[str, Any]:
    # Four stages (stride 32) at 256 px: an 8×8 grid of 64 image tokens, 32 px of input per token.
    return {
        "layers": [1, 1, 1, 1],
        "embed_dims": [16, 32, 64, 128],
        "mlp_ratios": [3.0, 3.0, 3.0, 3.0],
        "token_mixers": ["repmixer", "repmixer", "attention", "attention"],
        "pos_embs": [None, None, "rcpe", "rcpe"],
        "cls_ratio": 2.0,
        "image_size": 256,
        "head_dim": 32,
        "head_proj_dim": 32,
    }


def _shapes_dit() -> dict[str, Any]:
    dit = _tiny_dit()
    dit.update(
        attention_head_dim=32,
        num_attention_heads=4,
        cross_attention_head_dim=32,
        num_cross_attention_heads=4,
        cross_attention_dim=128,
        caption_channels=256,
        num_layers=6,
        interpolation_scale=1.0,  # 2D sin-cos positions (a buffer, no weights)
        patch_size=2,  # 8×8 tokens over the 16×16 latent: a quarter of the DiT's cost per step
    )
    return dit


def _shapes_vae() -> dict[str, Any]:
    # Four stages (f8): 128 px ↔ 32×16×16 latents.
    vae = _tiny_vae()
    vae.update(
        attention_head_dim=8,
        decoder_block_out_channels=[8, 16, 32, 64],
        encoder_block_out_channels=[8, 16, 32, 64],
        decoder_layers_per_block=[0, 1, 1, 1],
        encoder_layers_per_block=[0, 1, 1, 1],
        decoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
        encoder_block_types=["ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock"],
        decoder_qkv_multiscales=[[], [], [], [5]],
        encoder_qkv_multiscales=[[], [], [], [5]],
    )
    return vae


def _scheduler() -> dict[str, Any]:
    return load_json_config("scheduler_config.json")


def _dit(name: str) -> dict[str, Any]:
    d = load_json_config(name)
    d.pop("_class_name", None)
    return d


def _vae() -> dict[str, Any]:
    d = load_json_config("dc_ae_f32c32_sana_1_0.json")
    d.pop("_class_name", None)
    return d


def _real_0_5b(vocab_size: int | None) -> MobileOConfig:
    """The released Mobile-O 0.5B: Qwen2-0.5B, FastViTHD, SANA 600M at 512 px, DC-AE f32c32."""
    return MobileOConfig(
        name="real-0.5b",
        llm=load_json_config("qwen2_0_5b.json"),
        vision={"preset": "fastvithd"},
        mm_hidden_size=3072,
        mcp=MCPConfig(input_dim=896),
        dit=_dit("sana_600m_512px_transformer.json"),
        vae=_vae(),
        scheduler=_scheduler(),
    )


def _real_1_5b(vocab_size: int | None) -> MobileOConfig:
    """The released Mobile-O 1.5B: Qwen2-1.5B, FastViTHD, SANA 1600M at 512 px, DC-AE f32c32."""
    return MobileOConfig(
        name="real-1.5b",
        llm=load_json_config("qwen2_1_5b.json"),
        vision={"preset": "fastvithd"},
        mm_hidden_size=3072,
        mcp=MCPConfig(input_dim=1536),
        dit=_dit("sana_1600m_512px_transformer.json"),
        vae=_vae(),
        scheduler=_scheduler(),
    )


def _tiny(vocab_size: int | None) -> MobileOConfig:
    """Narrow and shallow parts at the released resolutions (1024 px in, 256 tokens, 512 px out): tests."""
    return MobileOConfig(
        name="tiny",
        llm=_tiny_llm(vocab_size or 1024),
        vision={"preset": "tiny"},
        mm_hidden_size=128,
        mcp=MCPConfig(input_dim=64, hidden_dim=64, output_dim=64),
        dit=_tiny_dit(),
        vae=_tiny_vae(),
        scheduler=_scheduler(),
        defaults=Defaults(max_new_tokens=16),
    )


def _shapes(vocab_size: int | None) -> MobileOConfig:
    """The embedded demo model (:mod:`mobile_o_ros.shapes`): the real module types, narrow and shallow
    enough to train on a CPU, at reduced resolutions (256 px in → 64 image tokens through a four-stage
    FastViT; 32×16×16 latents → 128 px out through a four-stage f8 DC-AE); its VAE ``scaling_factor`` is
    re-measured by training."""
    return MobileOConfig(
        name="shapes",
        llm=_shapes_llm(vocab_size or 1024),
        vision=_shapes_vision(),
        mm_hidden_size=256,
        mcp=MCPConfig(input_dim=128, hidden_dim=128, output_dim=256),
        dit=_shapes_dit(),
        vae=_shapes_vae(),
        scheduler=_scheduler(),
        image_size=256,
        num_image_tokens=64,
        defaults=Defaults(max_new_tokens=8),
    )


#: Named configurations (``--config``): name → factory of a config, given the LLM's vocabulary size or None
#: for the preset's own.
PRESETS: dict[str, Callable[[int | None], MobileOConfig]] = {
    "real-0.5b": _real_0_5b,
    "real-1.5b": _real_1_5b,
    "tiny": _tiny,
    "shapes": _shapes,
}


def preset(name: str, vocab_size: int | None = None) -> MobileOConfig:
    """Build a named configuration (:data:`PRESETS`).

    ``vocab_size`` overrides the LLM's row count (the checkpoint's embedding rows are authoritative).
    """
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(PRESETS)}") from None
    cfg = factory(vocab_size)
    if vocab_size is not None:
        cfg.llm["vocab_size"] = int(vocab_size)
    return cfg


_QWEN2_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "hidden_act",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "vocab_size",
    "bos_token_id",
    "eos_token_id",
    "use_sliding_window",
    "attention_dropout",
    "initializer_range",
)


def config_from_checkpoint_json(cj: dict[str, Any], vocab_rows: int | None = None) -> MobileOConfig:
    """Build a :class:`MobileOConfig` from a Mobile-O checkpoint's ``config.json``.

    The LLM fields come from the file; DiT, VAE and vision sizes come from the embedded SANA/DC-AE/FastViTHD
    configs chosen by ``diffusion_name_or_path`` and ``mm_vision_tower``, unless the file carries our
    ``mobile_o_ros`` block (tiny checkpoints) that spells them out. ``vocab_rows`` (the embedding's row
    count in the weights) overrides ``vocab_size``. ``vlm_num_layers`` defaults to 4 when absent [inferred].
    """
    ext = cj.get(EXTENSION_KEY)
    if ext:
        cfg = MobileOConfig.from_dict(ext)
        for k in _QWEN2_FIELDS:
            if k in cj:
                cfg.llm[k] = cj[k]
    else:
        hidden = int(cj["hidden_size"])
        diffusion = str(cj.get("diffusion_name_or_path", "Sana_600M_512px"))
        dit_file = (
            "sana_1600m_512px_transformer.json"
            if "1600M" in diffusion
            else "sana_600m_512px_transformer.json"
        )
        tower = str(cj.get("mm_vision_tower", vision_tower_name(1024)))
        if VISION_TOWER_PREFIX.rstrip("_") not in tower:
            raise ValueError(f"unsupported vision tower {tower!r} (expected mobileclip_l_1024 / FastViTHD)")
        llm = {k: cj[k] for k in _QWEN2_FIELDS if k in cj}
        llm["model_type"] = "qwen2"
        cfg = MobileOConfig(
            name=str(cj.get("_name_or_path", "checkpoint")) or "checkpoint",
            llm=llm,
            vision={"preset": "fastvithd"},
            mm_hidden_size=int(cj.get("mm_hidden_size", 3072)),
            mcp=MCPConfig(input_dim=hidden, num_layers=int(cj.get("vlm_num_layers", 4))),
            dit=_dit(dit_file),
            vae=_vae(),
            scheduler=_scheduler(),
        )
    if vocab_rows is not None:
        cfg.llm["vocab_size"] = int(vocab_rows)
    return cfg


def vision_tower_name(image_size: int) -> str:
    """The ``mm_vision_tower`` name of a tower taking ``image_size`` px: ``mobileclip_l_<image_size>``."""
    return f"{VISION_TOWER_PREFIX}{int(image_size)}"


def check_vision_tower_name(cj: dict[str, Any], cfg: MobileOConfig) -> None:
    """Raise ``ValueError`` when ``config.json``'s ``mm_vision_tower`` does not end in the vision input size.

    The released loader reads the input size from the name's end (``int(name.split("_")[-1])``), so a name
    that disagrees with ``image_size`` makes it resize images to the wrong size. A config without the key
    passes.
    """
    name = cj.get("mm_vision_tower")
    if name is None:
        return
    sizes = {"image_size": int(cfg.image_size)}
    if "image_size" in cfg.vision:
        sizes["vision image_size"] = int(cfg.vision["image_size"])
    suffix = str(name).rsplit("_", 1)[-1]
    expected = vision_tower_name(cfg.image_size)
    if not suffix.isdigit():
        raise ValueError(
            f"mm_vision_tower {name!r} does not end in its input size (the released loader reads it from "
            f"there); image_size is {cfg.image_size}: name it {expected!r}"
        )
    wrong = {k: v for k, v in sizes.items() if v != int(suffix)}
    if wrong:
        said = ", ".join(f"{k} is {v}" for k, v in wrong.items())
        raise ValueError(
            f"mm_vision_tower {name!r} says {int(suffix)} px but {said}: name it {expected!r} (the released "
            f"loader reads the input size from the name's end)"
        )


def checkpoint_config_json(cfg: MobileOConfig) -> dict[str, Any]:
    """The ``config.json`` we write for a checkpoint of ``cfg``, in the released layout plus our block."""
    out: dict[str, Any] = {
        "architectures": ["mobileoForInferenceLM"],
        "model_type": "mobileo_inference",
        **{k: v for k, v in cfg.llm.items() if k != "model_type"},
        "mm_vision_tower": vision_tower_name(cfg.image_size),
        "mm_hidden_size": cfg.mm_hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "flat",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "image_aspect_ratio": "pad",
        "unfreeze_mm_vision_tower": True,
        "tokenizer_model_max_length": 2048,
        "tokenizer_padding_side": "right",
        "diffusion_name_or_path": "Efficient-Large-Model/Sana_600M_512px_diffusers",
        "vlm_num_layers": cfg.mcp.num_layers,
        "is_train": False,
        "use_mm_proj": True,
    }
    if cfg.name not in ("real-0.5b", "real-1.5b"):
        out[EXTENSION_KEY] = cfg.to_dict()
    if cfg.name == "real-1.5b":
        out["diffusion_name_or_path"] = "Efficient-Large-Model/Sana_1600M_512px_diffusers"
    return out
