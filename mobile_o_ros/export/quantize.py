"""int8 graphs: explicitly quantized (QDQ) or dynamically quantized variants of the exported graphs, kept
where int8 pays.

``mobile-o export MODEL OUT --quantize int8`` writes the fp32 export, then for each graph:

1. plans which nodes to quantize (:func:`plan_nodes`): the MatMul, Gemm and Conv nodes whose weight is a
   constant. Nodes the precision policy keeps fp32 in TensorRT (:mod:`mobile_o_ros.trt.precision`: SANA's
   linear attention, the timestep sinusoid, RoPE, the DC-AE attention, norms) stay fp32, and so does every
   product of two activations (attention scores and values). Softmax, norms and the rest are never quantized;
2. writes two candidates:

   * ``int8-qdq`` (``<graph>.int8.onnx``): ``onnxruntime.quantization.quantize_static`` in QDQ format,
     signed int8 activations and weights, both symmetric (what TensorRT's explicit quantization takes),
     weights per output channel, activation ranges by MinMax over the inputs the fp32 pipeline fed the
     graph (:mod:`mobile_o_ros.export.calibration`). onnxruntime and TensorRT run it;
   * ``int8-dynamic`` (``<graph>.int8dyn.onnx``): pointwise Convs rewritten as MatMuls
     (:mod:`mobile_o_ros.export.conv_matmul`), then ``quantize_dynamic``: the planned MatMuls get int8
     weights per output channel and quantize their input per call (no calibration range to miss, e.g. a DiT
     whose activations change with the timestep); other Convs stay fp32. onnxruntime only: TensorRT builds
     the fp32 file;

3. measures each against the fp32 graph back to back in onnxruntime CPU on recorded inputs
   (:func:`compare`): the worst cosine of any output, and the median latency per call kind (the ``llm``
   graph's prefill and decode separately);
4. keeps the faster candidate that holds :data:`MIN_COSINE`, is nowhere slower than fp32 and somewhere at
   least :data:`MIN_SPEEDUP` faster (:func:`choose`); else fp32, and the candidates are deleted.

The manifest's graph entry then points at the kept file (``fp32_file``/``fp32_files`` name the fp32 graph,
which stays in the folder), and ``quantization`` records every decision with every candidate's figures.
Latency decisions are this machine's; ``force`` keeps named graphs int8 whatever their figures (the
candidate with the best cosine, recorded as forced).
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.export.calibration import CalibrationSet, collect_feeds, spread
from mobile_o_ros.trt import precision

#: The ops that get int8 weights and inputs.
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")
#: Worst output cosine against fp32 (over the calibration inputs) an int8 graph must keep.
MIN_COSINE = 0.995
#: The speedup over fp32 (onnxruntime CPU) at which int8 pays.
MIN_SPEEDUP = 1.1
#: Timed runs per recorded input kind and graph (interleaved fp32/int8, median), at least.
TIMING_REPEATS = 5
#: Fast graphs are run more often, until each side has run this long (or :data:`MAX_REPEATS` times).
MIN_TIMING_SECONDS = 1.0
MAX_REPEATS = 200
#: Recorded inputs per graph used for the cosine (and, up to two per kind, for timing).
CHECK_FEEDS = 8
#: The int8 modes and the file each writes: QDQ (TensorRT and onnxruntime) and dynamic (onnxruntime only).
MODES = ("int8-qdq", "int8-dynamic")
SUFFIX = {"int8-qdq": ".int8.onnx", "int8-dynamic": ".int8dyn.onnx"}
Log = Callable[[str], None]
Feeds = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------- node plan
def _constants(model: Any) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def plan_nodes(model: Any, graph: str) -> tuple[list[str], dict[str, str]]:
    """(nodes to quantize, kept node → reason) for the quantizable ops of ``model`` (a ModelProto).

    Reasons: the precision-policy rule that keeps the node fp32, or ``activation_product`` for a product of
    two activations (no constant weight).
    """
    constants = _constants(model)
    quantize, kept = [], {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        rule = precision.rule_for(graph, node.name, node.op_type)
        if rule is not None:
            kept[node.name] = rule
        elif len(node.input) < 2 or node.input[1] not in constants:
            kept[node.name] = "activation_product"
        else:
            quantize.append(node.name)
    return quantize, kept


def qdq_counts(path: str | Path) -> dict[str, int]:
    """Counts of QuantizeLinear and DequantizeLinear nodes in an ONNX file (external data not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


# ------------------------------------------------------------------------------------------- quantization
class _Reader:
    """An onnxruntime CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list[Feeds]) -> None:
        self.feeds = feeds
        self.i = 0

    def get_next(self) -> Feeds | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.feeds = self.feeds[start_index:end_index]
        self.i = 0


def _external(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(src: str | Path, dst: str | Path, graph: str, feeds: list[Feeds]) -> dict[str, Any]:
    """Write the QDQ int8 variant of ``src`` to ``dst``, calibrated on ``feeds``; returns the node plan's
    counts (quantized, kept per reason) and the Q/DQ node counts of the result."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    nodes, kept = plan_nodes(model, graph)
    del model
    if not nodes:
        raise ValueError(f"{graph}: no MatMul, Gemm or Conv with constant weights to quantize")
    external = _external(src)
    for stale in (dst, dst.with_name(dst.name + ".data")):
        stale.unlink(missing_ok=True)
    with _quiet_root_logger():  # the quantizer logs advice on the root logger at WARNING
        quantize_static(
            str(src),
            str(dst),
            _Reader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=nodes,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=external,  # writes <dst>.data
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "MatMulConstBOnly": True,
            },
        )
    reasons: dict[str, int] = {}
    for r in kept.values():
        reasons[r] = reasons.get(r, 0) + 1
    return {"quantized_nodes": len(nodes), "kept_fp32": dict(sorted(reasons.items())), **qdq_counts(dst)}


