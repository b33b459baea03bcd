"""A CPU stand-in for ``tensorrt`` and ``pycuda.driver``: engines that run the ONNX graphs in onnxruntime,
with the semantics of the real libraries that the TensorRT path relies on.

What it models (each is something the real stack does and a test depends on):

* **Contexts.** pycuda calls that need a current CUDA context (``mem_alloc``, ``Stream``, ``Event``,
  ``mem_get_info``, ``pagelocked_empty``, enqueues) raise ``LogicError`` when none is pushed, as after the
  backend pops the primary context.
* **A stream is a queue.** Enqueued work (kernels, async copies, memsets, event records) runs in order when
  the stream is synchronized, not when it is enqueued.
* **Pageable vs page-locked memory.** An async copy from or to page-locked memory (``pagelocked_empty``) is
  queued and reads/writes the host array when it runs; one from pageable memory is synchronous: it first
  drains the stream, then copies at once (counted in ``pageable_copies``).
* **CUDA graphs freeze the state of capture time.** A captured enqueue keeps the tensor addresses it was
  captured with; the shapes a launch computes with are those of the context's last enqueue (dynamic-shape
  engines read their shape values from host memory that only an enqueue writes).
* **Explicit quantization.** A weakly typed network with QuantizeLinear/DequantizeLinear layers builds only
  with the INT8 flag (the build fails otherwise, reason in ``failed_builds``); a MatMul, Gemm or Conv fed by a
  DequantizeLinear then reports INT8 in the inspector. The engine still runs the ONNX in onnxruntime, so its
  outputs are those of the QDQ graph.
* **Engine I/O types.** A network input or output whose ``dtype`` the builder changed (fp16 KV cache) is that
  type in the engine; the kernel converts at its boundary, so fp16 rounding happens where it would.
* **The inspector.** ``get_engine_information(JSON)`` lists layers with their real output precision (pinned
  layers fp32, the rest fp16 in an FP16 build); layers of SANA's ``/attn1/`` scope are fused into one Myelin
  foreign node whose pins are ignored (as reported for TensorRT 10); dynamic-shape engines report "N/A due to
  dynamic shapes" unless an execution context with shapes is attached.
* **API generations.** ``legacy=True`` gives a TensorRT 10.0-like module without
  ``ExecutionContextAllocationStrategy``, ``set_device_memory`` and ``device_memory_size_v2``.
"""

from __future__ import annotations

import enum
import json
import sys
import time
import types
from typing import Any

import numpy as np

from mobile_o_ros.trt import cache, precision

ENV = cache.Environment(tensorrt="10.3.0", gpu="Orin", compute_capability="8.7", l4t="R36.4.3")
FOREIGN_SCOPE = "/attn1/"


class LogicError(RuntimeError):
    """pycuda.driver.LogicError."""


