"""TensorRT backend: the engines of ``mobile-o build-engines`` behind the :class:`Backend` interface.

TensorRT 10.3 (JetPack 6) Python API with pycuda, both imported when the backend is created:

* the engine cache is checked first; missing or stale engines are refused with the reason and the
  ``mobile-o build-engines`` command to run (nothing is built at load);
* every engine is deserialized once (streamed from disk, no second copy in memory); one execution context
  per optimisation profile (prefill and decode for ``llm``, one static profile per DiT text bucket), each
  created with user-managed device memory (``create_execution_context(USER_MANAGED)`` +
  ``set_device_memory``; the ``..._without_device_memory`` form on TensorRT releases before those) and all
  on ONE scratch block sized to the largest ``device_memory_size_v2``; calls are serialized on one
  stream, so the block is never used by two contexts at once;
* I/O device buffers are allocated once at the largest profile shapes and never move; host staging
  buffers are page-locked (``pagelocked_empty``), so the copies are truly asynchronous;
* the ``llm`` graph's KV cache stays on the device between calls (:meth:`TensorRTBackend.kv_cache`): its
  two buffers are swapped with ``set_tensor_address`` each call, and only the embeddings, positions and
  mask go in and the asked outputs come out. The engine's KV I/O is fp16 when the build made it so;
* pycuda binds contexts to threads: the backend retains the device's *primary* context (the one TensorRT's
  runtime API uses), pushes/pops it around every call, and only the thread that created the backend may
  call :meth:`run` or :meth:`close` (a ROS worker thread owns it; anything else raises ``BackendError``);
* DiT calls are padded to the engine's text-length bucket with mask zeros, and to the CFG batch of 2 (exact,
  see :mod:`mobile_o_ros.trt.profiles`); with ``use_cuda_graphs`` every context whose profile is static
  (vision, VAE, each DiT bucket) gets its own CUDA graph, captured after one warm-up enqueue. A context's
  shapes never change after creation, so a graph never replays against another shape's state;
* with ``timing`` CUDA events on the backend's stream split every call into host-to-device copies,
  enqueue (GPU execution) and device-to-host copies (:meth:`timings`).
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.runtime.backend import Backend, BackendError, KVCache, check_feeds
from mobile_o_ros.trt import cache
from mobile_o_ros.trt.profiles import ProfileError, pad_dit_feeds, select_profile

#: The inputs and outputs of a graph whose cache the backend keeps on the device.
KV_INPUT, KV_OUTPUT = "kv_cache", "kv_cache_out"


class _DriverGraphs:
    """CUDA stream capture through the driver API (ctypes; pycuda has no graph API)."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError as err:
            raise BackendError(f"CUDA graphs need the CUDA driver library: {err}") from err
        vp = ctypes.c_void_p
        for fn, args in {
            "cuStreamBeginCapture_v2": [vp, ctypes.c_int],
            "cuStreamEndCapture": [vp, ctypes.POINTER(vp)],
            "cuGraphInstantiateWithFlags": [ctypes.POINTER(vp), vp, ctypes.c_ulonglong],
            "cuGraphLaunch": [vp, vp],
            "cuGraphExecDestroy": [vp],
            "cuGraphDestroy": [vp],
        }.items():
            getattr(self.lib, fn).argtypes = args

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise BackendError(f"CUDA graph {what} failed with driver error {rc}")

    def capture(self, stream: int, enqueue: Any) -> int:
        """Record ``enqueue()`` (which must only enqueue work on ``stream``) into an executable graph."""
        mode_global = 0  # CU_STREAM_CAPTURE_MODE_GLOBAL, as demoDiffusion
        self._check(self.lib.cuStreamBeginCapture_v2(stream, mode_global), "begin capture")
        ok = False
        try:
            ok = bool(enqueue())
        finally:
            graph = ctypes.c_void_p()
            rc = self.lib.cuStreamEndCapture(stream, ctypes.byref(graph))
        self._check(rc, "end capture")
        if not ok:
            self.lib.cuGraphDestroy(graph)
            raise BackendError("execute_async_v3 failed during CUDA graph capture")
        exec_ = ctypes.c_void_p()
        rc = self.lib.cuGraphInstantiateWithFlags(ctypes.byref(exec_), graph, 0)
        self.lib.cuGraphDestroy(graph)
        self._check(rc, "instantiate")
        if exec_.value is None:
            raise BackendError("cuGraphInstantiateWithFlags returned no executable graph")
        return int(exec_.value)

    def launch(self, graph_exec: int, stream: int) -> None:
        """Replay a captured graph on ``stream``."""
        self._check(self.lib.cuGraphLaunch(graph_exec, stream), "launch")

    def destroy(self, graph_exec: int) -> None:
        """Free an executable graph."""
        self.lib.cuGraphExecDestroy(graph_exec)


