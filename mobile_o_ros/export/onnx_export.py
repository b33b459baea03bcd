"""``mobile-o export``: the five parts (five graphs) as standard-op ONNX, plus the host tables and a manifest.

Exporter pinned: TorchScript path (``dynamo=False``), opset 17, constant folding; only default-domain ops
(no ONNX Runtime contrib ops), so TensorRT 10.3's parser takes every graph. Weights over 2 GB go to one
external-data file per graph. Each graph carries ONNX shape inference's value types (so tools that need
tensor types read them without running inference on the device), and the manifest records each graph's
weight bytes from its initializers: the memory budget per engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from mobile_o_ros import prompts, vocabulary
from mobile_o_ros.export import graphs
from mobile_o_ros.reference.checkpoint import LoadedCheckpoint, checkpoint_sha256, stored_dtype
from mobile_o_ros.reference.pipelines import answer_stop_id

OPSET = 17
MANIFEST_VERSION = 2
#: Above this many bytes of weights a graph is saved with external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: Default KV capacity the decode graph is exercised with; the axis is dynamic.
DEFAULT_KV_CAPACITY = 1024


@dataclass
class GraphSpec:
    """One graph: its wrapper, example inputs, names and dynamic axes."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]


def graph_specs(model, lm_head_chunks: int, names: list[str] | None = None) -> list[GraphSpec]:
    """The five graphs of Mobile-O with small example inputs (shapes only matter for tracing).

    ``model`` needs only the parts the requested ``names`` use (a MobileO, or a namespace of parts).
    """
    cfg = model.config
    d = cfg.hidden_size
    n_layers = int(cfg.llm["num_hidden_layers"])
    kv_heads = int(cfg.llm["num_key_value_heads"])
    head_dim = d // int(cfg.llm["num_attention_heads"])
    c, h, w = cfg.latent_shape
    t, cap, n = 4, 16, 12
    mask = torch.zeros(1, 1, t, cap)
    mask[..., t:] = graphs.MASK_VALUE
    builders = {
        "vision": lambda: GraphSpec(
            "vision",
            graphs.VisionGraph(model),
            {"images": torch.rand(1, 3, cfg.image_size, cfg.image_size)},
            ["image_embeds"],
            {"images": {0: "batch"}, "image_embeds": {0: "batch"}},
        ),
        "llm": lambda: GraphSpec(
            "llm",
            graphs.LlmGraph(model, lm_head_chunks),
            {
                "inputs_embeds": torch.randn(1, t, d),
                "position_ids": torch.arange(t)[None],
                "attention_mask": mask,
                "kv_cache": torch.zeros(n_layers, 2, 1, kv_heads, cap, head_dim),
            },
            ["logits", "kv_cache_out", "mcp_inputs"],
            {
                "inputs_embeds": {1: "seq"},
                "position_ids": {1: "seq"},
                "attention_mask": {2: "seq", 3: "cache_len"},
                "kv_cache": {4: "cache_len"},
                "kv_cache_out": {4: "cache_len"},
                "mcp_inputs": {2: "seq"},
            },
        ),
        "mcp": lambda: GraphSpec(
            "mcp",
            graphs.McpGraph(model),
            {"hidden_states": torch.randn(2, cfg.mcp.num_layers, n, d)},
            ["conditioning"],
            {"hidden_states": {0: "batch", 2: "seq"}, "conditioning": {0: "batch", 1: "seq"}},
        ),
        "dit": lambda: GraphSpec(
            "dit",
            graphs.DitGraph(model),
            {
                "latents": torch.randn(2, c, h, w),
                "timestep": torch.tensor([999.0, 999.0]),
                "encoder_hidden_states": torch.randn(2, n, cfg.mcp.output_dim),
                "encoder_attention_mask": torch.ones(2, n),
            },
            ["velocity"],
            {
                "latents": {0: "batch"},
                "timestep": {0: "batch"},
                "encoder_hidden_states": {0: "batch", 1: "text_len"},
                "encoder_attention_mask": {0: "batch", 1: "text_len"},
                "velocity": {0: "batch"},
            },
        ),
        "vae_decoder": lambda: GraphSpec(
            "vae_decoder", graphs.VaeDecoderGraph(model), {"latents": torch.randn(1, c, h, w)}, ["image"], {}
        ),
    }
    unknown = set(names or []) - set(builders)
    if unknown:
        raise ValueError(f"unknown graphs {sorted(unknown)}; choose from {list(builders)}")
    return [build() for name, build in builders.items() if names is None or name in names]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _param_bytes(module: nn.Module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def onnx_weight_bytes(model_proto: onnx.ModelProto) -> dict[str, int]:
    """Bytes of a graph's weights (initializers and Constant tensors), as stored and with fp32 as fp16.

    Read from the tensors' shapes and types, so a graph loaded without its external data counts the same.
    """
    stored = half = 0
    tensors = list(model_proto.graph.initializer) + [
        a.t
        for n in model_proto.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    for t in tensors:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
        stored += count * itemsize
        half += count * (2 if t.data_type == onnx.TensorProto.FLOAT else itemsize)
    return {"weights_bytes": stored, "weights_bytes_fp16": half}


def _io_description(model_proto: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    def describe(values) -> list[dict]:
        out = []
        for v in values:
            tt = v.type.tensor_type
            shape = [dim.dim_param if dim.dim_param else int(dim.dim_value) for dim in tt.shape.dim]
            out.append(
                {
                    "name": v.name,
                    "shape": shape,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
                }
            )
        return out

    return describe(model_proto.graph.input), describe(model_proto.graph.output)


def _check_standard_ops(model_proto: onnx.ModelProto, name: str) -> list[str]:
    ops = sorted({n.op_type for n in model_proto.graph.node})
    foreign = sorted(
        {f"{n.domain}::{n.op_type}" for n in model_proto.graph.node if n.domain not in ("", "ai.onnx")}
    )
    if foreign:
        raise RuntimeError(f"{name}: non-standard ops would not parse in TensorRT: {', '.join(foreign)}")
    return ops


@contextlib.contextmanager
def positive_movedim() -> Iterator[None]:
    """Trace ``Tensor.movedim`` as a ``permute`` with non-negative axes.

    The TorchScript exporter writes ``movedim(1, -1)`` (DC-AE's channel RMSNorm) as a Transpose whose perm
    holds −1, which ONNX rejects. The permutation is the same; only its spelling changes.
    """
    original = torch.Tensor.movedim

    def movedim(self: torch.Tensor, source: int, destination: int) -> torch.Tensor:
        if not isinstance(source, int) or not isinstance(destination, int):
            return original(self, source, destination)
        src, dst = source % self.ndim, destination % self.ndim
        perm = [d for d in range(self.ndim) if d != src]
        perm.insert(dst, src)
        return self.permute(perm)

    torch.Tensor.movedim = movedim
    try:
        yield
    finally:
        torch.Tensor.movedim = original


def _annotate_output_shapes(path: Path, spec: GraphSpec) -> None:
    """Write each output's static dims (from a traced run) and named dynamic axes into the graph.

    The TorchScript exporter leaves some outputs (e.g. the VAE's image) with unnamed symbolic dims; the
    manifest and TensorRT's shape checks want the real ones.
    """
    with torch.no_grad():
        outputs = spec.module(*spec.inputs.values())
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    proto = onnx.load(str(path), load_external_data=False)
    for value, tensor in zip(proto.graph.output, outputs, strict=False):
        axes = spec.dynamic_axes.get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        while len(dims) < tensor.ndim:
            dims.add()
        for i, size in enumerate(tensor.shape):
            if i in axes:
                dims[i].dim_param = axes[i]
            else:
                dims[i].dim_value = int(size)
    onnx.save_model(proto, str(path))


def export_graph(spec: GraphSpec, out_dir: Path, opset: int = OPSET) -> dict[str, Any]:
    """Trace one wrapper to ``<name>.onnx`` (external data when large) and describe it."""
    path = out_dir / f"{spec.name}.onnx"
    external = _param_bytes(spec.module) > EXTERNAL_DATA_THRESHOLD
    t0 = time.perf_counter()
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        positive_movedim(),
        warnings.catch_warnings(),
        tempfile.TemporaryDirectory(dir=out_dir) as tmp,
    ):
        warnings.simplefilter(
            "ignore"
        )  # TracerWarnings about shape-dependent Python branches, all static here
        target = Path(tmp) / path.name if external else path
        torch.onnx.export(
            spec.module.eval(),
            tuple(spec.inputs.values()),
            str(target),
            dynamo=False,
            opset_version=opset,
            input_names=list(spec.inputs),
            output_names=spec.outputs,
            dynamic_axes=spec.dynamic_axes or None,
            do_constant_folding=True,
        )
        if external:
            proto = onnx.load(str(target))
            onnx.save_model(
                proto,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=f"{path.name}.data",
                size_threshold=1024,
            )
    _annotate_output_shapes(path, spec)
    onnx.shape_inference.infer_shapes_path(str(path))  # value types into the file, external data untouched
    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path), load_external_data=False)
    inputs, outputs = _io_description(proto)
    files = [path.name] + ([f"{path.name}.data"] if external else [])
    return {
        "file": path.name,
        "files": files,
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in spec.dynamic_axes.items()},
        "op_types": _check_standard_ops(proto, spec.name),
        "num_nodes": len(proto.graph.node),
        **onnx_weight_bytes(proto),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }


