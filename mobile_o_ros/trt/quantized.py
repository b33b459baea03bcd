"""int8 exports in TensorRT: the ONNX file each engine is built from, and whether it is explicitly quantized.

An export quantized by ``mobile-o export --quantize int8`` records a mode per graph in its manifest's
``quantization`` section:

* ``int8-qdq``: the graph's file has QuantizeLinear/DequantizeLinear pairs (symmetric int8). TensorRT builds
  it with explicit quantization: the INT8 builder flag joins the FP16/BF16 flag of a weakly typed build, the
  Q/DQ scales decide where int8 runs, and the precision policy still pins its fp32 islands.
* ``int8-dynamic``: the graph's file quantizes per call (DynamicQuantizeLinear + MatMulInteger, asymmetric
  uint8), which TensorRT does not parse; its engine is built from the fp32 graph the manifest keeps
  (``fp32_file``/``fp32_files``), as for an fp32 export.
* ``fp32`` (and exports without the section): the graph's file, unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Q/DQ node types: a graph holding them is explicitly quantized.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: The quantization modes TensorRT cannot build from the graph's own file.
ONNXRUNTIME_ONLY = frozenset({"int8-dynamic"})


def mode_of(manifest: dict[str, Any], graph: str) -> str:
    """The graph's quantization mode in ``manifest`` (``fp32`` when the export is not quantized)."""
    return str(manifest.get("quantization", {}).get("graphs", {}).get(graph, {}).get("mode", "fp32"))


def engine_graph(manifest: dict[str, Any], graph: str) -> dict[str, Any]:
    """The manifest entry an engine of ``graph`` is built from: the graph's own, or for an onnxruntime-only
    mode the same entry pointing at its fp32 file."""
    meta = manifest["graphs"][graph]
    if mode_of(manifest, graph) in ONNXRUNTIME_ONLY and meta.get("fp32_file"):
        return {**meta, "file": meta["fp32_file"], "files": list(meta["fp32_files"])}
    return meta


def engine_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with every graph entry replaced by :func:`engine_graph`'s (a new dict; idempotent)."""
    return {**manifest, "graphs": {g: engine_graph(manifest, g) for g in manifest["graphs"]}}


def has_qdq(onnx_path: str | Path) -> bool:
    """Whether an ONNX file holds QuantizeLinear/DequantizeLinear nodes (its external data is not read)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


def qdq_summary(onnx_path: str | Path) -> dict[str, int]:
    """Counts of Q and DQ nodes and of the MatMul/Gemm/Conv nodes fed by a DequantizeLinear (int8 compute)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    ops = [n.op_type for n in model.graph.node]
    int8 = [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm", "Conv") and n.input and n.input[0] in dq_out
    ]
    return {
        "QuantizeLinear": ops.count("QuantizeLinear"),
        "DequantizeLinear": ops.count("DequantizeLinear"),
        "int8_layers": len(int8),
    }
