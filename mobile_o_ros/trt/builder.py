"""``mobile-o build-engines``: TensorRT 10 engines from an export folder, cached by what they were built from.

One engine per graph, ``ENGINE_DIR/<graph>.<precision>.engine``, recorded in ``ENGINE_DIR/engines.json``
(:mod:`mobile_o_ros.trt.cache`). The build is the TensorRT 10 Python API:

* weakly typed by default: ``create_network(0)`` (explicit batch is the TRT 10 default),
  ``OnnxParser.parse_from_file`` (external data is read from next to the file), the FP16/BF16 flag with the
  fp32 pins of :mod:`mobile_o_ros.trt.precision`; the ``llm`` engine's KV cache I/O is made fp16/bf16, so
  the cache the runtime keeps on the device is half the size;
* or, with ``strongly_typed``, a ``STRONGLY_TYPED`` network parsed from an fp16 copy of the ONNX whose fp32
  islands are explicit Casts (:mod:`mobile_o_ros.trt.typed`), written next to the engine; no precision
  flags, no pins;
* TF32 off in every build; the target's workspace cap and optimisation level; the profiles of
  :mod:`mobile_o_ros.trt.profiles`; a persistent timing cache in ENGINE_DIR and a progress monitor;
* ``profiling_verbosity = DETAILED``, and after the build the engine inspector's JSON is written next to the
  engine (``<graph>.<precision>.layers.json``): which layers really run in fp32
  (:mod:`mobile_o_ros.trt.inspect`); the engine's device memory (TensorRT's estimate of its activation
  scratch) goes into ``engines.json`` with the weight bytes: the memory budget per engine.

LM head and the Jetson CMA: a fused 152k x 896 fp16 LM head (~272 MB) was reported to break a TensorRT
Edge-LLM build on an Orin Nano with ``NvMapMemAllocInternalTagged ... error 12``; whether TensorRT's
allocations come from the 256 MiB CMA at all is not documented. The export splits the LM head along the
vocabulary (``model.lm_head_chunks``; MatMuls joined by a Concat), and the builder warns about chunks above
128 MiB at the engine's weight precision; it does not refuse them (``mobile-o gpu-report`` tries a one-chunk
build on a Jetson).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobile_o_ros.manifest import load_manifest
from mobile_o_ros.trt import cache, quantized
from mobile_o_ros.trt import precision as prec
from mobile_o_ros.trt import profiles as prof

#: LM-head chunks above this many bytes (at the engine's weight precision) get a warning.
LM_HEAD_CHUNK_LIMIT = 128 << 20
#: Engine I/O tensors whose type follows the build precision (the cache kept on the device).
HALF_IO_TENSORS = ("kv_cache", "kv_cache_out")
#: The memory target of all engines together on an Orin Nano (weights + the shared scratch).
MEMORY_TARGET_BYTES = 2 << 30
Log = Callable[[str], None]


@dataclass
class EngineResult:
    """What happened to one engine: ``built`` or ``fresh`` (reused)."""

    graph: str
    file: str
    status: str
    seconds: float = 0.0
    fp32_layers: int = 0
    size_bytes: int = 0
    device_memory_bytes: int = 0


def lm_head_chunk_bytes(manifest: dict[str, Any], precision: str) -> tuple[int, int]:
    """(bytes of the largest LM-head chunk, chunks needed to stay under the limit) at ``precision``."""
    m = manifest["model"]
    vocab, hidden, chunks = int(m["vocab_size"]), int(m["hidden_size"]), int(m.get("lm_head_chunks", 1))
    width = 4 if precision == "fp32" else 2
    largest = math.ceil(vocab / chunks) * hidden * width
    return largest, max(1, math.ceil(vocab * hidden * width / LM_HEAD_CHUNK_LIMIT))


def check_lm_head(manifest: dict[str, Any], precision: str, target: str, log: Log = print) -> bool:
    """Warn about an LM-head chunk above :data:`LM_HEAD_CHUNK_LIMIT`; returns whether it is above."""
    largest, needed = lm_head_chunk_bytes(manifest, precision)
    if largest <= LM_HEAD_CHUNK_LIMIT:
        return False
    msg = (
        f"the LM head's largest chunk is {largest / 2**20:.0f} MiB in {precision}, above "
        f"{LM_HEAD_CHUNK_LIMIT >> 20} MiB; a build of such a head was reported to fail on an Orin Nano "
        f"(NvMap error 12, a contiguous allocation). If this build fails so, re-export with "
        f"`mobile-o export CHECKPOINT OUT --lm-head-chunks {needed}`"
    )
    log(f"warning: {msg} (target {target})")
    return True


def policy_key(strongly_typed: bool, tf32: bool = False) -> str:
    """The ``precision_policy`` cache-key field: the rules' digest, and how they are applied."""
    return prec.policy_digest() + ("+strongly-typed" if strongly_typed else "") + ("+tf32" if tf32 else "")


