"""Random-weight parts of Mobile-O at any configuration, built one at a time (for benchmarks and parity).

Building only the parts a graph needs keeps real-size runs within a workstation's memory.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from transformers import Qwen2ForCausalLM

from mobile_o_ros.model_config import preset
from mobile_o_ros.reference.mcp import MobileConditioningProjector
from mobile_o_ros.reference.model import qwen2_config, vision_config
from mobile_o_ros.reference.vision import build_vision_tower

#: Which parts each exported graph uses.
PARTS_OF_GRAPH = {
    "vision": ("vision", "mm_projector"),
    "llm": ("llm",),
    "mcp": ("mcp",),
    "dit": ("dit",),
    "vae_decoder": ("vae",),
}


def build_parts(config: str, graphs: list[str] | tuple[str, ...], seed: int = 0) -> SimpleNamespace:
    """A namespace with ``config`` and the parts ``graphs`` need, randomly initialised (seeded), in eval mode.

    It stands in for :class:`~mobile_o_ros.reference.model.MobileO` wherever only those parts are used.
    """
    torch.manual_seed(seed)
    cfg = preset(config)
    needed = {p for g in graphs for p in PARTS_OF_GRAPH[g]}
    ns = SimpleNamespace(config=cfg)
    if "vision" in needed:
        ns.vision = build_vision_tower(vision_config(cfg))
        ns.mm_projector = torch.nn.Sequential(
            torch.nn.Linear(cfg.mm_hidden_size, cfg.hidden_size),
            torch.nn.GELU(),
            torch.nn.Linear(cfg.hidden_size, cfg.hidden_size),
        )
    if "mcp" in needed:
        ns.mcp = MobileConditioningProjector(cfg.mcp)
    if "llm" in needed:
        ns.llm = Qwen2ForCausalLM(qwen2_config(cfg))
    if "dit" in needed:
        ns.dit = SanaTransformer2DModel(**cfg.dit)
    if "vae" in needed:
        ns.vae = AutoencoderDC(**cfg.vae)
    for name in ("vision", "mm_projector", "mcp", "llm", "dit", "vae"):
        if hasattr(ns, name):
            getattr(ns, name).eval()
    return ns
