"""The Mobile-O reference model, assembled from well-kept libraries.

- LLM: transformers ``Qwen2ForCausalLM`` (tied embeddings);
- vision: timm ``fastvit_mci3`` (FastViTHD) in re-parameterised form, see :mod:`.vision`;
- mm projector: Linear → GELU(erf) → Linear;
- MCP: our :class:`~.mcp.MobileConditioningProjector`;
- DiT: diffusers ``SanaTransformer2DModel``; VAE: diffusers ``AutoencoderDC``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from mobile_o_ros.model_config import MobileOConfig
from mobile_o_ros.reference.mcp import MobileConditioningProjector
from mobile_o_ros.reference.vision import FASTVITHD, TINY_VISION, VisionConfig, build_vision_tower

#: Component names, in the order reports list them.
COMPONENTS = ("vision", "mm_projector", "llm", "mcp", "dit", "vae")


def vision_config(cfg: MobileOConfig) -> VisionConfig:
    """The vision tower's config: a named preset or an explicit dict."""
    v = cfg.vision
    if "preset" in v:
        presets = {"fastvithd": FASTVITHD, "tiny": TINY_VISION}
        if v["preset"] not in presets:
            raise ValueError(f"unknown vision preset {v['preset']!r}")
        return presets[v["preset"]]
    return VisionConfig.from_dict(v)


def qwen2_config(cfg: MobileOConfig, attn_implementation: str = "sdpa") -> Qwen2Config:
    """transformers' Qwen2Config for the LLM part."""
    kwargs = {k: v for k, v in cfg.llm.items() if k != "model_type"}
    qc = Qwen2Config(**kwargs)
    qc._attn_implementation = attn_implementation
    return qc


class MobileO(nn.Module):
    """All Mobile-O parts in one module; the checkpoint's key layout is mapped by :mod:`.checkpoint`."""

    def __init__(
        self, cfg: MobileOConfig, vision_inference_mode: bool = True, attn_implementation: str = "sdpa"
    ):
        super().__init__()
        self.config = cfg
        self.llm = Qwen2ForCausalLM(qwen2_config(cfg, attn_implementation))
        self.vision = build_vision_tower(vision_config(cfg), inference_mode=vision_inference_mode)
        hidden = cfg.hidden_size
        self.mm_projector = nn.Sequential(
            nn.Linear(cfg.mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.mcp = MobileConditioningProjector(cfg.mcp)
        self.dit = SanaTransformer2DModel(**cfg.dit)
        self.vae = AutoencoderDC(**cfg.vae)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] → embeddings [B, L, D]."""
        return self.llm.get_input_embeddings()(ids)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, 1024, 1024] in [0, 1] → projected image tokens [B, 256, D]."""
        feats = self.vision(images.to(next(self.vision.parameters()).dtype))
        proj_dtype = self.mm_projector[0].weight.dtype
        return self.mm_projector(feats.to(proj_dtype))

    def mcp_inputs(self, inputs_embeds: torch.Tensor) -> list[torch.Tensor]:
        """One causal prefill → hidden_states[-num_layers:] (raw layers, the last one final-normed)."""
        out = self.llm.model(inputs_embeds=inputs_embeds, output_hidden_states=True, use_cache=False)
        return list(out.hidden_states[-self.mcp.num_layers :])

    def component(self, name: str) -> nn.Module:
        """A part by name (see :data:`COMPONENTS`)."""
        if name not in COMPONENTS:
            raise KeyError(name)
        return getattr(self, name)


def count_parameters(module: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