def expected_keys(
    export_dir: str | Path,
    manifest: dict[str, Any],
    precision: str,
    target: str,
    env: cache.Environment,
    graphs: list[str] | None = None,
    verify: bool = False,
    strongly_typed: bool = False,
    tf32: bool = False,
) -> dict[str, dict[str, Any]]:
    """The cache key every engine of the export must have for this machine, precision and target (of the
    file each engine is built from: :func:`mobile_o_ros.trt.quantized.engine_graph`)."""
    t = prof.get_target(target)
    manifest = quantized.engine_manifest(manifest)
    keys = {}
    for graph in graphs or list(manifest["graphs"]):
        shapes = prof.shape_profiles(manifest["graphs"][graph], graph, t)
        digest = cache.graph_sha256(export_dir, manifest, graph, verify=verify)
        keys[graph] = cache.engine_key(
            digest,
            env,
            precision,
            policy_key(strongly_typed and precision != "fp32", tf32),
            prof.profiles_json(shapes),
            t.opt_level,
            t.workspace_bytes,
        )
    return keys


def _progress_monitor(trt: Any, log: Log, every_s: float = 30.0) -> Any:
    """A ``trt.IProgressMonitor`` that logs top-level phases and, at most every ``every_s``, step counts."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.started: dict[str, float] = {}
            self.total: dict[str, int] = {}
            self.last = 0.0
            self.cancelled = False

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0 if parent_phase is None else self.depth.get(parent_phase, 0) + 1
            self.depth[phase_name], self.started[phase_name] = depth, time.perf_counter()
            self.total[phase_name] = num_steps
            if depth <= 1:
                log(f"    {'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:  # Ctrl-C during a build surfaces here: returning False cancels the build
                now = time.perf_counter()
                if now - self.last >= every_s:
                    self.last = now
                    log(f"      {phase_name}: {step}/{self.total.get(phase_name, '?')}")
                return True
            except KeyboardInterrupt:
                self.cancelled = True
                return False

        def phase_finish(self, phase_name: str) -> None:
            if self.depth.pop(phase_name, 99) <= 1:
                log(f"    done {phase_name} in {time.perf_counter() - self.started.pop(phase_name):.1f} s")

    return Monitor()


def _half_io(trt: Any, network: Any, precision: str) -> dict[str, str]:
    """Make the cache I/O tensors fp16 (bf16) in a weakly typed reduced-precision network."""
    if precision == "fp32":
        return {}
    dtype, name = (trt.float16, "float16") if precision == "fp16" else (trt.bfloat16, "bfloat16")
    changed = {}
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    for tensor in tensors:
        if tensor.name in HALF_IO_TENSORS:
            tensor.dtype = dtype
            changed[tensor.name] = name
    return changed


def _build_one(
    onnx_path: Path,
    shapes: list[prof.ShapeProfile],
    precision: str,
    target: prof.Target,
    node_rules: dict[str, str],
    timing_cache: Path,
    log: Log,
    strongly_typed: bool = False,
    tf32: bool = False,
    int8: bool = False,
) -> tuple[Any, dict[str, str], dict[str, str]]:
    """Parse, configure and build one serialized engine; returns (IHostMemory, pinned layer → rule,
    I/O tensors whose type was changed → dtype). ``int8``: the graph has Q/DQ nodes (INT8 flag).

    When a build with half-precision cache I/O fails, it is built once more with the ONNX's fp32 I/O.
    """
    weak_half = precision != "fp32" and not strongly_typed
    common = (onnx_path, shapes, precision, target, node_rules, timing_cache, log, strongly_typed, tf32)
    blob, pinned, io_types = _try_build(*common, half_io=weak_half, int8=int8)
    if blob is None and weak_half and io_types:
        log(f"  warning: {onnx_path.name} did not build with {sorted(io_types)} in half precision; fp32 I/O")
        blob, pinned, io_types = _try_build(*common, half_io=False, int8=int8)
    if blob is None:
        raise cache.EngineCacheError(f"TensorRT failed to build {onnx_path.name}; see the TensorRT log above")
    return blob, pinned, io_types


def _try_build(
    onnx_path: Path,
    shapes: list[prof.ShapeProfile],
    precision: str,
    target: prof.Target,
    node_rules: dict[str, str],
    timing_cache: Path,
    log: Log,
    strongly_typed: bool,
    tf32: bool,
    half_io: bool,
    int8: bool = False,
) -> tuple[Any, dict[str, str], dict[str, str]]:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise cache.EngineCacheError(f"TensorRT cannot parse {onnx_path}: {errors}")
    weak_half = precision != "fp32" and not strongly_typed
    pinned = prec.apply_to_network(network, node_rules) if weak_half else {}
    io_types = _half_io(trt, network, precision) if half_io else {}
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_bytes)
    config.builder_optimization_level = target.opt_level
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    try:
        prec.configure_precision(config, precision, bool(pinned), strongly_typed, tf32, int8)
    except RuntimeError as err:
        raise cache.EngineCacheError(str(err)) from err
    for profile_shapes in shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile_shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    timing = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(timing, ignore_mismatch=False):
        log(f"  warning: {timing_cache.name} does not match this device; starting a new timing cache")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    monitor = _progress_monitor(trt, log)  # keep a Python reference for the whole build
    config.progress_monitor = monitor
    blob = builder.build_serialized_network(network, config)
    if blob is None and monitor.cancelled:
        raise KeyboardInterrupt
    if blob is not None:
        cache.write_engine(timing_cache.parent, timing_cache.name, config.get_timing_cache().serialize())
    del parser, network, config, builder, monitor
    return blob, pinned, io_types


def inspect_engine(engine_path: Path, json_path: Path, log: Log = print) -> int | None:
    """Deserialize a written engine (streamed), write the engine inspector's JSON to ``json_path`` and return
    the engine's device memory (``device_memory_size_v2`` where present); None when it cannot be loaded."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    try:
        if hasattr(trt, "IStreamReader"):

            class _Reader(trt.IStreamReader):
                def __init__(self, fh: Any) -> None:
                    trt.IStreamReader.__init__(self)
                    self.fh = fh

                def read(self, size: int) -> bytes:
                    return self.fh.read(size)

            with open(engine_path, "rb") as fh:
                engine = runtime.deserialize_cuda_engine(_Reader(fh))
        else:
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    except Exception as err:  # TensorRT raises its own error types
        log(f"  warning: cannot load {engine_path.name} to inspect it: {err}")
        return None
    if engine is None:
        log(f"  warning: cannot load {engine_path.name} to inspect it")
        return None
    size = getattr(engine, "device_memory_size_v2", None)
    device_memory = int(size if size is not None else engine.device_memory_size)
    inspector = engine.create_engine_inspector()
    context = _context_at_opt_shapes(trt, engine)
    if context is not None:  # without one, a dynamic-shape engine reports no formats
        inspector.execution_context = context
    json_path.write_text(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    del inspector, context, engine, runtime
    return device_memory


def _context_at_opt_shapes(trt: Any, engine: Any) -> Any:
    """An execution context of profile 0 at its opt shapes, for the inspector (None for static engines)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    dynamic = [n for n in inputs if any(d < 0 for d in engine.get_tensor_shape(n))]
    if not dynamic:
        return None
    context = engine.create_execution_context()
    for name in dynamic:
        context.set_input_shape(name, tuple(engine.get_tensor_profile_shape(name, 0)[1]))
    return context


def budget_lines(records: dict[str, dict[str, Any]], target_bytes: int = MEMORY_TARGET_BYTES) -> list[str]:
    """The memory budget of a set of engines.json entries: per engine and all loaded together."""
    lines, total = [], 0
    scratch = max((int(r.get("device_memory_bytes") or 0) for r in records.values()), default=0)
    for name, r in sorted(records.items()):
        size = int(r.get("size_bytes", 0))
        total += size
        lines.append(
            f"  {name}: engine {size / 2**20:.1f} MiB, activation scratch "
            f"{int(r.get('device_memory_bytes') or 0) / 2**20:.1f} MiB, ONNX weights "
            f"{int(r.get('onnx_weights_bytes') or 0) / 2**20:.1f} MiB"
        )
    whole = total + scratch
    verdict = "within" if whole <= target_bytes else "above"
    lines.append(
        f"  all engines loaded: {total / 2**20:.1f} MiB + one shared scratch {scratch / 2**20:.1f} MiB = "
        f"{whole / 2**20:.1f} MiB, {verdict} the {target_bytes / 2**30:.1f} GiB target (CUDA context, "
        "libraries, I/O buffers and the host embedding table come on top)"
    )
    return lines


def _refusal(engine_dir: Path, problems: list[str], export_dir: Path, precision: str, target: str) -> str:
    return (
        f"engines in {engine_dir} are not usable: {'; '.join(problems)}. Build them on the target "
        f"device with `mobile-o build-engines {export_dir} {engine_dir} --precision {precision} "
        f"--target {target}`"
    )


def _source_onnx(
    export_dir: Path,
    engine_dir: Path,
    meta: dict[str, Any],
    graph: str,
    precision: str,
    node_rules: dict[str, str],
    strongly_typed: bool,
    log: Log,
) -> Path:
    """The ONNX file to parse: the export's, or for a strongly typed build its typed copy in ENGINE_DIR."""
    onnx_path = export_dir / meta["file"]
    if not strongly_typed or precision == "fp32":
        return onnx_path
    from mobile_o_ros.trt.typed import write_typed_onnx

    typed = engine_dir / f"{graph}.{precision}.typed.onnx"
    islands = write_typed_onnx(onnx_path, typed, node_rules, precision)
    log(f"  {typed.name}: {precision} with {islands} fp32 islands as explicit Casts")
    return typed


def build_engines(
    export_dir: str | Path,
    engine_dir: str | Path | None = None,
    precision: str = "fp16",
    target: str = "orin-nano",
    force: bool = False,
    no_build: bool = False,
    log: Log = print,
    graphs: list[str] | None = None,
    env: cache.Environment | None = None,
    strongly_typed: bool = False,
    tf32: bool = False,
) -> list[EngineResult]:
    """Build (or reuse) one engine per graph of ``export_dir`` into ``engine_dir``.

    Fresh engines are reused unless ``force``; stale or missing ones are rebuilt, or, with ``no_build``,
    refused with an :class:`~mobile_o_ros.trt.cache.EngineCacheError` naming each engine and why.
    ``env`` overrides the detected TensorRT/GPU/L4T identity (tests). ``tf32`` leaves TF32 on (only to
    measure what it costs: ``mobile-o gpu-report``).
    """
    export_dir = Path(export_dir)
    prec.check_precision(precision)
    t = prof.get_target(target)
    if force and no_build:
        raise cache.EngineCacheError("--force and --no-build contradict each other")
    exported = load_manifest(export_dir)
    manifest = quantized.engine_manifest(exported)
    unknown = [g for g in graphs or [] if g not in manifest["graphs"]]
    if unknown:
        raise cache.EngineCacheError(f"unknown graphs {unknown} (export has {', '.join(manifest['graphs'])})")
    selected = graphs or list(manifest["graphs"])
    engine_dir = Path(engine_dir) if engine_dir else cache.default_engine_dir(manifest["model"].get("name"))
    env = env or cache.detect_environment()
    if "llm" in selected:
        check_lm_head(manifest, precision, t.name, log)
    keys = expected_keys(
        export_dir, manifest, precision, t.name, env, selected, strongly_typed=strongly_typed, tf32=tf32
    )
    recorded = cache.load_engine_manifest(engine_dir)
    statuses = {g: cache.check(engine_dir, g, precision, keys[g], manifest=recorded) for g in selected}
    if no_build:
        problems = [
            f"{cache.engine_filename(g, precision)} {s.state} ({s.reason})"
            for g, s in statuses.items()
            if not s.fresh
        ]
        if problems:
            raise cache.EngineCacheError(_refusal(engine_dir, problems, export_dir, precision, t.name))
        return [EngineResult(g, cache.engine_filename(g, precision), "fresh") for g in selected]

    engine_dir.mkdir(parents=True, exist_ok=True)
    timing_cache = engine_dir / f"timing-trt{env.tensorrt}-sm{env.compute_capability}.cache"
    typing = "strongly typed" if strongly_typed and precision != "fp32" else "weakly typed"
    log(
        f"TensorRT {env.tensorrt} on {env.gpu} (sm {env.compute_capability}, L4T {env.l4t}); {precision} "
        f"({typing}), target {t.name}: {t.description}; engines in {engine_dir}"
    )
    results = []
    for graph in selected:
        name, status = cache.engine_filename(graph, precision), statuses[graph]
        if status.fresh and not force:
            log(f"{name}: up to date")
            results.append(EngineResult(graph, name, "fresh"))
            continue
        log(f"{name}: building ({'forced' if status.fresh else status.state + ': ' + status.reason})")
        meta = manifest["graphs"][graph]
        if cache.graph_sha256(export_dir, manifest, graph, verify=True) != keys[graph]["onnx_sha256"]:
            raise cache.EngineCacheError(f"{meta['file']} does not match manifest.json; re-export")
        try:
            node_rules = prec.fp32_node_rules(export_dir / meta["file"], graph, precision)
        except ImportError as err:
            raise cache.EngineCacheError(
                f"{precision} builds need the onnx package for the precision policy ({err}): pip install onnx"
            ) from err
        shapes = prof.shape_profiles(meta, graph, t)
        int8 = quantized.has_qdq(export_dir / meta["file"])
        if int8 and strongly_typed:
            raise cache.EngineCacheError(
                f"{meta['file']} is explicitly quantized (Q/DQ); build its INT8 engine weakly typed "
                "(without --strongly-typed)"
            )
        if int8:
            summary = quantized.qdq_summary(export_dir / meta["file"])
            log(
                f"  {meta['file']}: explicit quantization, INT8 flag ({summary['int8_layers']} int8 layers "
                f"behind {summary['DequantizeLinear']} DequantizeLinear)"
            )
        elif meta["file"] != exported["graphs"][graph]["file"]:
            log(
                f"  {graph} is {quantized.mode_of(exported, graph)} (onnxruntime only); its engine is built "
                f"from {meta['file']}"
            )
        t0 = time.perf_counter()
        onnx_path = _source_onnx(
            export_dir, engine_dir, meta, graph, precision, node_rules, strongly_typed, log
        )
        blob, pinned, io_types = _build_one(
            onnx_path, shapes, precision, t, node_rules, timing_cache, log, strongly_typed, tf32, int8
        )
        seconds = time.perf_counter() - t0
        size, digest = cache.write_engine(engine_dir, name, blob)
        del blob
        gc.collect()
        (engine_dir / f"{graph}.{precision}.fp32_layers.txt").write_text(
            "".join(f"{layer}\t{rule}\n" for layer, rule in sorted(pinned.items()))
        )
        layers_json = engine_dir / f"{graph}.{precision}.layers.json"
        device_memory = inspect_engine(engine_dir / name, layers_json, log)
        entry = cache.record_engine(
            engine_dir,
            graph,
            precision,
            keys[graph],
            size,
            digest,
            target=t.name,
            dit_buckets=list(t.dit_buckets) if graph == "dit" else [],
            build_seconds=round(seconds, 1),
            fp32_layers=prec.summarize(pinned),
            onnx_fp32_nodes=len(node_rules),
            export_dir=str(export_dir),
            strongly_typed=bool(strongly_typed and precision != "fp32"),
            tf32=bool(tf32),
            int8=int8,
            source_file=meta["file"],
            io_dtypes=io_types,
            device_memory_bytes=device_memory,
            onnx_weights_bytes=int(meta.get("weights_bytes") or 0),
            layers_json=layers_json.name if device_memory is not None else None,
        )
        summary = ", ".join(f"{r} {n}" for r, n in prec.summarize(pinned).items()) or "none"
        log(
            f"{name}: built in {seconds:.0f} s, {size / 2**20:.1f} MiB; {len(pinned)} layers pinned to fp32 "
            f"in the network ({summary}; {len(node_rules)} ONNX nodes matched)"
        )
        log(budget_lines({name: entry})[0])
        if node_rules and not pinned and not strongly_typed:
            log(f"  warning: no TensorRT layer maps back to the {len(node_rules)} fp32 ONNX nodes of {graph}")
        results.append(
            EngineResult(graph, name, "built", round(seconds, 1), len(pinned), size, device_memory or 0)
        )
    entries = cache.load_engine_manifest(engine_dir)["engines"]
    names = [cache.engine_filename(g, precision) for g in selected]
    loaded = {name: entries[name] for name in names}
    log("memory budget:")
    for line in budget_lines(loaded):
        log(line)
    return results
