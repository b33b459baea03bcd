"""``mobile-o build-engines``: TensorRT 10 engines from an export folder, cached by what they were built from.

One engine per graph, ``ENGINE_DIR/<graph>.<precision>.engine``, recorded in ``ENGINE_DIR/engines.json``
(:mod:`mobile_o_ros.trt.cache`). The build is the TensorRT 10 Python API, weakly typed: ``create_network(0)``
(explicit batch is the TRT 10 default; STRONGLY_TYPED would take precision from the fp32 ONNX and is not
used), ``OnnxParser.parse_from_file`` (external data is read from next to the file), FP16/BF16 flags with
the fp32 pins of :mod:`mobile_o_ros.trt.precision`, the target's workspace cap and optimisation level, the
profiles of :mod:`mobile_o_ros.trt.profiles`, a persistent timing cache in ENGINE_DIR and a progress monitor.

LM head and the Jetson CMA limit: NvMap allocations that must be physically contiguous come from CMA, 256 MiB
by default on JetPack 6. A fused 152k x 896 fp16 LM head (~272 MB) asks Myelin for more than that and the
build dies with ``NvMapMemAllocInternalTagged ... error 12`` (trt-export §1.13). The export therefore splits
the LM head along the vocabulary (``model.lm_head_chunks`` in the manifest; MatMuls joined by a Concat) and
the builder refuses, for the orin-nano target, chunks above 128 MiB at the engine's weight precision.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobile_o_ros.runtime.manifest import load_manifest
from mobile_o_ros.trt import cache
from mobile_o_ros.trt import precision as prec
from mobile_o_ros.trt import profiles as prof

#: Largest LM-head chunk (bytes at the engine's weight precision) accepted for the orin-nano target.
LM_HEAD_CHUNK_LIMIT = 128 << 20
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


def lm_head_chunk_bytes(manifest: dict[str, Any], precision: str) -> tuple[int, int]:
    """(bytes of the largest LM-head chunk, chunks needed to stay under the limit) at ``precision``."""
    m = manifest["model"]
    vocab, hidden, chunks = int(m["vocab_size"]), int(m["hidden_size"]), int(m.get("lm_head_chunks", 1))
    width = 4 if precision == "fp32" else 2
    largest = math.ceil(vocab / chunks) * hidden * width
    return largest, max(1, math.ceil(vocab * hidden * width / LM_HEAD_CHUNK_LIMIT))


def check_lm_head(manifest: dict[str, Any], precision: str, target: str, log: Log = print) -> None:
    """Refuse (orin-nano) or warn about (desktop) an LM-head chunk above :data:`LM_HEAD_CHUNK_LIMIT`."""
    largest, needed = lm_head_chunk_bytes(manifest, precision)
    if largest <= LM_HEAD_CHUNK_LIMIT:
        return
    msg = (
        f"the LM head's largest chunk is {largest / 2**20:.0f} MiB in {precision}, above the "
        f"{LM_HEAD_CHUNK_LIMIT >> 20} MiB that fits Jetson's 256 MiB CMA; re-export with "
        f"`mobile-o export CHECKPOINT OUT --lm-head-chunks {needed}`"
    )
    if target == "orin-nano":
        raise cache.EngineCacheError(msg)
    log(f"warning: {msg} (ignored for target {target})")


def expected_keys(
    export_dir: str | Path,
    manifest: dict[str, Any],
    precision: str,
    target: str,
    env: cache.Environment,
    graphs: list[str] | None = None,
    verify: bool = False,
) -> dict[str, dict[str, Any]]:
    """The cache key every engine of the export must have for this machine, precision and target."""
    t = prof.get_target(target)
    keys = {}
    for graph in graphs or list(manifest["graphs"]):
        shapes = prof.shape_profiles(manifest["graphs"][graph], graph, t)
        digest = cache.graph_sha256(export_dir, manifest, graph, verify=verify)
        keys[graph] = cache.engine_key(
            digest,
            env,
            precision,
            prec.policy_digest(),
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


def _build_one(
    onnx_path: Path,
    shapes: list[prof.ShapeProfile],
    precision: str,
    target: prof.Target,
    node_rules: dict[str, str],
    timing_cache: Path,
    log: Log,
) -> tuple[Any, dict[str, str]]:
    """Parse, configure and build one serialized engine; returns (IHostMemory, pinned layer → rule)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise cache.EngineCacheError(f"TensorRT cannot parse {onnx_path}: {errors}")
    pinned = prec.apply_to_network(network, node_rules) if precision != "fp32" else {}
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_bytes)
    config.builder_optimization_level = target.opt_level
    prec.configure_precision(config, precision, bool(pinned))
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
    if blob is None:
        if monitor.cancelled:
            raise KeyboardInterrupt
        raise cache.EngineCacheError(f"TensorRT failed to build {onnx_path.name}; see the TensorRT log above")
    cache.write_engine(timing_cache.parent, timing_cache.name, config.get_timing_cache().serialize())
    del parser, network, config, builder, monitor
    return blob, pinned


