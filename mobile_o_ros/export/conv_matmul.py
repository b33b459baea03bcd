"""Pointwise (1×1) convolutions as MatMuls, so that int8 MatMul kernels can run them.

onnxruntime's CPU dynamic quantization has int8 kernels for MatMul (MatMulInteger) but none for Conv with
int8 weights, and the DiT's feed-forward (SANA's GLUMBConv) and FastViT's ConvFFN spend most of their time in
1×1 convolutions. :func:`pointwise_convs_to_matmul` rewrites each 1×1, stride-1, ungrouped, unpadded 2-D
Conv with a constant weight as ``Transpose(NCHW→NHWC) → MatMul(W^T) [→ Add(bias)] → Transpose(NHWC→NCHW)``:
the same arithmetic, summed in another order. Node names keep the Conv's scope (``<conv name>/matmul``), so
the precision policy's rules still apply to them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _pointwise(node: Any, weights: dict[str, np.ndarray]) -> bool:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    w = weights[node.input[1]]
    if w.ndim != 4 or w.shape[2:] != (1, 1) or int(_attr(node, "group", 1)) != 1:
        return False
    strides = list(_attr(node, "strides", [1, 1]))
    dilations = list(_attr(node, "dilations", [1, 1]))
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    bias_ok = len(node.input) < 3 or not node.input[2] or node.input[2] in weights
    return strides == [1, 1] and dilations == [1, 1] and not any(pads) and auto_pad == "NOTSET" and bias_ok


def pointwise_convs_to_matmul(model: Any) -> int:
    """Rewrite ``model``'s (a ModelProto, weights loaded) pointwise Convs in place; returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    new_nodes, new_inits, dropped, count = [], [], set(), 0
    for node in graph.node:
        if not _pointwise(node, weights):
            new_nodes.append(node)
            continue
        count += 1
        name, x, y = node.name or f"conv_{count}", node.input[0], node.output[0]
        w = weights[node.input[1]]
        w2 = numpy_helper.from_array(np.ascontiguousarray(w[:, :, 0, 0].T), f"{name}/matmul_weight")
        new_inits.append(w2)
        nhwc, prod = f"{name}/nhwc", f"{name}/matmul_out"
        new_nodes.append(
            helper.make_node("Transpose", [x], [nhwc], name=f"{name}/to_nhwc", perm=[0, 2, 3, 1])
        )
        new_nodes.append(helper.make_node("MatMul", [nhwc, w2.name], [prod], name=f"{name}/matmul"))
        if len(node.input) > 2 and node.input[2]:
            biased = f"{name}/bias_out"
            new_nodes.append(helper.make_node("Add", [prod, node.input[2]], [biased], name=f"{name}/bias"))
            prod = biased
        new_nodes.append(
            helper.make_node("Transpose", [prod], [y], name=f"{name}/to_nchw", perm=[0, 3, 1, 2])
        )
        users[node.input[1]] -= 1
        if users[node.input[1]] == 0:
            dropped.add(node.input[1])
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        kept = [i for i in graph.initializer if i.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(kept + new_inits)
        # the value types of rewritten tensors are re-inferred by whoever needs them
        stale = {o for n in new_nodes for o in n.output if "/matmul" in o or "/nhwc" in o or "/bias_out" in o}
        kept_info = [v for v in graph.value_info if v.name not in stale]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return count
