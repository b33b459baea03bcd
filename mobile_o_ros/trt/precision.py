"""The precision policy: which layers of an fp16/bf16 engine stay fp32, as rules on ONNX node names.

The export is fp32 and the build is *weakly typed*: the FP16 (or BF16) builder flag lets TensorRT pick half
precision per layer, and the layers matched below are pinned to fp32 (``layer.precision`` +
``set_output_type`` + ``OBEY_PRECISION_CONSTRAINTS``). The same rules run on ONNX nodes
(:func:`fp32_layer_names`, CPU-testable) and on TensorRT layers (:func:`apply_to_network`), which map back to
their ONNX node through the parser's ``[ONNX Layer: <node>]`` metadata (or the layer name).

Rules, first match wins (each keeps a computation whose fp16 range or rounding is known to fail):

* ``sana_linear_attention`` (dit): every node directly in ``/attn1/`` (ReLU, the fp32 Casts, the Pad with
  ones, both MatMuls, the Add of 1e-15 and the Div, the Clip); activations reach 1e5-1e6 and 1e-15 is 0 in
  fp16. The q/k/v/out projections (child scopes) stay fp16, as in diffusers.
* ``sana_time_embedding`` (dit): the sinusoid under ``/time_embed/emb/time_proj/`` (arguments to ~1000 rad).
* ``rotary_embedding`` (llm): ``/rotary_emb/`` (theta 1e6, positions up to 2048).
* ``dcae_linear_attention`` (vae_decoder): nodes directly in the DC-AE ``/attn/`` scope (+ its ReLUs).
* ``norm_reduction`` (all): ReduceMean, Pow, Sqrt, Reciprocal.
* ``norm_scope`` (all): the rest of every ``*norm*`` scope (RMSNorm's eps Add, Div, Casts, scale Mul).

Never pinned: Softmax (a pin keeps TensorRT from fusing attention; its fp16 kernels reduce in fp32) and
LayerNormalization (``INormalizationLayer`` computes in fp32 whatever its I/O type). Only nodes whose first
input and outputs are floating point are pinned (shape arithmetic is left alone). ``fp32`` builds pin
nothing. No build uses TF32: it would round the pinned layers' inputs to 10-bit mantissas.

Whether TensorRT honours a pin inside a Myelin "foreign node" is not documented; the engine inspector's
JSON that the builder writes beside each engine shows the precision each layer really runs in
(:mod:`mobile_o_ros.trt.inspect`). The ``--strongly-typed`` build is the fallback: the same rules become
explicit Casts in an fp16 ONNX (:mod:`mobile_o_ros.trt.typed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRECISIONS = ("fp16", "bf16", "fp32")
#: Bump when the rules change: part of the engine cache key.
POLICY_VERSION = 2
FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16"})
#: Ops no rule pins (see the module docstring).
NEVER_PINNED = frozenset({"Softmax", "LayerNormalization"})
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
        op_types=frozenset({"ReduceMean", "Pow", "Sqrt", "Reciprocal"}),
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
        [POLICY_VERSION, sorted(NEVER_PINNED)]
        + [[r.name, r.graphs, r.scope, sorted(r.op_types) if r.op_types else None] for r in RULES]
    )
    return f"v{POLICY_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def rule_for(graph: str | None, node_name: str, op_type: str) -> str | None:
    """The first rule that pins this node, or None."""
    if op_type in NEVER_PINNED:
        return None
    return next((r.name for r in RULES if r.matches(graph, node_name, op_type)), None)


def pinnable(first_input_dtype: str | None, output_dtypes: list[str]) -> bool:
    """Only floating-point compute is pinned: the first input and every output must be float tensors."""
    outputs_float = bool(output_dtypes) and all(d in FLOAT_DTYPES for d in output_dtypes)
    return first_input_dtype in FLOAT_DTYPES and outputs_float


def _typed_names(graph: Any) -> set[str]:
    return {v.name for v in [*graph.input, *graph.value_info, *graph.output] if v.type.tensor_type.elem_type}


def _needs_inference(model: Any) -> bool:
    """Whether some node output lacks a recorded type (the export records them; other files may not)."""
    typed = _typed_names(model.graph) | {i.name for i in model.graph.initializer}
    return any(o and o not in typed for n in model.graph.node if n.op_type != "Constant" for o in n.output)


def load_typed(path: str | Path) -> Any:
    """The graph of an ONNX file with every tensor's type and without its external data.

    Types come from the file when the export recorded them; otherwise ``infer_shapes_path`` runs on the file
    (out of Python's memory) and its result is read, again without external data. One copy at a time.
    """
    import tempfile

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not _needs_inference(model):
        return model
    del model
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "typed.onnx"
        onnx.shape_inference.infer_shapes_path(str(path), str(out))
        return onnx.load(str(out), load_external_data=False)


def _onnx_dtypes(model: Any) -> dict[str, str]:
    import onnx
    from onnx import helper

    if _needs_inference(model):  # a small in-memory model (files go through load_typed)
        with contextlib.suppress(Exception):
            model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
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

    ``onnx_model``: a ModelProto or a path (read by :func:`load_typed`: no external data, no in-memory
    shape inference). ``graph``: the manifest graph name, which restricts graph-specific rules; None applies
    every rule.
    """
    if check_precision(precision) == "fp32":
        return {}
    if isinstance(onnx_model, (str, Path)):
        onnx_model = load_typed(onnx_model)
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


def configure_precision(
    config: Any,
    precision: str,
    any_pinned: bool,
    strongly_typed: bool = False,
    tf32: bool = False,
    int8: bool = False,
) -> None:
    """Builder flags for ``precision``. Every build clears TF32. A weakly typed fp16/bf16 build sets the
    FP16/BF16 flag, and OBEY_PRECISION_CONSTRAINTS when layers are pinned; ``int8`` (a graph with Q/DQ nodes:
    explicit quantization) adds the INT8 flag to a weakly typed build of any precision. A strongly typed
    build sets none of them (the ONNX's types decide, and TensorRT rejects those flags there).

    The weak-typing flags are deprecated from TensorRT 10.12 and absent from 11; where they are missing a
    weakly typed reduced-precision or int8 build is refused with the option to use instead.
    """
    import tensorrt as trt

    check_precision(precision)
    if tf32:  # only to measure what TF32 costs
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    if strongly_typed:
        return
    flags = ["INT8"] if int8 else []
    if precision != "fp32":
        flags += ["FP16" if precision == "fp16" else "BF16"]
        flags += ["OBEY_PRECISION_CONSTRAINTS"] if any_pinned else []
    missing = [f for f in flags if not hasattr(trt.BuilderFlag, f)]
    if missing:
        hint = (
            "its int8 engines need a weakly typed build: export without --quantize"
            if "INT8" in missing
            else "build with --strongly-typed"
        )
        raise RuntimeError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no BuilderFlag {', '.join(missing)}: {hint}"
        )
    for f in flags:
        config.set_flag(getattr(trt.BuilderFlag, f))
