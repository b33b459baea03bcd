"""Tiny checkpoints in the exact released key layout, for tests and the demo fallback.

Narrow and shallow widths, but the real resolutions and token counts: 1024×1024 in, 256 image tokens,
32×16×16 latents, 512×512 out. Weights are seeded and scaled so every part produces non-trivial outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tokenizers import Tokenizer

from mobile_o_ros import prompts
from mobile_o_ros.model_config import MobileOConfig, preset
from mobile_o_ros.reference.checkpoint import build_model, save_checkpoint
from mobile_o_ros.reference.model import MobileO
from mobile_o_ros.reference.tiny_tokenizer import build_tiny_tokenizer


def randomize_(model: MobileO, seed: int) -> None:
    """Re-draw every floating parameter: fan-in scaled normals, norm weights near 1; deterministic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("layer_weights"):
                value = torch.linspace(0.8, 1.2, p.numel()) + 0.1 * noise
            elif p.ndim <= 1 and ("norm" in name or leaf == "weight"):
                value = 1.0 + 0.1 * noise if leaf == "weight" else 0.05 * noise
            elif p.ndim <= 1:
                value = 0.05 * noise
            elif "scale_shift_table" in name:
                value = 0.2 * noise
            else:
                fan_in = max(1, p[0].numel())
                value = noise / math.sqrt(fan_in)
            p.copy_(value.to(p.dtype))


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Mobile-O checkpoint folder: config.json, model.safetensors and tokenizer files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_tiny_tokenizer(out_dir, seed=seed)
    cfg: MobileOConfig = preset("tiny", vocab_size=vocab)
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    cfg.llm["bos_token_id"] = tok.token_to_id(prompts.ENDOFTEXT)
    cfg.llm["eos_token_id"] = tok.token_to_id(prompts.IM_END)
    torch.manual_seed(seed)
    model = build_model(cfg)
    randomize_(model, seed)
    save_checkpoint(model, out_dir)
    gen_cfg = {"eos_token_id": cfg.llm["eos_token_id"], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    return out_dir