def quantize_graph_dynamic(src: str | Path, dst: str | Path, graph: str) -> dict[str, Any]:
    """Write the dynamically quantized variant of ``src`` to ``dst``: pointwise Convs become MatMuls
    (:mod:`mobile_o_ros.export.conv_matmul`; onnxruntime CPU has no int8-weight Conv kernel), then the
    planned MatMuls get int8 weights per output channel and quantize their input per call
    (DynamicQuantizeLinear + MatMulInteger); other Convs stay fp32. onnxruntime only: TensorRT builds such
    a graph from its fp32 file."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mobile_o_ros.export.conv_matmul import pointwise_convs_to_matmul

    src, dst = Path(src), Path(dst)
    external = _external(src)
    model = onnx.load(str(src))
    rewritten = pointwise_convs_to_matmul(model)
    planned, kept = plan_nodes(model, graph)
    ops = {n.name: n.op_type for n in model.graph.node}
    nodes = [n for n in planned if ops[n] == "MatMul"]
    if not nodes:
        raise ValueError(f"{graph}: no MatMul with constant weights to quantize dynamically")
    staged = dst.with_name(dst.name + ".fp32.onnx")
    for stale in (dst, dst.with_name(dst.name + ".data"), staged, staged.with_name(staged.name + ".data")):
        stale.unlink(missing_ok=True)
    try:
        onnx.save_model(
            model,
            str(staged),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=f"{staged.name}.data",
        )
        del model
        with _quiet_root_logger():
            quantize_dynamic(
                str(staged),
                str(dst),
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=nodes,
                per_channel=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=external,
                extra_options={"MatMulConstBOnly": True},
            )
    finally:
        for f in (staged, staged.with_name(staged.name + ".data")):
            f.unlink(missing_ok=True)
    reasons: dict[str, int] = {}
    for r in kept.values():
        reasons[r] = reasons.get(r, 0) + 1
    reasons["conv_not_dynamic"] = sum(1 for n in planned if ops[n] != "MatMul")
    return {
        "quantized_nodes": len(nodes),
        "pointwise_convs_as_matmul": rewritten,
        "kept_fp32": dict(sorted(reasons.items())),
    }


# ------------------------------------------------------------------------------------------- measurement
def _session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays (flattened, fp64); 1.0 for two all-zero arrays."""
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    denom = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y / denom) if denom > 0 else float(np.array_equal(x, y))


def call_kind(graph: str, feeds: Feeds) -> str:
    """``prefill`` or ``decode`` for an ``llm`` call (by its token count), else ``call``."""
    if graph == "llm":
        return "decode" if feeds["inputs_embeds"].shape[1] == 1 else "prefill"
    return "call"