def model_section(cfg, lm_head_chunks: int, kv_capacity: int = DEFAULT_KV_CAPACITY) -> dict[str, Any]:
    """The manifest's ``model`` entry: the shapes and constants the runtime and the builder read."""
    n_heads = int(cfg.llm["num_attention_heads"])
    return {
        "name": cfg.name,
        "hidden_size": cfg.hidden_size,
        "num_layers": int(cfg.llm["num_hidden_layers"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(cfg.llm["num_key_value_heads"]),
        "head_dim": cfg.hidden_size // n_heads,
        "vocab_size": int(cfg.llm["vocab_size"]),
        "max_position_embeddings": int(cfg.llm.get("max_position_embeddings", 32768)),
        "mcp_num_layers": cfg.mcp.num_layers,
        "caption_dim": cfg.mcp.output_dim,
        "latent_shape": list(cfg.latent_shape),
        "vae_scaling_factor": cfg.vae_scaling_factor,
        "output_size": cfg.output_size,
        "lm_head_chunks": lm_head_chunks,
        "kv_capacity": kv_capacity,
        "mask_value": graphs.MASK_VALUE,
    }


def memory_budget(graphs_meta: dict[str, Any], embed_table_bytes: int) -> dict[str, Any]:
    """Weight bytes per engine (fp32 as exported, and at fp16) and their sums, plus the host embedding table.

    The engines' activation memory is not in it: ``mobile-o build-engines`` adds TensorRT's figure per engine.
    """
    per_graph = {
        name: {"weights_bytes": g["weights_bytes"], "weights_bytes_fp16": g["weights_bytes_fp16"]}
        for name, g in graphs_meta.items()
    }
    return {
        "graphs": per_graph,
        "total_weights_bytes": sum(g["weights_bytes"] for g in per_graph.values()),
        "total_weights_bytes_fp16": sum(g["weights_bytes_fp16"] for g in per_graph.values()),
        "embed_table_bytes": int(embed_table_bytes),
    }


def _write_tokenizer(checkpoint: Path, out_dir: Path) -> None:
    src = checkpoint / "tokenizer.json"
    if src.is_file():
        shutil.copyfile(src, out_dir / "tokenizer.json")
        return
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(checkpoint), use_fast=True).backend_tokenizer.save(
        str(out_dir / "tokenizer.json")
    )


def _special_ids(tokenizer) -> dict[str, int | None]:
    names = {
        "im_start": prompts.IM_START,
        "im_end": prompts.IM_END,
        "endoftext": prompts.ENDOFTEXT,
        "image": prompts.IMAGE_PLACEHOLDER,
    }
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in names.items()}
    ids["eos"] = answer_stop_id(tokenizer)
    ids["image_token_index"] = prompts.IMAGE_TOKEN_INDEX
    return ids


