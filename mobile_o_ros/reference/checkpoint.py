"""Checkpoint layout and loading: the released Mobile-O key layout ↔ our modules, strict and explained.

The released checkpoint is one HF folder: ``config.json``, ``model.safetensors`` (or shards plus
``model.safetensors.index.json``) and the Qwen2 tokenizer files. Keys, by prefix:

=========================================== ============================================
checkpoint prefix                            our module
=========================================== ============================================
``model.embed_tokens``, ``model.layers``,   ``llm`` (Qwen2ForCausalLM, same names)
``model.norm``, ``lm_head`` (optional, tied)
``model.vision_tower.vision_tower.model.``  ``vision`` (Apple FastViTHD names → timm, :mod:`.vision`)
``model.mm_projector.``                     ``mm_projector``
``model.diffusion_connector.``              ``mcp`` (``fusion.*``)
``model.dit.``                              ``dit`` (diffusers SANA names)
``model.vae.``                              ``vae`` (diffusers AutoencoderDC names)
=========================================== ============================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mobile_o_ros.checkpoint_files import (  # noqa: F401  (re-exported: callers import them here)
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    checkpoint_sha256,
    weight_files,
)
from mobile_o_ros.model_config import (
    MobileOConfig,
    check_vision_tower_name,
    checkpoint_config_json,
    config_from_checkpoint_json,
)
from mobile_o_ros.reference.model import COMPONENTS, MobileO, vision_config
from mobile_o_ros.reference.vision import (
    APPLE_KEY_PREFIX,
    convert_apple_state_dict,
    reparameterize,
    timm_to_apple_key,
)

#: (checkpoint prefix, component, prefix inside the component); first match wins, so order matters.
PREFIXES: tuple[tuple[str, str, str], ...] = (
    (APPLE_KEY_PREFIX, "vision", ""),
    ("model.mm_projector.", "mm_projector", ""),
    ("model.diffusion_connector.", "mcp", ""),
    ("model.dit.", "dit", ""),
    ("model.vae.", "vae", ""),
    ("model.", "llm", "model."),
    ("lm_head.", "llm", "lm_head."),
)

#: Keys a checkpoint may leave out: the tied LM head (``save_pretrained`` does not write tied weights).
OPTIONAL_KEYS = frozenset({"lm_head.weight"})


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, as stored."""
    tensors: dict[str, torch.Tensor] = {}
    for f in weight_files(path):
        try:
            tensors.update(load_file(str(f)))
        except Exception as err:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"cannot read {f.name}: {err}") from err
    return tensors


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key → shape from the safetensors headers, without reading tensor data."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as handle:
            for k in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                shapes[k] = tuple(handle.get_slice(k).get_shape())
    return shapes


def stored_dtype(path: Path, key: str) -> str | None:
    """The dtype a checkpoint stores ``key`` in (safetensors' name, e.g. ``BF16``, ``F32``), or None."""
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as handle:
            if key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                return str(handle.get_slice(key).get_dtype())
    return None