@dataclass
class _Engine:
    graph: str
    file: str
    engine: Any
    inputs: list[str]
    outputs: list[str]
    dtypes: dict[str, np.dtype]
    ranges: list[dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]
    contexts: list[Any] = field(default_factory=list)
    static: list[bool] = field(default_factory=list)
    buffers: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    host: dict[str, np.ndarray] = field(default_factory=dict)
    buckets: tuple[int, ...] = ()
    cuda_graphs: dict[int, int | None] = field(default_factory=dict)
    size_bytes: int = 0
    device_memory_bytes: int = 0

    @property
    def has_kv(self) -> bool:
        return KV_INPUT in self.inputs and KV_OUTPUT in self.outputs


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _static(ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    return all(lo == hi for lo, hi in ranges.values())


class _DeviceKVCache(KVCache):
    """The ``llm`` cache as two device buffers, swapped after every call (the output becomes the input)."""

    backend: TensorRTBackend

    def __init__(self, backend: TensorRTBackend, eng: _Engine, shape: tuple[int, ...]) -> None:
        self.backend, self.graph, self.shape = backend, eng.graph, tuple(int(d) for d in shape)
        self._eng = eng
        nbytes = _volume(self.shape) * eng.dtypes[KV_INPUT].itemsize
        if nbytes > eng.capacity[KV_INPUT]:
            raise BackendError(
                f"{eng.graph}: a KV cache of {list(self.shape)} exceeds the engine's largest profile; "
                "shorten the prompt or rebuild the engines with a larger target "
                "(mobile-o build-engines --target desktop)"
            )
        self.pair: list[Any] | None = [eng.buffers[KV_INPUT], eng.buffers[KV_OUTPUT]]
        backend._zero(self.pair[0], nbytes)

    def run(
        self, feeds: dict[str, np.ndarray], outputs: tuple[str, ...] = ("logits",)
    ) -> dict[str, np.ndarray]:
        """One call with the cache on the device; only ``outputs`` are copied back."""
        if self.pair is None:
            raise BackendError(f"the KV cache of graph {self.graph!r} is closed")
        out = self.backend._call(self._eng, feeds, outputs, kv=(self.pair[0], self.pair[1], self.shape))
        self.pair.reverse()
        return out

    def read(self) -> np.ndarray:
        """A host copy (fp32) of the device cache: the buffer the next call reads."""
        if self.pair is None:
            raise BackendError(f"the KV cache of graph {self.graph!r} is closed")
        return self.backend._kv_transfer(self._eng, self.pair[0], self.shape, None)

    def load(self, values: np.ndarray) -> None:
        """Copy a host array of the cache's shape into the buffer the next call reads."""
        if self.pair is None:
            raise BackendError(f"the KV cache of graph {self.graph!r} is closed")
        values = np.asarray(values)
        if values.shape != self.shape:
            raise BackendError(f"KV cache of {self.graph!r} is {list(self.shape)}, got {list(values.shape)}")
        self.backend._kv_transfer(self._eng, self.pair[0], self.shape, values)

    def close(self) -> None:
        """Forget the buffers (they belong to the backend and are reused by the next cache)."""
        self.pair = None


class TensorRTBackend(Backend):
    """One deserialized engine per graph, contexts per profile, one stream, owned by the creating thread."""

    name = "tensorrt"

    def __init__(
        self,
        export_dir: str | Path,
        manifest: dict[str, Any],
        engine_dir: str | Path | None = None,
        use_cuda_graphs: bool = False,
        precision: str = "fp16",
        graphs: list[str] | None = None,
        verify_engines: bool = False,
        timing: bool = False,
        **_: Any,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        model_name = manifest["model"].get("name")
        self.engine_dir = Path(engine_dir) if engine_dir else cache.default_engine_dir(model_name)
        self.precision = precision
        self.use_cuda_graphs = bool(use_cuda_graphs)
        self.timing = bool(timing)
        self._owner = threading.get_ident()
        self._owner_name = threading.current_thread().name
        self._closed = False
        self._engines: dict[str, _Engine] = {}
        self._scratch: Any = None  # pycuda DeviceAllocation
        self.scratch_bytes = 0
        self._stream: Any = None  # pycuda Stream
        self._events: list[Any] = []
        self._timings: dict[str, dict[str, Any]] = {}
        self._graph_api: _DriverGraphs | None = None
        selected = [g for g in manifest["graphs"] if graphs is None or g in graphs]
        records = self._check_engines(selected, verify_engines)

        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as err:
            raise BackendError(f"the tensorrt backend needs TensorRT and pycuda: {err}") from err
        self._cuda, self._trt = cuda, trt
        cuda.init()
        self._device = cuda.Device(0)
        self._context = self._device.retain_primary_context()
        self._context.push()
        try:
            self._load(selected, records)
        except BaseException:
            self._release()
            cuda.Context.pop()
            self._context.detach()
            self._closed = True
            raise
        cuda.Context.pop()

    # ------------------------------------------------------------------------------------------ loading
    def _check_engines(self, selected: list[str], verify: bool) -> dict[str, dict[str, Any]]:
        """engines.json entries for ``selected``; raise with the build command when any is not fresh."""
        from mobile_o_ros.trt.builder import expected_keys

        hint = (
            f"run `mobile-o build-engines {self.export_dir} {self.engine_dir} "
            f"--precision {self.precision}` on this device"
        )
        try:
            recorded = cache.load_engine_manifest(self.engine_dir)
        except cache.EngineCacheError as err:
            raise BackendError(f"{err}; {hint}") from err
        entries = {g: recorded["engines"].get(cache.engine_filename(g, self.precision)) for g in selected}
        missing = [cache.engine_filename(g, self.precision) for g, e in entries.items() if e is None]
        if missing:
            raise BackendError(f"no TensorRT engines {', '.join(missing)} in {self.engine_dir}; {hint}")
        try:
            self._env = cache.detect_environment()
            problems = []
            for g, entry in entries.items():
                target = entry.get("target", "orin-nano")
                key = expected_keys(
                    self.export_dir,
                    self.manifest,
                    self.precision,
                    target,
                    self._env,
                    [g],
                    strongly_typed=bool(entry.get("strongly_typed", False)),
                    tf32=bool(entry.get("tf32", False)),
                )[g]
                status = cache.check(self.engine_dir, g, self.precision, key, verify, manifest=recorded)
                if not status.fresh:
                    name = cache.engine_filename(g, self.precision)
                    problems.append(f"{name} {status.state} ({status.reason})")
        except (cache.EngineCacheError, ValueError) as err:
            raise BackendError(str(err)) from err
        if problems:
            raise BackendError(
                f"TensorRT engines in {self.engine_dir} are not usable: {'; '.join(problems)}; {hint}"
            )
        return entries

    def _deserialize(self, runtime: Any, path: Path) -> Any:
        trt = self._trt
        if hasattr(trt, "IStreamReader"):
            reader_base: Any = trt.IStreamReader

            class _Reader(reader_base):
                def __init__(self, fh: Any) -> None:
                    reader_base.__init__(self)
                    self.fh = fh

                def read(self, size: int) -> bytes:
                    return self.fh.read(size)

            with open(path, "rb") as fh:
                engine = runtime.deserialize_cuda_engine(_Reader(fh))
        else:
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT could not deserialize {path}; rebuild it with `mobile-o build-engines`"
            )
        return engine

    @staticmethod
    def device_memory_size(engine: Any) -> int:
        """The scratch an engine's contexts need: ``device_memory_size_v2`` where TensorRT has it."""
        if hasattr(engine, "device_memory_size_v2"):
            return int(engine.device_memory_size_v2)
        return int(engine.device_memory_size)

    def _load(self, selected: list[str], records: dict[str, dict[str, Any]]) -> None:
        trt, cuda = self._trt, self._cuda
        self._stream = cuda.Stream()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        for graph in selected:
            file = cache.engine_filename(graph, self.precision)
            engine = self._deserialize(self._runtime, self.engine_dir / file)
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            dynamic = [n for n in inputs if any(d < 0 for d in engine.get_tensor_shape(n))]
            ranges = []
            for p in range(engine.num_optimization_profiles):
                shapes = {n: engine.get_tensor_profile_shape(n, p) for n in dynamic}
                ranges.append({n: (tuple(s[0]), tuple(s[2])) for n, s in shapes.items()})
            record = records[graph]
            self._engines[graph] = _Engine(
                graph,
                file,
                engine,
                inputs,
                [n for n in names if n not in inputs],
                {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names},
                ranges or [{}],
                buckets=tuple(record.get("dit_buckets") or ()),
                size_bytes=int(record.get("size_bytes", 0)),
                device_memory_bytes=self.device_memory_size(engine),
            )
        scratch = max((e.device_memory_bytes for e in self._engines.values()), default=0)
        self._scratch = cuda.mem_alloc(max(scratch, 1))
        self.scratch_bytes = scratch
        for eng in self._engines.values():
            self._activate(eng)
        if self.timing:
            self._events = [cuda.Event() for _ in range(4)]
        if self.use_cuda_graphs:
            self._graph_api = _DriverGraphs()

    def _new_context(self, engine: Any) -> Any:
        """A context on the shared scratch block (user-managed device memory)."""
        trt = self._trt
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        if strategy is not None:
            ctx = engine.create_execution_context(strategy.USER_MANAGED)
        else:
            ctx = engine.create_execution_context_without_device_memory()
        if ctx is None:
            raise BackendError("TensorRT could not create an execution context")
        if hasattr(ctx, "set_device_memory"):
            ctx.set_device_memory(int(self._scratch), max(self.scratch_bytes, 1))
        else:
            ctx.device_memory = int(self._scratch)
        return ctx

    def _activate(self, eng: _Engine) -> None:
        """Contexts per profile on the shared scratch block, and I/O buffers at the largest shapes.

        A static profile's context is set to its shapes here and never changes them again.
        """
        need: dict[str, int] = {}
        for p, ranges in enumerate(eng.ranges):
            try:
                ctx = self._new_context(eng.engine)
            except BackendError as err:
                raise BackendError(f"{eng.file}: {err}") from err
            if len(eng.ranges) > 1:
                ctx.set_optimization_profile_async(p, self._stream.handle)
            for name in eng.inputs:
                shape = ranges[name][1] if name in ranges else tuple(eng.engine.get_tensor_shape(name))
                if not ctx.set_input_shape(name, shape):
                    raise BackendError(f"{eng.file}: cannot set {name} to {list(shape)} in profile {p}")
            for name in eng.inputs + eng.outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"{eng.file}: output {name} has a data-dependent shape {list(shape)}")
                need[name] = max(need.get(name, 0), _volume(shape) * eng.dtypes[name].itemsize)
            eng.contexts.append(ctx)
            eng.static.append(_static(ranges))
        self._stream.synchronize()
        for name, nbytes in need.items():
            eng.buffers[name] = self._cuda.mem_alloc(max(nbytes, 1))
            eng.capacity[name] = nbytes
        for ctx in eng.contexts:
            for name, buf in eng.buffers.items():
                ctx.set_tensor_address(name, int(buf))

    # ------------------------------------------------------------------------------------------ running
    def _check_owner(self) -> None:
        if threading.get_ident() != self._owner:
            raise BackendError(
                f"TensorRTBackend belongs to thread {self._owner_name!r} that created it (pycuda binds the "
                f"CUDA context and stream to it); call it from that thread, or create the backend in the "
                f"worker thread that runs the model (called from {threading.current_thread().name!r})"
            )
        if self._closed:
            raise BackendError("TensorRTBackend is closed")

    def _engine(self, graph: str) -> _Engine:
        self._check_owner()
        eng = self._engines.get(graph)
        if eng is None:
            raise BackendError(f"graph {graph!r} is not loaded (loaded: {sorted(self._engines)})")
        return eng

    def _host(self, eng: _Engine, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The page-locked staging array of ``name`` viewed at ``shape`` (allocated on first use)."""
        if name not in eng.host:
            eng.host[name] = self._cuda.pagelocked_empty(max(eng.capacity[name], 1), np.uint8)
        dtype = eng.dtypes[name]
        return eng.host[name][: _volume(shape) * dtype.itemsize].view(dtype).reshape(shape)

    def _kv_transfer(
        self, eng: _Engine, buf: Any, shape: tuple[int, ...], values: np.ndarray | None
    ) -> np.ndarray:
        """Copy a KV cache between the device buffer ``buf`` and the host through the page-locked staging
        array of the cache input: to the device when ``values`` is given, else back to the host (fp32)."""
        self._check_owner()
        self._context.push()
        try:
            staged = self._host(eng, KV_INPUT, shape)  # page-locked: allocated inside the context
            if values is not None:
                np.copyto(staged, values, casting="unsafe")
                self._cuda.memcpy_htod_async(buf, staged, self._stream)
            else:
                self._cuda.memcpy_dtoh_async(staged, buf, self._stream)
            self._stream.synchronize()
        finally:
            self._cuda.Context.pop()
        return staged.astype(np.float32, copy=True)

    def _zero(self, buf: Any, nbytes: int) -> None:
        self._context.push()
        try:
            self._cuda.memset_d8_async(buf, 0, nbytes, self._stream)
        finally:
            self._cuda.Context.pop()

    def _enqueue(self, eng: _Engine, profile: int, ctx: Any) -> None:
        handle = self._stream.handle
        graph_api = self._graph_api if eng.static[profile] else None
        exec_ = eng.cuda_graphs.get(profile) if graph_api is not None else None
        if graph_api is not None and exec_:
            graph_api.launch(exec_, handle)
            return
        if not ctx.execute_async_v3(handle):
            raise BackendError(f"TensorRT execution of {eng.file} failed (execute_async_v3 returned False)")
        if graph_api is not None and profile not in eng.cuda_graphs:  # the call above was the warm-up enqueue
            try:
                eng.cuda_graphs[profile] = graph_api.capture(handle, lambda: ctx.execute_async_v3(handle))
            except BackendError:
                eng.cuda_graphs[profile] = None  # not capturable: keep enqueuing normally

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate, pad (DiT), pick the profile, copy in, enqueue, copy out, synchronise."""
        eng = self._engine(graph)
        check_feeds(graph, self.manifest["graphs"][graph]["inputs"], feeds)
        return self._call(eng, feeds, tuple(eng.outputs))

    def kv_cache(self, graph: str, shape: tuple[int, ...]) -> KVCache:
        """A zeroed cache that stays on the device (the engine's two KV buffers, swapped every call)."""
        eng = self._engine(graph)
        if not eng.has_kv:
            raise BackendError(f"graph {graph!r} has no {KV_INPUT}/{KV_OUTPUT}")
        return _DeviceKVCache(self, eng, shape)

    def _call(
        self,
        eng: _Engine,
        feeds: dict[str, np.ndarray],
        outputs: tuple[str, ...],
        kv: tuple[Any, Any, tuple[int, ...]] | None = None,
    ) -> dict[str, np.ndarray]:
        """One engine call. ``kv`` = (input buffer, output buffer, shape) keeps the cache on the device."""
        self._check_owner()
        graph = eng.graph
        meta = self.manifest["graphs"][graph]
        if kv is not None:
            spec = [s for s in meta["inputs"] if s["name"] != KV_INPUT]
            check_feeds(graph, spec, feeds)
        batch = None
        try:
            if eng.buckets:
                batch = feeds[next(iter(feeds))].shape[0]
                feeds = pad_dit_feeds(feeds, eng.buckets)
            shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in eng.inputs if n in feeds}
            if kv is not None:
                shapes[KV_INPUT] = kv[2]
            profile = select_profile(eng.ranges, shapes, graph)
        except ProfileError as err:
            raise BackendError(str(err)) from err
        ctx, cuda, stream = eng.contexts[profile], self._cuda, self._stream
        t0 = time.perf_counter()
        self._context.push()
        try:
            if not eng.static[profile]:
                for name, shape in shapes.items():
                    if not ctx.set_input_shape(name, shape):
                        raise BackendError(f"{graph}: TensorRT rejected {name} shape {list(shape)}")
            host_out: dict[str, np.ndarray] = {}
            for name in eng.outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                if (
                    any(d < 0 for d in shape)
                    or _volume(shape) * eng.dtypes[name].itemsize > eng.capacity[name]
                ):
                    raise BackendError(f"{graph}: output {name} shape {list(shape)} exceeds its buffer")
                if name in outputs:
                    host_out[name] = self._host(eng, name, shape)
            if kv is not None:
                ctx.set_tensor_address(KV_INPUT, int(kv[0]))
                ctx.set_tensor_address(KV_OUTPUT, int(kv[1]))
            elif eng.has_kv:  # a host-fed call after a device cache: the engine's own pair, in order
                ctx.set_tensor_address(KV_INPUT, int(eng.buffers[KV_INPUT]))
                ctx.set_tensor_address(KV_OUTPUT, int(eng.buffers[KV_OUTPUT]))
            ev = self._events
            if ev:
                ev[0].record(stream)
            for name, shape in shapes.items():
                if kv is not None and name == KV_INPUT:
                    continue
                staged = self._host(eng, name, shape)
                np.copyto(staged, feeds[name], casting="unsafe")
                cuda.memcpy_htod_async(eng.buffers[name], staged, stream)
            if ev:
                ev[1].record(stream)
            self._enqueue(eng, profile, ctx)
            if ev:
                ev[2].record(stream)
            for name, arr in host_out.items():
                cuda.memcpy_dtoh_async(arr, eng.buffers[name], stream)
            if ev:
                ev[3].record(stream)
            stream.synchronize()
            if ev:
                self._account(graph, profile, ev, time.perf_counter() - t0)
        finally:
            cuda.Context.pop()
        wanted = {o["name"]: np.dtype(o["dtype"]) for o in meta["outputs"]}
        result = {n: a.astype(wanted.get(n, a.dtype), copy=True) for n, a in host_out.items()}
        if batch is not None and batch != next(iter(result.values())).shape[0]:
            result = {n: a[:batch] for n, a in result.items()}
        return result

    # ------------------------------------------------------------------------------------------ timing
    def _account(self, graph: str, profile: int, ev: list[Any], wall_s: float) -> None:
        spans = {
            "h2d_ms": ev[1].time_since(ev[0]),
            "enqueue_ms": ev[2].time_since(ev[1]),
            "d2h_ms": ev[3].time_since(ev[2]),
            "wall_ms": wall_s * 1000,
        }
        row = self._timings.setdefault(graph, {"calls": 0, **dict.fromkeys(spans, 0.0), "by_profile": {}})
        sub = row["by_profile"].setdefault(profile, {"calls": 0, **dict.fromkeys(spans, 0.0)})
        for r in (row, sub):
            r["calls"] += 1
            for k, v in spans.items():
                r[k] += v

    def timings(self, reset: bool = False) -> dict[str, dict[str, Any]]:
        """Per graph (with ``timing``): calls, GPU ms of host-to-device copies, enqueue and device-to-host
        copies (CUDA events on the backend's stream), and wall ms, also ``by_profile`` (for ``llm``: 0 the
        prefill, 1 the decode steps); ``reset`` starts a new count."""
        out = {
            g: {**r, "by_profile": {p: dict(v) for p, v in r["by_profile"].items()}}
            for g, r in self._timings.items()
        }
        if reset:
            self._timings.clear()
        return out

    # ------------------------------------------------------------------------------------------ info, close
    def memory_info(self) -> tuple[int, int]:
        """(free, total) device memory in bytes, read in the backend's context (owner thread only)."""
        self._check_owner()
        self._context.push()
        try:
            free, total = self._cuda.mem_get_info()
        finally:
            self._cuda.Context.pop()
        return int(free), int(total)

    def describe(self) -> dict[str, Any]:
        """TensorRT version, GPU, engines, shared scratch and I/O memory (+ free GPU memory on the owner)."""
        info: dict[str, Any] = {
            "backend": self.name,
            "version": getattr(self._trt, "__version__", "?"),
            "gpu": self._env.gpu,
            "compute_capability": self._env.compute_capability,
            "l4t": self._env.l4t,
            "engine_dir": str(self.engine_dir),
            "precision": self.precision,
            "cuda_graphs": self.use_cuda_graphs,
            "shared_device_memory_bytes": self.scratch_bytes,
            "io_buffer_bytes": sum(sum(e.capacity.values()) for e in self._engines.values()),
            "pinned_host_bytes": sum(sum(h.nbytes for h in e.host.values()) for e in self._engines.values()),
            "engines": {
                g: {
                    "file": e.file,
                    "size_bytes": e.size_bytes,
                    "profiles": len(e.contexts),
                    "static_profiles": sum(e.static),
                    "device_memory_bytes": e.device_memory_bytes,
                    "captured_cuda_graphs": sum(1 for v in e.cuda_graphs.values() if v),
                    "dit_buckets": list(e.buckets),
                    "io_dtypes": {n: d.name for n, d in e.dtypes.items()},
                }
                for g, e in self._engines.items()
            },
        }
        if threading.get_ident() == self._owner and not self._closed:
            free, total = self.memory_info()
            info.update(gpu_memory_free_bytes=free, gpu_memory_total_bytes=total)
        return info

    def _release(self) -> None:
        """Free graphs, buffers, contexts, engines, scratch and stream (primary context must be current)."""
        for eng in self._engines.values():
            for exec_ in eng.cuda_graphs.values():
                if exec_ and self._graph_api is not None:
                    self._graph_api.destroy(exec_)
            eng.cuda_graphs.clear()
            for buf in eng.buffers.values():
                buf.free()
            eng.buffers.clear()
            eng.host.clear()
            eng.contexts.clear()
            eng.engine = None
        self._engines.clear()
        self._events = []
        if self._scratch is not None:
            self._scratch.free()
            self._scratch = None
        self._runtime = None
        self._stream = None

    def close(self) -> None:
        """Free everything in the owning thread and release the primary context."""
        if self._closed:
            return
        self._check_owner()
        self._context.push()
        try:
            self._release()
        finally:
            self._cuda.Context.pop()
            self._context.detach()
            self._closed = True