#: Checkpoint dtypes (safetensors names) whose values an fp16 table holds as well as they are stored.
SIXTEEN_BIT = frozenset({"F16", "BF16"})


def embedding_table_dtype(choice: str, stored: str | None) -> torch.dtype:
    """The dtype of ``embed_tokens.npy``, the host's lookup table (the runtime upcasts the rows it reads).

    ``auto`` is fp16 when the checkpoint stores the table in 16 bits (the released bf16 checkpoint, which
    the released code also loads as fp16): half the host memory, and fp16 holds every bf16 value of
    magnitude 2**-17 to 65504 exactly. An fp32 checkpoint keeps fp32, so its export stays exact to the
    reference.
    """
    if choice not in ("auto", "fp16", "fp32"):
        raise ValueError(f"embed dtype must be auto, fp16 or fp32, got {choice!r}")
    if choice == "fp16" or (choice == "auto" and stored in SIXTEEN_BIT):
        return torch.float16
    return torch.float32


def export_model(
    loaded: LoadedCheckpoint,
    out_dir: str | Path,
    only: list[str] | None = None,
    lm_head_chunks: int | None = None,
    kv_capacity: int = DEFAULT_KV_CAPACITY,
    opset: int = OPSET,
    embed_dtype: str = "auto",
) -> dict[str, Any]:
    """Export every graph of ``loaded`` into ``out_dir`` and write ``manifest.json``; returns the manifest.

    ``embed_dtype`` (auto, fp16, fp32): see :func:`embedding_table_dtype`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = loaded.model.float().eval()
    cfg = model.config
    vocab = int(cfg.llm["vocab_size"])
    chunks = lm_head_chunks or graphs.lm_head_chunks_for(vocab, cfg.hidden_size)
    graphs_meta: dict[str, Any] = {}
    for spec in graph_specs(model, chunks, names=only):
        graphs_meta[spec.name] = export_graph(spec, out_dir, opset)

    weight = model.llm.get_input_embeddings().weight.detach()
    table_dtype = embedding_table_dtype(embed_dtype, stored_dtype(loaded.path, "model.embed_tokens.weight"))
    table = weight.to(table_dtype).numpy()
    np.save(out_dir / "embed_tokens.npy", table)
    _write_tokenizer(loaded.path, out_dir)

    manifest: dict[str, Any] = {
        "format": "mobile_o_ros.export",
        "version": MANIFEST_VERSION,
        "exporter": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "dynamo": False,
            "opset": opset,
            "do_constant_folding": True,
            "dtype": "float32",
        },
        "source_checkpoint": {"path": str(loaded.path), "sha256": checkpoint_sha256(loaded.path)},
        "model": model_section(cfg, chunks, kv_capacity),
        "image": {
            "size": cfg.image_size,
            "num_tokens": cfg.num_image_tokens,
            "pad_color": [0, 0, 0],
            "resample": "bicubic",
            "rescale": 1 / 255,
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
        },
        "prompts": {
            "system": prompts.SYSTEM_PROMPT,
            "generation_prefix": prompts.GENERATION_PREFIX,
            "edit_prefix": prompts.EDIT_PREFIX,
            "image_placeholder": prompts.IMAGE_PLACEHOLDER,
            "template": prompts.chat_prompt("{content}"),
        },
        "special_tokens": _special_ids(loaded.tokenizer),
        "scheduler": cfg.scheduler,
        "defaults": {
            "steps": cfg.defaults.steps,
            "guidance_scale": cfg.defaults.guidance_scale,
            "max_new_tokens": cfg.defaults.max_new_tokens,
            "temperature": cfg.defaults.temperature,
        },
        "graphs": graphs_meta,
        "memory_budget": memory_budget(graphs_meta, table.nbytes),
    }
    files = sorted(
        {f for g in graphs_meta.values() for f in g["files"]} | {"embed_tokens.npy", "tokenizer.json"}
    )
    manifest["files"] = {f: sha256_file(out_dir / f) for f in files}
    vocabulary.add_to_export(loaded.path, out_dir, manifest)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