class FakeTRT:
    """``tensorrt`` + ``pycuda.driver`` on the CPU; see the module docstring for the semantics."""

    def __init__(self, legacy: bool = False) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.legacy = legacy
        self.memory: dict[int, bytearray] = {}
        self.next_addr = 4096
        self.builds: list[dict[str, Any]] = []
        self.failed_builds: list[str] = []
        self.executions = 0
        self.pushes = 0
        self.queue: list[Any] = []
        self.capturing: list[Any] | None = None
        self.pinned: list[tuple[int, int]] = []
        self.copies: list[tuple[str, int, bool]] = []
        self.pageable_copies = 0
        self.contexts_created: list[str] = []
        self.trt = self._make_trt()
        self.cuda = self._make_cuda()

    def install(self, monkeypatch: Any) -> FakeTRT:
        pkg = types.ModuleType("pycuda")
        pkg.driver = self.cuda
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.cuda)
        monkeypatch.setattr(cache, "gpu_identity", lambda device=0: (ENV.gpu, ENV.compute_capability))
        monkeypatch.setattr(cache, "read_l4t_release", lambda path=None: ENV.l4t)
        return self

    # ------------------------------------------------------------------------------------------ device side
    def require_context(self, what: str) -> None:
        if self.pushes <= 0:
            raise LogicError(f"{what} failed: invalid device context - no currently active context?")

    def drain(self) -> None:
        queue, self.queue = self.queue, []
        for op in queue:
            op()

    def is_pinned(self, arr: np.ndarray) -> bool:
        start = arr.__array_interface__["data"][0]
        return any(lo <= start and start + arr.nbytes <= hi for lo, hi in self.pinned)

    def read(self, addr: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(self.memory[addr], dtype, count).reshape(shape).copy()

    def write(self, addr: int, arr: np.ndarray) -> None:
        raw = np.ascontiguousarray(arr).tobytes()
        assert len(raw) <= len(self.memory[addr]), "write past the end of a device buffer"
        self.memory[addr][: len(raw)] = raw

    # ------------------------------------------------------------------------------------------ tensorrt
    def _make_trt(self) -> types.ModuleType:  # one small class per TensorRT interface
        fake, trt = self, types.ModuleType("tensorrt")
        trt.__version__ = "10.0.1" if self.legacy else ENV.tensorrt
        DataType = enum.Enum("DataType", "FLOAT HALF BF16 INT32 INT64 BOOL")
        trt.DataType, trt.float32, trt.float16 = DataType, DataType.FLOAT, DataType.HALF
        trt.bfloat16 = DataType.BF16
        trt.int32, trt.int64 = DataType.INT32, DataType.INT64
        to_np = {
            DataType.FLOAT: np.float32,
            DataType.HALF: np.float16,
            DataType.INT32: np.int32,
            DataType.INT64: np.int64,
            DataType.BOOL: np.bool_,
        }
        from_name = {
            "float32": DataType.FLOAT,
            "float16": DataType.HALF,
            "int64": DataType.INT64,
            "int32": DataType.INT32,
            "bool": DataType.BOOL,
        }
        trt.nptype = lambda dt: to_np[dt]
        trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
        trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 BF16 INT8 TF32 OBEY_PRECISION_CONSTRAINTS")
        trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
        trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
        trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED")
        trt.LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
        if not self.legacy:
            trt.ExecutionContextAllocationStrategy = enum.Enum(
                "ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED"
            )

        class Logger:
            WARNING = 2

            def __init__(self, level: int = 0) -> None:
                self.level = level

        class IProgressMonitor:
            def __init__(self) -> None:
                pass

        class IStreamReader:
            def __init__(self) -> None:
                pass

        class Tensor:
            def __init__(self, name: str, dtype: Any) -> None:
                self.name, self.dtype = name, dtype

        class Layer:
            def __init__(self, name: str, op: str, inputs: list[Any], outputs: list[Any]) -> None:
                self.name, self.metadata = name + "_trt", f"[ONNX Layer: {name}]"
                self.onnx, self.op = name, op
                self._in, self._out, self.precision, self.output_types = inputs, outputs, None, {}
                self.num_inputs, self.num_outputs = len(inputs), len(outputs)

            def get_input(self, i: int) -> Any:
                return self._in[i]

            def get_output(self, i: int) -> Any:
                return self._out[i]

            def set_output_type(self, i: int, dtype: Any) -> None:
                self.output_types[i] = dtype

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags = flags
                self.layers: list[Layer] = []
                self.inputs: list[Tensor] = []
                self.outputs: list[Tensor] = []
                self.onnx = None

            @property
            def num_layers(self) -> int:
                return len(self.layers)

            def get_layer(self, i: int) -> Layer:
                return self.layers[i]

            num_inputs = property(lambda self: len(self.inputs))
            num_outputs = property(lambda self: len(self.outputs))

            def get_input(self, i: int) -> Tensor:
                return self.inputs[i]

            def get_output(self, i: int) -> Tensor:
                return self.outputs[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Network, logger: Logger) -> None:
                self.network = network

            def parse_from_file(self, path: str) -> bool:
                model = precision.load_typed(path)
                dtypes = precision._onnx_dtypes(model)
                self.network.onnx = path

                def tensor(name: str) -> Tensor:
                    return Tensor(name, from_name.get(dtypes.get(name, ""), DataType.FLOAT))

                inits = {i.name for i in model.graph.initializer}
                self.network.inputs = [tensor(v.name) for v in model.graph.input if v.name not in inits]
                self.network.outputs = [tensor(v.name) for v in model.graph.output]
                for n in model.graph.node:
                    if n.op_type == "Constant":
                        continue
                    ins = [tensor(i) if i else None for i in n.input]
                    outs = [tensor(o) for o in n.output]
                    self.network.layers.append(Layer(n.name, n.op_type, ins, outs))
                return True

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple] = {}

            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return b"timing:" + self.data[-8:]

        class Config:
            def __init__(self) -> None:
                self.flags: set[Any] = {trt.BuilderFlag.TF32}  # TensorRT enables TF32 by default
                self.profiles: list[Profile] = []
                self.pools: dict[Any, int] = {}
                self.builder_optimization_level = 3
                self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
                self.progress_monitor = None
                self.timing = None

            def set_flag(self, f: Any) -> None:
                self.flags.add(f)

            def clear_flag(self, f: Any) -> None:
                self.flags.discard(f)

            def set_memory_pool_limit(self, pool: Any, size: int) -> None:
                self.pools[pool] = size

            def add_optimization_profile(self, p: Profile) -> int:
                self.profiles.append(p)
                return len(self.profiles) - 1

            def create_timing_cache(self, data: bytes) -> TimingCache:
                return TimingCache(bytes(data))

            def set_timing_cache(self, c: TimingCache, ignore_mismatch: bool) -> bool:
                self.timing = c
                return True

            def get_timing_cache(self) -> TimingCache:
                return self.timing

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                return Network(flags)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                mon = config.progress_monitor
                mon.phase_start("Building engine", None, 2)
                mon.step_complete("Building engine", 1)
                mon.phase_finish("Building engine")
                strongly = bool(network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
                weak_flags = {
                    trt.BuilderFlag.FP16,
                    trt.BuilderFlag.BF16,
                    trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS,
                }
                assert not (strongly and config.flags & weak_flags), (
                    "precision flags on a strongly typed network"
                )
                pinned = [la.name for la in network.layers if la.precision is not None]
                half = trt.BuilderFlag.FP16 in config.flags or strongly
                dequantized = {
                    o.name for la in network.layers if la.op == "DequantizeLinear" for o in la._out
                }
                int8 = trt.BuilderFlag.INT8 in config.flags
                if dequantized and not strongly and not int8:
                    fake.failed_builds.append("Q/DQ layers in a weakly typed network without the INT8 flag")
                    return None
                layers = []
                for la in network.layers:
                    out_float = any(o.dtype in (DataType.FLOAT, DataType.HALF) for o in la._out)
                    prec = "FP32" if (la.precision is not None or not half) else "FP16"
                    if strongly:
                        prec = "FP16" if any(o.dtype == DataType.HALF for o in la._out) else "FP32"
                    if la.op in ("MatMul", "Gemm", "Conv") and la._in and la._in[0].name in dequantized:
                        prec = "INT8"  # explicit quantization: the layer fed by a DequantizeLinear runs int8
                    layers.append(
                        {"onnx": la.onnx, "name": la.name, "op": la.op, "float": out_float, "prec": prec}
                    )
                fake.builds.append(
                    {
                        "onnx": network.onnx,
                        "flags": set(config.flags),
                        "strongly_typed": strongly,
                        "pinned": pinned,
                        "profiles": [p.shapes for p in config.profiles],
                        "pools": dict(config.pools),
                        "opt_level": config.builder_optimization_level,
                        "profiling_verbosity": config.profiling_verbosity,
                    }
                )
                profs = [
                    {n: [list(s[0]), list(s[1]), list(s[2])] for n, s in p.shapes.items()}
                    for p in config.profiles
                ]
                io = {t.name: t.dtype.name for t in [*network.inputs, *network.outputs]}
                spec = {"onnx": network.onnx, "profiles": profs, "io": io, "layers": layers}
                return json.dumps(spec).encode()

        class Inspector:
            def __init__(self, engine: Engine) -> None:
                self.engine = engine
                self.execution_context = None

            def get_engine_information(self, fmt: Any) -> str:
                assert fmt == trt.LayerInformationFormat.JSON
                dynamic = any(lo != hi for p in self.engine.profiles for lo, _, hi in p.values())
                unknown = dynamic and self.execution_context is None
                out, foreign = [], []

                def entry(name: str, op: str, prec: str, meta: str) -> dict[str, Any]:
                    fmt_ = "N/A due to dynamic shapes" if unknown else f"Row major linear {prec} format"
                    return {
                        "Name": name,
                        "LayerType": op,
                        "Inputs": [],
                        "Outputs": [{"Name": name + "_out", "Format/Datatype": fmt_}],
                        "Metadata": meta,
                    }

                def flush() -> None:
                    if foreign:
                        name = "{ForeignNode[" + foreign[0]["onnx"] + "..." + foreign[-1]["onnx"] + "]}"
                        out.append(entry(name, "Myelin", "FP16", ""))
                        foreign.clear()

                for la in self.engine.layers:
                    if FOREIGN_SCOPE in la["onnx"] and la["float"]:
                        foreign.append(la)  # fused: the pin is not honoured inside
                        continue
                    flush()
                    prec = la["prec"] if la["float"] else "Int64"
                    out.append(entry(la["name"], la["op"], prec, f"[ONNX Layer: {la['onnx']}]"))
                flush()
                return json.dumps({"Layers": out, "Bindings": self.engine.names})

        class Engine:
            def __init__(self, blob: bytes) -> None:
                spec = json.loads(blob)
                self.session = fake.ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
                self.profiles = [{n: tuple(map(tuple, s)) for n, s in p.items()} for p in spec["profiles"]]
                self.layers = spec["layers"]
                self.io = {
                    **{i.name: (trt.TensorIOMode.INPUT, i) for i in self.session.get_inputs()},
                    **{o.name: (trt.TensorIOMode.OUTPUT, o) for o in self.session.get_outputs()},
                }
                self.io_dtype = {n: DataType[t] for n, t in spec["io"].items()}
                self.names = list(self.io)
                size = 1000 + 10 * len(self.names)
                self.device_memory_size = size
                if not fake.legacy:
                    self.device_memory_size_v2 = size
                self.num_optimization_profiles = max(1, len(self.profiles))
                self.num_layers = len(self.layers)

            num_io_tensors = property(lambda self: len(self.names))

            def get_tensor_name(self, i: int) -> str:
                return self.names[i]

            def get_tensor_mode(self, name: str) -> Any:
                return self.io[name][0]

            def get_tensor_dtype(self, name: str) -> Any:
                if name in self.io_dtype:
                    return self.io_dtype[name]
                t = self.io[name][1].type
                return DataType.INT64 if "int64" in t else DataType.FLOAT

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return tuple(d if isinstance(d, int) else -1 for d in self.io[name][1].shape)

            def get_tensor_profile_shape(self, name: str, p: int) -> list[tuple[int, ...]]:
                return [tuple(s) for s in self.profiles[p][name]]

            def create_execution_context_without_device_memory(self) -> Context:
                fake.contexts_created.append("without_device_memory")
                return Context(self, None)

            def create_engine_inspector(self) -> Inspector:
                return Inspector(self)

        def create_execution_context(self: Engine, strategy: Any = None) -> Context:
            user = strategy is not None and strategy.name == "USER_MANAGED"
            fake.contexts_created.append(strategy.name if strategy is not None else "STATIC")
            return Context(self, None if user else "own")

        Engine.create_execution_context = create_execution_context

        class Context:
            def __init__(self, engine: Engine, memory: Any) -> None:
                self.engine, self.profile, self.shapes, self.addr = engine, 0, {}, {}
                self.out_shapes: dict[tuple, dict[str, tuple]] = {}
                self.device_memory = memory
                self.enqueued_shapes: dict[str, tuple] = {}

            if not fake.legacy:

                def set_device_memory(self, ptr: int, size: int) -> None:
                    assert size >= self.engine.device_memory_size, "scratch smaller than the engine needs"
                    self.device_memory = ptr

            def set_optimization_profile_async(self, p: int, stream: int) -> bool:
                self.profile = p
                return True

            def set_input_shape(self, name: str, shape: Any) -> bool:
                shape = tuple(shape)
                if self.engine.profiles:
                    lo, _, hi = self.engine.profiles[self.profile].get(name, (shape, shape, shape))
                    if not all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)):
                        return False
                self.shapes[name] = shape
                return True

            def _inputs(self) -> list[str]:
                return [n for n in self.engine.names if self.engine.io[n][0] == trt.TensorIOMode.INPUT]

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                if name in self.shapes:
                    return self.shapes[name]
                key = tuple(sorted(self.shapes.items()))
                if key not in self.out_shapes:
                    zeros = {n: np.zeros(self.shapes[n], self._onnx_dtype(n)) for n in self._inputs()}
                    outs = self.engine.session.run(None, zeros)
                    names = [o.name for o in self.engine.session.get_outputs()]
                    self.out_shapes[key] = {n: a.shape for n, a in zip(names, outs, strict=True)}
                return self.out_shapes[key][name]

            def _onnx_dtype(self, name: str) -> Any:
                return np.int64 if "int64" in self.engine.io[name][1].type else np.float32

            def set_tensor_address(self, name: str, addr: int) -> bool:
                self.addr[name] = addr
                return True

            def kernel(self, shapes: dict[str, tuple], addr: dict[str, int]) -> None:
                """The engine's work: read inputs at ``addr`` with ``shapes``, run, write outputs."""
                feeds = {}
                for n in self._inputs():
                    dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
                    feeds[n] = fake.read(addr[n], dtype, shapes[n]).astype(self._onnx_dtype(n))
                outs = self.engine.session.run(None, feeds)
                for o, a in zip(self.engine.session.get_outputs(), outs, strict=True):
                    dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(o.name)))
                    fake.write(addr[o.name], a.astype(dtype))
                fake.executions += 1

            def execute_async_v3(self, stream: int) -> bool:
                fake.require_context("execute_async_v3")
                assert self.device_memory is not None, "no device memory"
                missing = [n for n in self.engine.names if n not in self.addr]
                assert not missing, f"no address for {missing}"
                shapes, addr = dict(self.shapes), dict(self.addr)
                self.enqueued_shapes = shapes  # the host-side shape values a graph launch will read
                if fake.capturing is not None:
                    fake.capturing.append((self, addr))
                else:
                    fake.queue.append(lambda: self.kernel(shapes, addr))
                return True

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, src: Any) -> Engine:
                return Engine(src.read(1 << 30) if isinstance(src, IStreamReader) else src)

        for cls in (Logger, IProgressMonitor, IStreamReader, OnnxParser, Builder, Runtime):
            setattr(trt, cls.__name__, cls)
        return trt

    # ------------------------------------------------------------------------------------------ pycuda
    def _make_cuda(self) -> types.ModuleType:
        fake, cuda = self, types.ModuleType("pycuda.driver")
        cuda.LogicError = LogicError

        class DeviceAllocation:
            def __init__(self, nbytes: int) -> None:
                fake.require_context("cuMemAlloc")
                self.addr = fake.next_addr
                fake.next_addr += nbytes + 4096
                fake.memory[self.addr] = bytearray(nbytes)

            def __int__(self) -> int:
                return self.addr

            def free(self) -> None:  # pycuda activates the allocation's own context to free it
                del fake.memory[self.addr]

        class Ctx:
            def push(self) -> None:
                fake.pushes += 1

            def detach(self) -> None:
                fake.detached = True

            @staticmethod
            def pop() -> None:
                assert fake.pushes > 0, "pop without a pushed context"
                fake.pushes -= 1

        class Device:
            def __init__(self, i: int) -> None:
                pass

            def retain_primary_context(self) -> Ctx:
                return Ctx()

        class Stream:
            handle = 1234

            def __init__(self) -> None:
                fake.require_context("cuStreamCreate")

            def synchronize(self) -> None:
                fake.drain()

        class Event:
            def __init__(self) -> None:
                fake.require_context("cuEventCreate")
                self.t: float | None = None

            def record(self, stream: Stream | None = None) -> None:
                fake.require_context("cuEventRecord")
                fake.queue.append(lambda: setattr(self, "t", time.perf_counter()))

            def synchronize(self) -> None:
                fake.drain()

            def time_since(self, other: Event) -> float:
                assert self.t is not None and other.t is not None, "event not completed"
                return (self.t - other.t) * 1000

        def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
            fake.require_context("cuMemHostAlloc")
            arr = np.empty(shape, dtype)
            start = arr.__array_interface__["data"][0]
            fake.pinned.append((start, start + arr.nbytes))
            arr.setflags(write=True)
            fake.keep = [*getattr(fake, "keep", []), arr]
            return arr

        def htod(dev: DeviceAllocation, arr: np.ndarray, stream: Stream) -> None:
            fake.require_context("cuMemcpyHtoDAsync")
            pinned = fake.is_pinned(arr)
            fake.copies.append(("htod", arr.nbytes, pinned))

            def copy() -> None:
                raw = np.ascontiguousarray(arr).tobytes()
                assert len(raw) <= len(fake.memory[int(dev)]), "host array larger than its device buffer"
                fake.memory[int(dev)][: len(raw)] = raw

            if pinned:
                fake.queue.append(copy)
            else:  # pageable: staged synchronously
                fake.pageable_copies += 1
                fake.drain()
                copy()

        def dtoh(arr: np.ndarray, dev: DeviceAllocation, stream: Stream) -> None:
            fake.require_context("cuMemcpyDtoHAsync")
            pinned = fake.is_pinned(arr)
            fake.copies.append(("dtoh", arr.nbytes, pinned))

            def copy() -> None:
                arr.reshape(-1).view(np.uint8)[:] = np.frombuffer(fake.memory[int(dev)], np.uint8, arr.nbytes)

            if pinned:
                fake.queue.append(copy)
            else:
                fake.pageable_copies += 1
                fake.drain()
                copy()

        def memset_d8_async(dev: DeviceAllocation, value: int, count: int, stream: Stream) -> None:
            fake.require_context("cuMemsetD8Async")
            fake.queue.append(
                lambda: fake.memory[int(dev)].__setitem__(slice(0, count), bytes([value]) * count)
            )

        def mem_get_info() -> tuple[int, int]:
            fake.require_context("cuMemGetInfo")
            return 6 << 30, 8 << 30

        cuda.init, cuda.Device, cuda.Context, cuda.Stream, cuda.Event = (
            (lambda: None),
            Device,
            Ctx,
            Stream,
            Event,
        )
        cuda.mem_alloc, cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = DeviceAllocation, htod, dtoh
        cuda.pagelocked_empty, cuda.memset_d8_async, cuda.mem_get_info = (
            pagelocked_empty,
            memset_d8_async,
            mem_get_info,
        )
        return cuda


class FakeGraphs:
    """Stand-in for the driver-API CUDA graphs with the state-freezing semantics of the module docstring."""

    instances: list[FakeGraphs] = []  # noqa: RUF012
    fake: FakeTRT | None = None

    def __init__(self) -> None:
        self.captured: dict[int, list[tuple[Any, dict[str, int]]]] = {}
        self.launches = 0
        FakeGraphs.instances.append(self)

    def capture(self, stream: int, enqueue: Any) -> int:
        fake = FakeGraphs.fake
        fake.capturing = []
        try:
            ok = enqueue()
        finally:
            kernels, fake.capturing = fake.capturing, None
        assert ok
        self.captured[len(self.captured) + 1] = kernels
        return len(self.captured)

    def launch(self, graph_exec: int, stream: int) -> None:
        fake = FakeGraphs.fake
        fake.require_context("cuGraphLaunch")
        self.launches += 1
        for ctx, addr in self.captured[graph_exec]:
            shapes = dict(ctx.enqueued_shapes)  # read from host memory at launch: the last enqueue's
            fake.queue.append(lambda ctx=ctx, addr=addr, shapes=shapes: ctx.kernel(shapes, addr))

    def destroy(self, graph_exec: int) -> None:
        self.captured.pop(graph_exec)
