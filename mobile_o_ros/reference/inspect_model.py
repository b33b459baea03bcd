"""``mobile-o inspect``: parameter and key counts per part, built on the meta device (no weights)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from mobile_o_ros.model_config import MobileOConfig, preset
from mobile_o_ros.reference.checkpoint import (
    build_model,
    read_config_json,
    read_shapes,
    split_checkpoint,
    to_checkpoint_state_dict,
)
from mobile_o_ros.reference.model import COMPONENTS, count_parameters


def scheduler_timesteps(cfg: MobileOConfig, steps: int) -> list[int]:
    """The DiT timesteps diffusers' DPMSolverMultistepScheduler uses for ``steps`` steps."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler.from_config(cfg.scheduler)
    sched.set_timesteps(steps)
    return [int(t) for t in sched.timesteps]


def inspect_config(cfg: MobileOConfig, steps: int = 20) -> dict[str, Any]:
    """Counts for a configuration, from a model built on the meta device."""
    model = build_model(cfg, device="meta")
    ckpt = to_checkpoint_state_dict(model)
    parts, _ = split_checkpoint(ckpt)
    components: dict[str, Any] = {}
    for name in COMPONENTS:
        module = model.component(name)
        entry: dict[str, Any] = {
            "parameters": count_parameters(module),
            "checkpoint_keys": len(parts[name]),
            "dtypes": sorted({str(p.dtype).replace("torch.", "") for p in module.parameters()}),
        }
        if name == "vae":
            entry["encoder_parameters"] = count_parameters(module.encoder)
            entry["decoder_parameters"] = count_parameters(module.decoder)
        if name == "llm":
            entry["tied_embeddings"] = bool(cfg.llm.get("tie_word_embeddings", True))
            entry["vocab_size"] = int(cfg.llm["vocab_size"])
        components[name] = entry
    return {
        "config": cfg.name,
        "components": components,
        "total_parameters": sum(c["parameters"] for c in components.values()),
        "checkpoint_keys": len(ckpt),
        "scheduler": {"steps": steps, "timesteps": scheduler_timesteps(cfg, steps)},
        "image_size": cfg.image_size,
        "num_image_tokens": cfg.num_image_tokens,
        "latent_shape": list(cfg.latent_shape),
        "output_size": cfg.output_size,
    }


def inspect_checkpoint(path: Path, steps: int = 20) -> dict[str, Any]:
    """Counts read from a checkpoint folder's safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    from mobile_o_ros.model_config import config_from_checkpoint_json
    from mobile_o_ros.reference.checkpoint import weight_files

    shapes = read_shapes(path)
    dtypes: dict[str, str] = {}
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as handle:
            for k in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                dtypes[k] = str(handle.get_slice(k).get_dtype())
    rows = shapes.get("model.embed_tokens.weight", (None,))[0]
    cfg = config_from_checkpoint_json(read_config_json(path), vocab_rows=rows)
    parts, unknown = split_checkpoint(shapes)
    components = {}
    for name in COMPONENTS:
        keys = parts[name]
        n = 0
        for k, shape in keys.items():
            if name == "llm" and k == "lm_head.weight" and cfg.llm.get("tie_word_embeddings", True):
                continue
            size = 1
            for d in shape:
                size *= int(d)
            n += size
        prefix_dtypes = Counter(dtypes[k2] for k2 in shapes if _component_of(k2) == name)
        components[name] = {"parameters": n, "checkpoint_keys": len(keys), "dtypes": dict(prefix_dtypes)}
    return {
        "checkpoint": str(path),
        "config": cfg.name,
        "components": components,
        "total_parameters": sum(c["parameters"] for c in components.values()),
        "checkpoint_keys": len(shapes),
        "unknown_keys": unknown,
        "scheduler": {"steps": steps, "timesteps": scheduler_timesteps(cfg, steps)},
    }


def _component_of(key: str) -> str | None:
    parts, _ = split_checkpoint({key: None})
    return next((c for c, d in parts.items() if d), None)


def inspect_target(model: str | Path | None, config: str | None, steps: int) -> dict[str, Any]:
    """Dispatch for the CLI: a preset name or a checkpoint folder."""
    if config:
        return inspect_config(preset(config), steps)
    return inspect_checkpoint(Path(model), steps)