def _refusal(engine_dir: Path, problems: list[str], export_dir: Path, precision: str, target: str) -> str:
    return (
        f"engines in {engine_dir} are not usable: {'; '.join(problems)}. Build them on the target "
        f"device with `mobile-o build-engines {export_dir} {engine_dir} --precision {precision} "
        f"--target {target}`"
    )


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
) -> list[EngineResult]:
    """Build (or reuse) one engine per graph of ``export_dir`` into ``engine_dir``.

    Fresh engines are reused unless ``force``; stale or missing ones are rebuilt, or, with ``no_build``,
    refused with an :class:`~mobile_o_ros.trt.cache.EngineCacheError` naming each engine and why.
    ``env`` overrides the detected TensorRT/GPU/L4T identity (tests).
    """
    export_dir = Path(export_dir)
    prec.check_precision(precision)
    t = prof.get_target(target)
    if force and no_build:
        raise cache.EngineCacheError("--force and --no-build contradict each other")
    manifest = load_manifest(export_dir)
    unknown = [g for g in graphs or [] if g not in manifest["graphs"]]
    if unknown:
        raise cache.EngineCacheError(f"unknown graphs {unknown} (export has {', '.join(manifest['graphs'])})")
    selected = graphs or list(manifest["graphs"])
    engine_dir = Path(engine_dir) if engine_dir else cache.default_engine_dir(manifest["model"].get("name"))
    env = env or cache.detect_environment()
    if "llm" in selected:
        check_lm_head(manifest, precision, t.name, log)
    keys = expected_keys(export_dir, manifest, precision, t.name, env, selected)
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
    log(
        f"TensorRT {env.tensorrt} on {env.gpu} (sm {env.compute_capability}, L4T {env.l4t}); {precision}, "
        f"target {t.name}: {t.description}; engines in {engine_dir}"
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
        t0 = time.perf_counter()
        onnx_path = export_dir / meta["file"]
        blob, pinned = _build_one(onnx_path, shapes, precision, t, node_rules, timing_cache, log)
        seconds = time.perf_counter() - t0
        size, digest = cache.write_engine(engine_dir, name, blob)
        del blob
        gc.collect()
        (engine_dir / f"{graph}.{precision}.fp32_layers.txt").write_text(
            "".join(f"{layer}\t{rule}\n" for layer, rule in sorted(pinned.items()))
        )
        cache.record_engine(
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
        )
        summary = ", ".join(f"{r} {n}" for r, n in prec.summarize(pinned).items()) or "none"
        log(
            f"{name}: built in {seconds:.0f} s, {size / 2**20:.1f} MiB; {len(pinned)} layers kept in fp32 "
            f"({summary}; {len(node_rules)} ONNX nodes matched)"
        )
        if node_rules and not pinned:
            log(f"  warning: no TensorRT layer maps back to the {len(node_rules)} fp32 ONNX nodes of {graph}")
        results.append(EngineResult(graph, name, "built", round(seconds, 1), len(pinned), size))
    return results
