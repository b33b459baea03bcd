"""A half-precision copy of an fp32 ONNX graph for ``STRONGLY_TYPED`` TensorRT builds.

A strongly typed network takes every tensor's type from the ONNX, so the precision policy
(:mod:`mobile_o_ros.trt.precision`) becomes explicit types instead of layer pins:

* the nodes the policy keeps in fp32 (the *islands*) keep fp32 inputs and outputs; every other float
  tensor, weight and constant becomes fp16 (or bf16), and Cast nodes go where the two meet;
* weights and constants read only by islands stay fp32 (SANA's 1e-15 epsilon is 0 in fp16);
* inputs that ONNX requires in fp32 whatever the data type (Resize's scales) stay fp32;
* the graph's inputs and outputs keep their fp32 types (Casts inside), so the runtime feeds the same arrays.

Weights are converted one tensor at a time; external data is read and written tensor by tensor, so a graph
larger than memory can be converted on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: (op type, input index) that ONNX types as float32 whatever the data type.
FP32_INPUTS = frozenset({("Resize", 2), ("Upsample", 1)})
#: Threshold above which a converted weight goes to the external-data file (when the source had one).
EXTERNAL_MIN_BYTES = 1024


def _to_half(array: np.ndarray, precision: str) -> tuple[bytes, int]:
    """fp32 array → (raw bytes, ONNX data type) at fp16, or bf16 (round to nearest even)."""
    import onnx

    if precision == "fp16":
        return np.asarray(array, np.float16).tobytes(), onnx.TensorProto.FLOAT16
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded.tobytes(), onnx.TensorProto.BFLOAT16


def _read(tensor, base: Path) -> np.ndarray:
    """The values of an initializer, from its raw data or its external-data file (one tensor)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if not uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    info = ExternalDataInfo(tensor)
    dtype = np.float32 if tensor.data_type == 1 else None
    with open(base / info.location, "rb") as fh:
        fh.seek(int(info.offset or 0))
        raw = fh.read(int(info.length)) if info.length else fh.read()
    if dtype is None:
        from onnx import helper

        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.frombuffer(raw, dtype).reshape(tuple(tensor.dims))


