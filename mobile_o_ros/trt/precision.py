"""The precision policy: which layers of an fp16/bf16 engine stay fp32, as rules on ONNX node names.

The export is fp32 and the build is *weakly typed*: the FP16 (or BF16) builder flag lets TensorRT pick half
precision per layer, and the layers matched below are pinned to fp32 (``layer.precision`` +
``set_output_type`` + ``OBEY_PRECISION_CONSTRAINTS``). The same rules run on ONNX nodes
(:func:`fp32_layer_names`, CPU-testable) and on TensorRT layers (:func:`apply_to_network`), which map back to
their ONNX node through the parser's ``[ONNX Layer: <node>]`` metadata (or the layer name).

Rules (facts §11/§13, trt-export §4.3-4.5/§4.16), first match wins:

* ``sana_linear_attention`` (dit): every node directly in ``/attn1/`` (ReLU, the fp32 Casts, the Pad with
  ones, both MatMuls, the Add of 1e-15 and the Div, the Clip); activations reach 1e5-1e6 and 1e-15 is 0 in
  fp16. The q/k/v/out projections (child scopes) stay fp16, as in diffusers.
* ``sana_time_embedding`` (dit): the sinusoid under ``/time_embed/emb/time_proj/`` (arguments to ~1000 rad).
* ``rotary_embedding`` (llm): ``/rotary_emb/`` (theta 1e6, positions up to 2048).
* ``dcae_linear_attention`` (vae_decoder): nodes directly in the DC-AE ``/attn/`` scope (+ its ReLUs).
* ``norm_reduction`` (all): ReduceMean, Pow, Sqrt, Reciprocal, Softmax, LayerNormalization.
* ``norm_scope`` (all): the rest of every ``*norm*`` scope (RMSNorm's eps Add, Div, Casts, scale Mul).

Only nodes whose first input and outputs are floating point are pinned (shape arithmetic is left alone).
``fp32`` builds pin nothing (no FP16/BF16 flag; TF32 is disabled for exact parity).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("fp16", "bf16", "fp32")
#: Bump when the rules change: part of the engine cache key.
POLICY_VERSION = 1
FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16"})
_LLM = ("llm",)


@dataclass(frozen=True)
class Rule:
    """Pin to fp32 the nodes whose name matches ``scope`` (regex search) and whose op is in ``op_types``."""

    name: str
    graphs: tuple[str, ...] | None
    scope: str | None = None
    op_types: frozenset[str] | None = None

    def matches(self, graph: str | None, node_name: str, op_type: str) -> bool:
        """Whether a node of ``graph`` (None: any graph) falls under this rule."""
        if graph is not None and self.graphs is not None and graph not in self.graphs:
            return False
        if self.scope is not None and not re.search(self.scope, node_name):
            return False
        return self.op_types is None or op_type in self.op_types


RULES: tuple[Rule, ...] = (
    Rule("sana_linear_attention", ("dit",), scope=r"/attn1/[^/]+$"),
    Rule("sana_time_embedding", ("dit",), scope=r"/time_embed/emb/(time_proj/)?[^/]+$"),
    Rule("rotary_embedding", _LLM, scope=r"/rotary_emb/"),
    Rule("dcae_linear_attention", ("vae_decoder",), scope=r"/attn/(nonlinearity[^/]*/)?[^/]+$"),
    Rule(
        "norm_reduction",
        None,
        op_types=frozenset({"ReduceMean", "Pow", "Sqrt", "Reciprocal", "Softmax", "LayerNormalization"}),
    ),
    Rule("norm_scope", None, scope=r"/[^/]*norm[^/]*/[^/]+$"),
)


def check_precision(precision: str) -> str:
    """``precision`` if known, else a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    return precision


def policy_digest() -> str:
    """A short hash of the rules and POLICY_VERSION (engine cache key field ``precision_policy``)."""
    text = json.dumps(
        [POLICY_VERSION]
        + [[r.name, r.graphs, r.scope, sorted(r.op_types) if r.op_types else None] for r in RULES]
    )
    return f"v{POLICY_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def rule_for(graph: str | None, node_name: str, op_type: str) -> str | None:
    """The first rule that pins this node, or None."""
    return next((r.name for r in RULES if r.matches(graph, node_name, op_type)), None)