def check_sample(graph: str, feeds: list[Feeds], count: int = CHECK_FEEDS) -> list[Feeds]:
    """Up to ``count`` recorded inputs of each call kind, evenly spread over the recording."""
    kinds: dict[str, list[Feeds]] = {}
    for f in feeds:
        kinds.setdefault(call_kind(graph, f), []).append(f)
    return [f for group in kinds.values() for f in spread(group, count)]


def compare(
    fp32_path: str | Path,
    int8_path: str | Path,
    graph: str,
    feeds: list[Feeds],
    repeats: int = TIMING_REPEATS,
    threads: int = 0,
    min_seconds: float = MIN_TIMING_SECONDS,
) -> dict[str, Any]:
    """int8 against fp32 on ``feeds`` in onnxruntime CPU: the worst cosine per float output, and per call
    kind the median latency of each and the speedup. Runs alternate fp32/int8 after one warm-up each, at
    least ``repeats`` of each and more (up to :data:`MAX_REPEATS`) until each side ran ``min_seconds``."""
    fp32, int8 = _session(Path(fp32_path), threads), _session(Path(int8_path), threads)
    names = [o.name for o in fp32.get_outputs()]
    worst: dict[str, float] = {}
    for f in feeds:
        ref, out = fp32.run(names, f), int8.run(names, f)
        for name, r, o in zip(names, ref, out, strict=True):
            if np.issubdtype(r.dtype, np.floating) and not name.endswith("kv_cache_out"):
                worst[name] = min(worst.get(name, 1.0), cosine(r, o))
    kinds: dict[str, list[Feeds]] = {}
    for f in feeds:
        kinds.setdefault(call_kind(graph, f), []).append(f)
    timing: dict[str, dict[str, float]] = {}
    for kind, group in kinds.items():
        sample = group[:: max(1, len(group) // 2)][:2]
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for sess in (fp32, int8):
            for f in sample:
                sess.run(names, f)
        spent = 0.0
        while len(times["fp32"]) < repeats or (spent < min_seconds and len(times["fp32"]) < MAX_REPEATS):
            for label, sess in (("fp32", fp32), ("int8", int8)):
                t0 = time.perf_counter()
                for f in sample:
                    sess.run(names, f)
                elapsed = time.perf_counter() - t0
                spent += elapsed / 2
                times[label].append(elapsed * 1000 / len(sample))
        fp32_ms, int8_ms = statistics.median(times["fp32"]), statistics.median(times["int8"])
        timing[kind] = {
            "fp32_ms": round(fp32_ms, 3),
            "int8_ms": round(int8_ms, 3),
            "speedup": round(fp32_ms / int8_ms, 3),
            "runs": len(times["fp32"]),
        }
    return {
        "cosine": round(min(worst.values()), 6),
        "cosine_per_output": {k: round(v, 6) for k, v in worst.items()},
        "timing": timing,
        "speedup": round(min(t["speedup"] for t in timing.values()), 3),
    }


def verdict(
    measured: dict[str, Any], min_cosine: float = MIN_COSINE, min_speedup: float = MIN_SPEEDUP
) -> str | None:
    """Why a candidate measured by :func:`compare` is not kept (None when it is: its cosine holds, no call
    kind is slower than fp32 and one is at least ``min_speedup`` faster)."""
    cos, timing = measured["cosine"], measured["timing"]
    if cos < min_cosine:
        return f"cosine {cos:.4f} < {min_cosine}"
    slowest = min(timing, key=lambda k: timing[k]["speedup"])
    fastest = max(timing, key=lambda k: timing[k]["speedup"])
    if timing[slowest]["speedup"] < 1.0:
        return f"slower than fp32 on {slowest} ({timing[slowest]['speedup']:.2f}x)"
    if timing[fastest]["speedup"] < min_speedup:
        return f"{timing[fastest]['speedup']:.2f}x < {min_speedup}x does not pay"
    return None


def choose(
    candidates: dict[str, dict[str, Any]],
    min_cosine: float = MIN_COSINE,
    min_speedup: float = MIN_SPEEDUP,
    force: bool = False,
) -> tuple[str, str]:
    """(mode, reason) over the measured candidates (mode → :func:`compare` figures): the kept candidate
    with the highest speedup, else ``fp32``. ``force`` takes the candidate with the best cosine instead."""
    if not candidates:
        return "fp32", "nothing to quantize"
    rejected = {m: verdict(c, min_cosine, min_speedup) for m, c in candidates.items()}
    kept = [m for m, why in rejected.items() if why is None]
    why_not = "; ".join(f"{m}: {why}" for m, why in rejected.items() if why)
    if force:
        best = max(candidates, key=lambda m: candidates[m]["cosine"])
        c = candidates[best]
        return best, f"forced: cosine {c['cosine']:.4f}, {c['speedup']:.2f}x" + (
            f" ({why_not})" if why_not else ""
        )
    if not kept:
        return "fp32", why_not
    best = max(kept, key=lambda m: candidates[m]["speedup"])
    detail = ", ".join(f"{k} {v['speedup']:.2f}x" for k, v in candidates[best]["timing"].items())
    return best, f"pays ({detail}) at cosine {candidates[best]['cosine']:.4f}" + (
        f"; not {why_not}" if why_not else ""
    )


# ------------------------------------------------------------------------------------------- export folder
def _load_avg() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def _graph_entry(folder: Path, path: Path) -> dict[str, Any]:
    """The manifest fields that describe an ONNX file (as the export writes them)."""
    import onnx

    from mobile_o_ros.export.onnx_export import _check_standard_ops, _io_description, onnx_weight_bytes

    proto = onnx.load(str(path), load_external_data=False)
    inputs, outputs = _io_description(proto)
    data = folder / f"{path.name}.data"
    return {
        "file": path.name,
        "files": [path.name] + ([data.name] if data.is_file() else []),
        "inputs": inputs,
        "outputs": outputs,
        "op_types": _check_standard_ops(proto, path.name),
        "num_nodes": len(proto.graph.node),
        **onnx_weight_bytes(proto),
    }


def _candidate(mode: str, src: Path, dst: Path, graph: str, feeds: list[Feeds]) -> dict[str, Any]:
    if mode == "int8-qdq":
        return quantize_graph(src, dst, graph, feeds)
    return quantize_graph_dynamic(src, dst, graph)


def _remove(path: Path) -> None:
    for f in (path, path.with_name(path.name + ".data")):
        f.unlink(missing_ok=True)


def quantize_graph_modes(
    src: Path,
    folder: Path,
    graph: str,
    feeds: list[Feeds],
    modes: tuple[str, ...] = MODES,
    min_cosine: float = MIN_COSINE,
    min_speedup: float = MIN_SPEEDUP,
    force: bool = False,
    log: Log = print,
    min_seconds: float = MIN_TIMING_SECONDS,
    keep_candidates: bool = False,
) -> tuple[dict[str, Any], Path | None]:
    """Write each mode's candidate of one graph into ``folder``, measure it against ``src`` and keep the
    chosen one (:func:`choose`; the others too with ``keep_candidates``); returns (the decision with every
    candidate's figures and file, the kept file)."""
    g0 = time.perf_counter()
    candidates: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    sample = check_sample(graph, feeds)
    for mode in modes:
        dst = folder / f"{graph}{SUFFIX[mode]}"
        try:
            info = _candidate(mode, src, dst, graph, feeds)
        except ValueError as err:
            notes[mode] = str(err)
            continue
        candidates[mode] = {
            **compare(src, dst, graph, sample, min_seconds=min_seconds),
            **info,
            "file": dst.name,
        }
        log(f"  {graph} {mode}: cosine {candidates[mode]['cosine']:.4f}, {candidates[mode]['speedup']:.2f}x")
    mode, reason = choose(candidates, min_cosine, min_speedup, force)
    for m in candidates:
        if m != mode and not keep_candidates:
            _remove(folder / f"{graph}{SUFFIX[m]}")
    chosen = candidates.get(mode, {})
    decision = {
        "mode": mode,
        "reason": reason if not notes else f"{reason}; {'; '.join(notes.values())}",
        "cosine": chosen.get("cosine", 1.0),
        "speedup": chosen.get("speedup", 1.0),
        "candidates": candidates,
        "calibration_inputs": len(feeds),
        "seconds": round(time.perf_counter() - g0, 1),
    }
    return decision, (folder / f"{graph}{SUFFIX[mode]}" if mode in candidates else None)


def quantize_export(
    export_dir: str | Path,
    calibration: CalibrationSet,
    graphs: list[str] | None = None,
    force: list[str] | tuple[str, ...] = (),
    modes: tuple[str, ...] = MODES,
    min_cosine: float = MIN_COSINE,
    min_speedup: float = MIN_SPEEDUP,
    steps: int | None = None,
    log: Log = print,
    min_seconds: float = MIN_TIMING_SECONDS,
) -> dict[str, Any]:
    """Quantize the fp32 export in ``export_dir`` where int8 pays and rewrite its manifest; returns the
    ``quantization`` section (see the module docstring). ``graphs``: the graphs to try (default all);
    ``force``: graphs kept int8 whatever their figures; ``modes``: the candidates tried per graph;
    ``steps``: denoising steps of the calibration images; ``min_seconds``: the timing budget per call kind
    (:func:`compare`)."""
    from mobile_o_ros.export.calibration import DEFAULT_STEPS
    from mobile_o_ros.export.onnx_export import memory_budget, sha256_file
    from mobile_o_ros.manifest import load_manifest

    folder = Path(export_dir)
    manifest = load_manifest(folder)
    if manifest.get("quantization"):
        raise ValueError(f"{folder} is already quantized; quantize a fresh fp32 export")
    names = graphs or list(manifest["graphs"])
    unknown = sorted((set(names) | set(force)) - set(manifest["graphs"]))
    if unknown:
        raise ValueError(f"unknown graphs {unknown}; the export has {', '.join(manifest['graphs'])}")
    bad_modes = sorted(set(modes) - set(MODES))
    if bad_modes or not modes:
        raise ValueError(f"int8 modes must be some of {', '.join(MODES)}, got {', '.join(modes) or 'none'}")
    t0 = time.perf_counter()
    log(f"calibrating on {calibration.describe()}")
    recorded = collect_feeds(folder, calibration, steps=steps or DEFAULT_STEPS)
    load_before = _load_avg()
    decisions: dict[str, Any] = {}
    for name in names:
        meta = manifest["graphs"][name]
        feeds = recorded.get(name, [])
        if not feeds:
            decisions[name] = {"mode": "fp32", "reason": "no calibration inputs reached this graph"}
            continue
        decision, kept = quantize_graph_modes(
            folder / meta["file"],
            folder,
            name,
            feeds,
            modes,
            min_cosine,
            min_speedup,
            name in force,
            log,
            min_seconds,
        )
        decisions[name] = decision
        log(f"{name}: {decision['mode']}: {decision['reason']}")
        if kept is not None:
            manifest["graphs"][name] = {
                **meta,
                **_graph_entry(folder, kept),
                "fp32_file": meta["file"],
                "fp32_files": meta["files"],
            }
    for name in manifest["graphs"]:
        decisions.setdefault(name, {"mode": "fp32", "reason": "not tried"})
    section = {
        "scheme": {
            "ops": list(QUANTIZED_OPS),
            "int8-qdq": (
                "QDQ (onnxruntime and TensorRT): int8 symmetric activations per tensor (MinMax calibration), "
                "int8 symmetric weights per output channel"
            ),
            "int8-dynamic": (
                "onnxruntime only (TensorRT builds the fp32 graph): MatMuls (and pointwise Convs as MatMuls) "
                "with int8 weights per output channel, inputs quantized per call (DynamicQuantizeLinear + "
                "MatMulInteger); other Convs fp32"
            ),
            "kept_fp32": "precision-policy islands and products of two activations",
            "tool": f"onnxruntime.quantization {_ort_version()}",
        },
        "criteria": {
            "min_cosine": min_cosine,
            "min_speedup": min_speedup,
            "modes_tried": list(modes),
            "measured_on": "onnxruntime CPU, this machine",
        },
        "calibration": calibration.describe(),
        "load_average": {"before": load_before, "after": _load_avg()},
        "seconds": round(time.perf_counter() - t0, 1),
        "graphs": decisions,
    }
    manifest["quantization"] = section
    files = set(manifest["files"]) | {f for g in manifest["graphs"].values() for f in g["files"]}
    manifest["files"] = {f: manifest["files"].get(f) or sha256_file(folder / f) for f in sorted(files)}
    manifest["memory_budget"] = memory_budget(
        manifest["graphs"], manifest["memory_budget"]["embed_table_bytes"]
    )
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return section


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