def write_typed_onnx(
    src: str | Path, dst: str | Path, node_rules: dict[str, str], precision: str = "fp16"
) -> int:
    """Write the half-precision copy of ``src`` to ``dst`` (+ ``dst.data`` when ``src`` has external data);
    ``node_rules`` are the policy's fp32 nodes. Returns how many nodes stay fp32."""
    import onnx
    from onnx import helper
    from onnx.external_data_helper import uses_external_data

    from mobile_o_ros.trt.precision import load_typed

    if precision not in ("fp16", "bf16"):
        raise ValueError(f"typed copies are fp16 or bf16, not {precision!r}")
    src, dst = Path(src), Path(dst)
    model = load_typed(src)
    g = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute
    ):
        raise ValueError(f"{src.name} has sub-graphs (If/Loop/Scan); typed copies cover flat graphs only")
    FLOAT = onnx.TensorProto.FLOAT
    half = onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16

    types: dict[str, int] = {i.name: i.data_type for i in g.initializer}
    for v in [*g.input, *g.value_info, *g.output]:
        if v.type.tensor_type.elem_type:
            types[v.name] = v.type.tensor_type.elem_type
    island = {n.name for n in g.node if n.name in node_rules}
    consumers: dict[str, list[tuple[object, int]]] = {}
    for n in g.node:
        for k, name in enumerate(n.input):
            if name:
                consumers.setdefault(name, []).append((n, k))

    def wants_fp32(node, k: int) -> bool:
        return node.name in island or (node.op_type, k) in FP32_INPUTS

    def only_fp32_readers(name: str) -> bool:
        return all(wants_fp32(n, k) for n, k in consumers.get(name, []))

    # 1. the type every float tensor will have
    new_type: dict[str, int] = {}
    for v in g.input:
        new_type[v.name] = types.get(v.name, 0)
    for t in g.initializer:
        keep = t.data_type != FLOAT or only_fp32_readers(t.name)
        new_type[t.name] = t.data_type if keep else half
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == FLOAT:
                if not only_fp32_readers(n.output[0]):
                    raw, dtype = _to_half(onnx.numpy_helper.to_array(a.t), precision)
                    a.t.CopyFrom(helper.make_tensor(a.t.name, dtype, a.t.dims, raw, raw=True))
                types[n.output[0]] = a.t.data_type
            if n.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == FLOAT:
                if n.name not in island:
                    raw, dtype = _to_half(onnx.numpy_helper.to_array(a.t), precision)
                    a.t.CopyFrom(helper.make_tensor(a.t.name, dtype, a.t.dims, raw, raw=True))
                types[n.output[0]] = a.t.data_type
            if n.op_type == "Cast" and a.name == "to" and a.i == FLOAT and n.name not in island:
                a.i = half
        for o in n.output:
            if n.op_type in ("Constant", "ConstantOfShape", "Cast"):
                for a in n.attribute:
                    if a.name == "to":
                        new_type[o] = a.i
                    elif a.name == "value":
                        new_type[o] = a.t.data_type
            elif types.get(o) == FLOAT:
                new_type[o] = FLOAT if n.name in island else half
            elif o in types:
                new_type[o] = types[o]

    # 2. graph outputs keep fp32: a half producer writes "<name>__half" and a Cast restores the name
    renamed = {}
    for v in g.output:
        if types.get(v.name) == FLOAT and new_type.get(v.name) == half:
            renamed[v.name] = f"{v.name}__half"
    for n in g.node:
        for k, name in enumerate(n.input):
            if name in renamed:
                n.input[k] = renamed[name]
        for k, name in enumerate(n.output):
            if name in renamed:
                n.output[k] = renamed[name]
    for new in renamed.values():
        new_type[new] = half

    # 3. Casts where a node reads a float tensor in the other precision
    casts: dict[tuple[str, int], str] = {}
    nodes = []
    for n in g.node:
        for k, name in enumerate(n.input):
            have = new_type.get(name)
            if have not in (FLOAT, half) or types.get(name, FLOAT) not in (FLOAT, half):
                continue
            want = FLOAT if wants_fp32(n, k) else half
            if have == want:
                continue
            key = (name, want)
            if key not in casts:
                casts[key] = f"{name}__as_{'fp32' if want == FLOAT else precision}"
                cast = helper.make_node("Cast", [name], [casts[key]], name=f"{casts[key]}/Cast", to=want)
                nodes.append(cast)
            n.input[k] = casts[key]
        nodes.append(n)
    for old, new in renamed.items():
        nodes.append(helper.make_node("Cast", [new], [old], name=f"{old}/Cast", to=FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]

    # 4. weights, one tensor at a time (external data streamed into dst's own file)
    external = any(uses_external_data(t) for t in g.initializer)
    data_path = dst.with_name(dst.name + ".data")
    dst.parent.mkdir(parents=True, exist_ok=True)
    offset = 0
    with open(data_path, "wb") if external else _NullFile() as out:
        for t in g.initializer:
            values = _read(t, src.parent)
            if new_type.get(t.name) == half and t.data_type == FLOAT:
                raw, dtype = _to_half(values, precision)
            else:
                raw, dtype = np.ascontiguousarray(values).tobytes(), t.data_type
            dims = list(t.dims)
            name = t.name
            t.Clear()
            t.name, t.data_type = name, dtype
            t.dims.extend(dims)
            if external and len(raw) >= EXTERNAL_MIN_BYTES:
                out.write(raw)
                t.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_path.name), ("offset", offset), ("length", len(raw))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, str(value)
                offset += len(raw)
            else:
                t.raw_data = raw
    if not external:
        data_path.unlink(missing_ok=True)
    onnx.save_model(model, str(dst))
    return len(island)


class _NullFile:
    """A context manager that stands in for the external-data file when there is none."""

    def __enter__(self) -> _NullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, data: bytes) -> int:
        raise AssertionError("no external-data file")