def pinnable(first_input_dtype: str | None, output_dtypes: list[str]) -> bool:
    """Only floating-point compute is pinned: the first input and every output must be float tensors."""
    outputs_float = bool(output_dtypes) and all(d in FLOAT_DTYPES for d in output_dtypes)
    return first_input_dtype in FLOAT_DTYPES and outputs_float


def _onnx_dtypes(model) -> dict[str, str]:
    import onnx
    from onnx import helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {i.name: i.data_type for i in g.initializer}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return {
        k: helper.tensor_dtype_to_np_dtype(v).name if v != onnx.TensorProto.BFLOAT16 else "bfloat16"
        for k, v in types.items()
        if v
    }


def fp32_node_rules(onnx_model: Any, graph: str | None = None, precision: str = "fp16") -> dict[str, str]:
    """ONNX node name → rule name for every node the policy keeps in fp32 (empty for ``fp32`` builds).

    ``onnx_model``: a ModelProto or a path (external data is not loaded). ``graph``: the manifest graph
    name, which restricts graph-specific rules; None applies every rule.
    """
    if check_precision(precision) == "fp32":
        return {}
    import onnx

    if isinstance(onnx_model, (str, Path)):
        onnx_model = onnx.load(str(onnx_model), load_external_data=False)
    dtypes = _onnx_dtypes(onnx_model)
    out: dict[str, str] = {}
    for node in onnx_model.graph.node:
        if node.op_type == "Constant" or not node.name:
            continue
        rule = rule_for(graph, node.name, node.op_type)
        first = dtypes.get(node.input[0]) if node.input and node.input[0] else None
        if rule and pinnable(first, [dtypes.get(o, "") for o in node.output if o]):
            out[node.name] = rule
    return out


def fp32_layer_names(onnx_model: Any, graph: str | None = None, precision: str = "fp16") -> list[str]:
    """Sorted ONNX node names the policy keeps in fp32; the same rules the builder applies to TRT layers."""
    return sorted(fp32_node_rules(onnx_model, graph, precision))


def onnx_nodes_of(layer_name: str, metadata: str | None) -> list[str]:
    """The ONNX node(s) a TensorRT layer came from: ``[ONNX Layer: X]`` entries of its metadata, else its
    name."""
    # onnx-tensorrt 10.x writes "[ONNX Layer: <node>]" or "[ONNX Layer: <node> | Local Function: <f>]"
    nodes = re.findall(r"\[ONNX Layer: ([^\]|]+?)(?: \|[^\]]*)?\]", metadata or "")
    return nodes or [layer_name]


def summarize(pinned: dict[str, str]) -> dict[str, int]:
    """Counts of pinned layers per rule."""
    counts: dict[str, int] = {}
    for rule in pinned.values():
        counts[rule] = counts.get(rule, 0) + 1
    return dict(sorted(counts.items()))


def apply_to_network(network: Any, node_rules: dict[str, str]) -> dict[str, str]:
    """Pin the TensorRT layers that come from ``node_rules``' ONNX nodes to fp32; returns layer name → rule.

    Sets ``layer.precision`` and every output type to float32; the caller sets OBEY_PRECISION_CONSTRAINTS.
    """
    import tensorrt as trt

    names = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}
    pinned: dict[str, str] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        nodes = onnx_nodes_of(layer.name, getattr(layer, "metadata", ""))
        rule = next((node_rules[n] for n in nodes if n in node_rules), None)
        if rule is None or layer.num_inputs < 1:
            continue
        first = layer.get_input(0)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if first is None or not pinnable(names.get(first.dtype), [names.get(o.dtype, "") for o in outputs]):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned[layer.name] = rule
    return pinned


def configure_precision(config: Any, precision: str, any_pinned: bool) -> None:
    """Builder flags for ``precision``: FP16/BF16 + OBEY_PRECISION_CONSTRAINTS when layers are pinned; fp32
    clears TF32 so an fp32 engine matches onnxruntime to ~1e-5."""
    import tensorrt as trt

    check_precision(precision)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision != "fp32" and any_pinned:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