def split_checkpoint(sd: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Checkpoint keys → per-component local keys (vision keys keep Apple names). Returns (parts, unknown)."""
    parts: dict[str, dict[str, Any]] = {c: {} for c in COMPONENTS}
    unknown: list[str] = []
    for key, value in sd.items():
        for prefix, comp, local_prefix in PREFIXES:
            if key.startswith(prefix):
                parts[comp][local_prefix + key[len(prefix) :]] = value
                break
        else:
            unknown.append(key)
    return parts, unknown


def to_checkpoint_state_dict(model: MobileO, include_lm_head: bool = False) -> dict[str, torch.Tensor]:
    """Our model's weights in the released key layout (Apple names for the vision tower).

    The tied ``lm_head.weight`` is left out unless asked for, as ``save_pretrained`` does with tied weights.
    """
    out: dict[str, torch.Tensor] = {}
    vcfg = vision_config(model.config)
    for comp in COMPONENTS:
        for key, value in model.component(comp).state_dict().items():
            if comp == "llm":
                if key == "lm_head.weight" and not include_lm_head:
                    continue
                out[key] = value
            elif comp == "vision":
                out[APPLE_KEY_PREFIX + timm_to_apple_key(key, vcfg)] = value
            else:
                prefix = next(p for p, c, _ in PREFIXES if c == comp)
                out[prefix + key] = value
    return {k: v.contiguous() for k, v in out.items()}


def save_checkpoint(model: MobileO, out_dir: Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` in the released layout."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = to_checkpoint_state_dict(model)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_file(sd, str(out_dir / SINGLE_FILE), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(checkpoint_config_json(model.config), indent=2) + "\n")
    return out_dir


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … (+{len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass
class KeyReport:
    """The outcome of matching a checkpoint's keys against the model's."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        """True when the checkpoint fits exactly."""
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self) -> str:
        """One readable line per problem kind."""
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} missing key(s): {_describe(self.missing)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected key(s): {_describe(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in self.mismatched]
            lines.append(f"{len(self.mismatched)} mis-shaped key(s): {_describe(shown)}")
        return "; ".join(lines)


def compare_keys(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> KeyReport:
    """Missing (expected, not optional, absent), unexpected and mis-shaped keys, in checkpoint names."""
    missing = sorted(k for k in expected if k not in found and k not in OPTIONAL_KEYS)
    unexpected = sorted(k for k in found if k not in expected)
    mismatched = sorted(
        (k, tuple(found[k]), tuple(expected[k]))
        for k in found
        if k in expected and tuple(found[k]) != tuple(expected[k])
    )
    return KeyReport(missing, unexpected, mismatched)


def build_model(
    cfg: MobileOConfig, vision_inference_mode: bool = True, device: str | torch.device = "cpu"
) -> MobileO:
    """Instantiate the model (``device='meta'`` for shapes only)."""
    with torch.device(device):
        return MobileO(cfg, vision_inference_mode=vision_inference_mode)


def _expected_shapes(model: MobileO) -> dict[str, tuple[int, ...]]:
    sd = to_checkpoint_state_dict(model, include_lm_head=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


def _vision_form(vision_sd: dict[str, torch.Tensor], cfg: MobileOConfig) -> bool:
    """True for inference (re-parameterised) form; False for the train-time form with unfolded branches."""
    try:
        _, inference_form = convert_apple_state_dict(vision_sd, vision_config(cfg))
    except (KeyError, ValueError):
        return True  # compare_keys will name the offending keys
    return inference_form


@dataclass
class LoadedCheckpoint:
    """A loaded reference model with its tokenizer and provenance."""

    model: MobileO
    tokenizer: Any
    config: MobileOConfig
    path: Path


def read_config_json(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json, with a clear error when absent or corrupt."""
    if not Path(path).is_dir():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    f = Path(path) / "config.json"
    if not f.is_file():
        raise CheckpointError(f"no config.json in {path}")
    try:
        return json.loads(f.read_text())
    except ValueError as err:
        raise CheckpointError(f"corrupt config.json in {path}: {err}") from err


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's slow Qwen2 tokenizer, as the reference loads it (``use_fast=False``)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), use_fast=False)
    except Exception as err:  # transformers raises OSError/ValueError/TypeError depending on what is missing
        raise CheckpointError(f"cannot load the tokenizer from {path}: {err}") from err


def load_checkpoint(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    strict: bool = True,
    load_tokenizer_files: bool = True,
) -> LoadedCheckpoint:
    """Load a Mobile-O checkpoint folder into the reference model, strictly.

    Raises :class:`CheckpointError` naming missing, unexpected and mis-shaped keys. Only the tied
    ``lm_head.weight`` may be absent; when present it must equal the embedding (tied). With ``strict=False``
    unexpected keys are ignored (missing or mis-shaped ones still fail).
    """
    path = Path(path)
    cj = read_config_json(path)
    tensors = read_tensors(path)
    if "model.embed_tokens.weight" not in tensors:
        raise CheckpointError("1 missing key(s): model.embed_tokens.weight")
    vocab_rows = int(tensors["model.embed_tokens.weight"].shape[0])
    try:
        cfg = config_from_checkpoint_json(cj, vocab_rows=vocab_rows)
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"config.json does not describe a Mobile-O model: {err}") from err
    try:
        check_vision_tower_name(cj, cfg)
    except ValueError as err:
        raise CheckpointError(f"config.json in {path}: {err}") from err
    parts, _ = split_checkpoint(tensors)
    inference_form = _vision_form(parts["vision"], cfg)

    expected = _expected_shapes(build_model(cfg, inference_form, device="meta"))
    report = compare_keys({k: tuple(v.shape) for k, v in tensors.items()}, expected)
    if not strict:
        report.unexpected = []
    if not report.ok:
        raise CheckpointError(f"checkpoint {path} does not match the model: {report.message()}")

    model = build_model(cfg, inference_form)
    for comp in COMPONENTS:
        local = parts[comp]
        if comp == "vision":
            local, _ = convert_apple_state_dict(local, vision_config(cfg))
        module = model.component(comp)
        if comp == "llm" and "lm_head.weight" in local:
            if not torch.equal(local["lm_head.weight"], local["model.embed_tokens.weight"]):
                raise CheckpointError(
                    "lm_head.weight differs from model.embed_tokens.weight but the LLM is tied"
                )
            local = {k: v for k, v in local.items() if k != "lm_head.weight"}
        result = module.load_state_dict(local, strict=False)
        missing = [k for k in result.missing_keys if not (comp == "llm" and k == "lm_head.weight")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{comp}: missing {missing}, unexpected {result.unexpected_keys}")
    if not inference_form:
        reparameterize(model.vision)
    model = model.to(dtype).eval()
    tokenizer = load_tokenizer(path) if load_tokenizer_files else None
    if tokenizer is not None and len(tokenizer) > vocab_rows:
        raise CheckpointError(
            f"tokenizer has {len(tokenizer)} tokens but the embedding only {vocab_rows} rows"
        )
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, config=cfg, path=path)
