"""What an engine really runs in: the engine inspector's JSON (``profiling_verbosity = DETAILED``) against the
precision policy.

The builder writes ``<graph>.<precision>.layers.json`` next to each engine. Each layer lists its I/O formats
(``"Format/Datatype": "Row major linear FP16 format"``) and, from the ONNX parser, the nodes it came from
(``"Metadata": "[ONNX Layer: /a/b]"``, several joined by ``\\x1f`` for fused layers). Layers TensorRT hands to
Myelin appear as one ``{ForeignNode[first...last]}`` whose inside is not listed: a pin on a node inside is
not visible (and is reported ignored there), so such nodes are counted apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobile_o_ros.trt.precision import onnx_nodes_of

_PRECISIONS = (
    ("bf16", ("bf16", "bfloat16")),
    ("fp16", ("fp16", "half")),
    ("fp32", ("fp32", "float")),
    ("int", ("int8", "int32", "int64", "bool", "uint8")),
)


def precision_of(fmt: str) -> str:
    """``fp32``/``fp16``/``bf16``/``int`` from a ``Format/Datatype`` string; ``unknown`` (e.g. "N/A due to
    dynamic shapes") otherwise."""
    text = fmt.lower()
    if text.startswith("n/a"):
        return "unknown"
    for name, words in _PRECISIONS:
        if any(re.search(rf"\b{w}\b", text) for w in words):
            return name
    return "unknown"


@dataclass
class EngineLayer:
    """One layer of a built engine."""

    name: str
    layer_type: str
    precision: str
    onnx_nodes: list[str] = field(default_factory=list)
    foreign: bool = False


def read_layers(info: str | dict[str, Any]) -> list[EngineLayer]:
    """The layers of an inspector JSON (text or parsed). A layer's precision is that of its float outputs
    (``mixed`` when they differ, ``int`` when it has none)."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = []
    for raw in data.get("Layers", []):
        if isinstance(raw, str):  # ONELINE verbosity: names only
            layers.append(EngineLayer(raw, "?", "unknown", [raw]))
            continue
        name = str(raw.get("Name", ""))
        precs = {precision_of(str(o.get("Format/Datatype", ""))) for o in raw.get("Outputs", [])}
        floats = precs - {"int"}
        prec = next(iter(floats)) if len(floats) == 1 else ("mixed" if floats else "int")
        foreign = name.startswith("{ForeignNode[") or raw.get("LayerType") == "Myelin"
        nodes = [] if foreign else onnx_nodes_of(name, str(raw.get("Metadata", "")))
        layers.append(EngineLayer(name, str(raw.get("LayerType", "?")), prec, nodes, foreign))
    return layers


def check_policy(layers: list[EngineLayer], node_rules: dict[str, str]) -> dict[str, Any]:
    """The policy's fp32 nodes against the engine, per rule: in an fp32 layer (kept), in a reduced-precision
    layer (a pin that did not hold), not visible (inside a Myelin foreign node, or fused away).

    Also lists every layer that runs in fp32 and flags whether the inspector had shapes to report.
    """
    where: dict[str, EngineLayer] = {}
    for layer in layers:
        for node in layer.onnx_nodes:
            where.setdefault(node, layer)
    by_rule: dict[str, dict[str, int]] = {}
    violations = []
    for node, rule in sorted(node_rules.items()):
        row = by_rule.setdefault(rule, {"nodes": 0, "fp32": 0, "reduced": 0, "not_visible": 0, "unknown": 0})
        row["nodes"] += 1
        layer = where.get(node)
        if layer is None:
            row["not_visible"] += 1
        elif layer.precision == "fp32":
            row["fp32"] += 1
        elif layer.precision in ("fp16", "bf16", "mixed"):
            row["reduced"] += 1
            violations.append({"node": node, "rule": rule, "layer": layer.name, "precision": layer.precision})
        else:
            row["unknown"] += 1
    return {
        "layers": len(layers),
        "fp32_layers": [la.name for la in layers if la.precision == "fp32"],
        "foreign_nodes": [la.name for la in layers if la.foreign],
        "formats_known": any(la.precision not in ("unknown",) for la in layers),
        "by_rule": by_rule,
        "violations": violations,
    }


def check_engine(
    layers_json: str | Path, onnx_path: str | Path, graph: str, precision: str
) -> dict[str, Any]:
    """:func:`check_policy` for an engine's inspector file and the ONNX graph it was built from."""
    from mobile_o_ros.trt.precision import fp32_node_rules

    layers = read_layers(Path(layers_json).read_text())
    return check_policy(layers, fp32_node_rules(onnx_path, graph, precision))
