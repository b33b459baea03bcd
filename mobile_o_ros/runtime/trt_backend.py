"""TensorRT backend: the engines of ``mobile-o build-engines`` behind the :class:`Backend` interface.

TensorRT 10.3 (JetPack 6) Python API with pycuda, both imported when the backend is created:

* the engine cache is checked first; missing or stale engines are refused with the reason and the
  ``mobile-o build-engines`` command to run (nothing is built at load);
* every engine is deserialized once (streamed from disk, no second copy in memory); execution contexts
  (one per optimisation profile: prefill and decode for ``llm_decode``) are created without device memory
  and share ONE scratch block sized to the largest ``engine.device_memory_size``; calls are serialized on
  one stream, so the block is never used by two contexts at once;
* I/O device buffers are allocated once at the largest profile shapes and never move (CUDA graphs bake
  addresses);
* pycuda binds contexts to threads: the backend retains the device's *primary* context (the one TensorRT's
  runtime API uses), pushes/pops it around every call, and only the thread that created the backend may
  call :meth:`run` or :meth:`close` (a ROS worker thread owns it; anything else raises ``BackendError``);
* DiT calls are padded to the engine's text-length bucket with mask zeros (exact, see
  :mod:`mobile_o_ros.trt.profiles`); with ``use_cuda_graphs`` the static-shape graphs (vision, DiT per bucket,
  VAE) are captured after one warm-up enqueue and replayed.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.runtime.backend import Backend, BackendError, check_feeds
from mobile_o_ros.trt import cache
from mobile_o_ros.trt.profiles import STATIC_SHAPE_GRAPHS, ProfileError, pad_dit_feeds, select_profile


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
    buffers: dict[str, Any] = field(default_factory=dict)
    capacity: dict[str, int] = field(default_factory=dict)
    buckets: tuple[int, ...] = ()
    cuda_graphs: dict[tuple, int | None] = field(default_factory=dict)
    size_bytes: int = 0


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


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
        **_: Any,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        model_name = manifest["model"].get("name")
        self.engine_dir = Path(engine_dir) if engine_dir else cache.default_engine_dir(model_name)
        self.precision = precision
        self.use_cuda_graphs = bool(use_cuda_graphs)
        self._owner = threading.get_ident()
        self._owner_name = threading.current_thread().name
        self._closed = False
        self._engines: dict[str, _Engine] = {}
        self._scratch = None
        self._stream = None
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
                key = expected_keys(self.export_dir, self.manifest, self.precision, target, self._env, [g])[g]
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

            class _Reader(trt.IStreamReader):
                def __init__(self, fh: Any) -> None:
                    trt.IStreamReader.__init__(self)
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
            )
        scratch = max((int(e.engine.device_memory_size) for e in self._engines.values()), default=0)
        self._scratch = cuda.mem_alloc(max(scratch, 1))
        self.scratch_bytes = scratch
        for eng in self._engines.values():
            self._activate(eng)
        if self.use_cuda_graphs:
            self._graph_api = _DriverGraphs()

    def _activate(self, eng: _Engine) -> None:
        """Contexts per profile on the shared scratch block, and I/O buffers at the largest shapes."""
        need: dict[str, int] = {}
        for p, ranges in enumerate(eng.ranges):
            ctx = eng.engine.create_execution_context_without_device_memory()
            if ctx is None:
                raise BackendError(f"cannot create an execution context for {eng.file}")
            ctx.device_memory = int(self._scratch)
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

    def _enqueue(self, eng: _Engine, ctx: Any, key: tuple) -> None:
        handle = self._stream.handle
        use_graph = self._graph_api is not None and eng.graph in STATIC_SHAPE_GRAPHS
        exec_ = eng.cuda_graphs.get(key) if use_graph else None
        if exec_:
            self._graph_api.launch(exec_, handle)
            return
        if not ctx.execute_async_v3(handle):
            raise BackendError(f"TensorRT execution of {eng.file} failed (execute_async_v3 returned False)")
        if use_graph and key not in eng.cuda_graphs:  # the call above was the warm-up enqueue
            try:
                eng.cuda_graphs[key] = self._graph_api.capture(handle, lambda: ctx.execute_async_v3(handle))
            except BackendError:
                eng.cuda_graphs[key] = None  # not capturable: keep enqueuing normally

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validate, pad (DiT), pick the profile, copy in, enqueue, copy out, synchronise."""
        self._check_owner()
        eng = self._engines.get(graph)
        if eng is None:
            raise BackendError(f"graph {graph!r} is not loaded (loaded: {sorted(self._engines)})")
        meta = self.manifest["graphs"][graph]
        check_feeds(graph, meta["inputs"], feeds)
        try:
            if eng.buckets:
                feeds = pad_dit_feeds(feeds, eng.buckets)
            shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in eng.inputs}
            profile = select_profile(eng.ranges, shapes, graph)
        except ProfileError as err:
            raise BackendError(str(err)) from err
        ctx, cuda = eng.contexts[profile], self._cuda
        host_in = {n: np.ascontiguousarray(feeds[n], dtype=eng.dtypes[n]) for n in eng.inputs}
        self._context.push()
        try:
            for name, arr in host_in.items():
                if not ctx.set_input_shape(name, arr.shape):
                    raise BackendError(f"{graph}: TensorRT rejected {name} shape {list(arr.shape)}")
                cuda.memcpy_htod_async(eng.buffers[name], arr, self._stream)
            host_out = {}
            for name in eng.outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                nbytes = _volume(shape) * eng.dtypes[name].itemsize
                if any(d < 0 for d in shape) or nbytes > eng.capacity[name]:
                    raise BackendError(f"{graph}: output {name} shape {list(shape)} exceeds its buffer")
                host_out[name] = np.empty(shape, dtype=eng.dtypes[name])
            for name, buf in eng.buffers.items():
                ctx.set_tensor_address(name, int(buf))
            self._enqueue(eng, ctx, (profile, tuple(sorted(shapes.items()))))
            for name, arr in host_out.items():
                cuda.memcpy_dtoh_async(arr, eng.buffers[name], self._stream)
            self._stream.synchronize()
        finally:
            cuda.Context.pop()
        wanted = {o["name"]: np.dtype(o["dtype"]) for o in meta["outputs"]}
        return {n: a.astype(wanted.get(n, a.dtype), copy=False) for n, a in host_out.items()}

    # ------------------------------------------------------------------------------------------ info, close
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
            "shared_device_memory_bytes": getattr(self, "scratch_bytes", 0),
            "io_buffer_bytes": sum(sum(e.capacity.values()) for e in self._engines.values()),
            "engines": {
                g: {
                    "file": e.file,
                    "size_bytes": e.size_bytes,
                    "profiles": len(e.contexts),
                    "device_memory_bytes": int(e.engine.device_memory_size),
                    "captured_cuda_graphs": sum(1 for v in e.cuda_graphs.values() if v),
                    "dit_buckets": list(e.buckets),
                }
                for g, e in self._engines.items()
            },
        }
        if threading.get_ident() == self._owner and not self._closed:
            self._context.push()
            try:
                free, total = self._cuda.mem_get_info()
                info.update(gpu_memory_free_bytes=int(free), gpu_memory_total_bytes=int(total))
            finally:
                self._cuda.Context.pop()
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
            eng.contexts.clear()
            eng.engine = None
        self._engines.clear()
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
