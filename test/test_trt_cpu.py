"""The TensorRT tier without TensorRT: profiles, buckets, precision policy, engine cache, CLI, and the builder
and backend driven by a CPU stand-in for ``tensorrt``/``pycuda`` that runs the ONNX graphs in onnxruntime.

The stand-in checks our control flow (API calls, shapes, profiles, buffers, padding, cache bookkeeping), not
TensorRT's numerics: those are in test_trt_gpu.py.
"""

from __future__ import annotations

import argparse
import enum
import json
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from mobile_o_ros.runtime.backend import BackendError
from mobile_o_ros.runtime.engine import decode_mask
from mobile_o_ros.runtime.manifest import load_manifest
from mobile_o_ros.trt import builder, cache, precision, profiles
from mobile_o_ros.trt.cache import EngineCacheError, Environment

pytestmark = pytest.mark.runtime

GRAPHS = ("vision", "llm", "mcp", "dit", "vae_decoder")
ENV = Environment(tensorrt="10.3.0", gpu="Orin", compute_capability="8.7", l4t="R36.4.3")


@pytest.fixture(scope="module")
def manifest(tiny_export: Path) -> dict[str, Any]:
    return load_manifest(tiny_export)


# ------------------------------------------------------------------------------------------ profiles, buckets
def test_choose_bucket_and_target_limits() -> None:
    buckets = profiles.TARGETS["orin-nano"].dit_buckets
    assert buckets == (64, 128, 256, 512)
    chosen = [profiles.choose_bucket(n, buckets) for n in (1, 64, 65, 128, 300, 512)]
    assert chosen == [64, 64, 128, 128, 512, 512]
    with pytest.raises(profiles.ProfileError, match="exceeds the largest DiT bucket 512"):
        profiles.choose_bucket(513, buckets)
    with pytest.raises(profiles.ProfileError):
        profiles.choose_bucket(0, buckets)
    assert profiles.TARGETS["desktop"].dit_buckets[-1] == profiles.TARGETS["desktop"].max_prompt == 1024
    with pytest.raises(ValueError, match="unknown target"):
        profiles.get_target("xavier")


def test_profiles_follow_the_manifest_axes(manifest: dict[str, Any]) -> None:
    g = manifest["graphs"]
    dim = manifest["model"]["caption_dim"]
    (dit,) = profiles.shape_profiles(g["dit"], "dit", "orin-nano")
    assert dit["encoder_hidden_states"] == ((1, 64, dim), (2, 128, dim), (2, 512, dim))
    assert dit["encoder_attention_mask"] == ((1, 64), (2, 128), (2, 512))
    assert dit["latents"][2] == (2, *manifest["model"]["latent_shape"])
    prefill, decode = profiles.shape_profiles(g["llm"], "llm", "orin-nano")
    assert prefill["inputs_embeds"][2][1] == 512 and prefill["kv_cache"][2][4] == 1024
    assert decode["inputs_embeds"] == ((1, 1, 64),) * 3 and decode["attention_mask"][2] == (1, 1, 1, 1024)
    (mcp,) = profiles.shape_profiles(g["mcp"], "mcp", "orin-nano")
    assert mcp["hidden_states"][1][0] == 2 and mcp["hidden_states"][2][2] == 512
    assert profiles.shape_profiles(g["vision"], "vision", "orin-nano") == [
        {"images": ((1, 3, 1024, 1024),) * 3}
    ]
    assert profiles.shape_profiles(g["vae_decoder"], "vae_decoder", "orin-nano") == []
    prefill, _ = profiles.shape_profiles(g["llm"], "llm", "desktop")
    assert prefill["inputs_embeds"][2][1] == 1024 and prefill["kv_cache"][2][4] == 2048
    with pytest.raises(profiles.ProfileError, match="no profile range"):
        profiles.input_shapes([{"name": "x", "shape": ["mystery", 3]}], {"seq": (1, 2, 3)})


def test_select_profile_prefill_vs_decode(manifest: dict[str, Any]) -> None:
    shapes = profiles.shape_profiles(manifest["graphs"]["llm"], "llm", "orin-nano")
    ranges = [{n: (s[0], s[2]) for n, s in p.items()} for p in shapes]

    def feeds(t: int, c: int) -> dict[str, tuple[int, ...]]:
        return {
            "inputs_embeds": (1, t, 64),
            "position_ids": (1, t),
            "attention_mask": (1, 1, t, c),
            "kv_cache": (4, 2, 1, 2, c, 16),
        }

    assert profiles.select_profile(ranges, feeds(300, 640)) == 0
    assert profiles.select_profile(ranges, feeds(1, 640)) == 1
    with pytest.raises(profiles.ProfileError, match=r"outside the engine's profiles.*--target desktop"):
        profiles.select_profile(ranges, feeds(600, 1024), "llm")
    assert profiles.select_profile([{}], {"latents": (1, 32, 16, 16)}) == 0


# ------------------------------------------------------------------------------------------ precision policy
def test_precision_policy_on_the_tiny_graphs(tiny_export: Path) -> None:
    dit = precision.fp32_node_rules(tiny_export / "dit.onnx", "dit")
    block = "/dit/transformer_blocks.0/attn1/"
    for node in ("Relu", "Relu_1", "Cast", "Pad", "MatMul", "MatMul_1", "Div", "Clip"):
        assert dit.get(block + node) == "sana_linear_attention", node
    assert block + "to_q/MatMul" not in dit and block + "to_out.0/MatMul" not in dit  # projections stay fp16
    assert block + "Shape" not in dit  # shape arithmetic is never pinned
    for node in ("Sin", "Cos", "Mul"):
        assert dit.get(f"/dit/time_embed/emb/time_proj/{node}") == "sana_time_embedding"
    assert "/dit/time_embed/linear/Gemm" not in dit
    assert dit.get("/dit/caption_norm/Pow") == "norm_reduction"
    assert dit.get("/dit/caption_norm/Div") == "norm_scope"
    assert dit.get("/dit/transformer_blocks.0/attn2/Softmax") == "norm_reduction"
    assert precision.fp32_layer_names(tiny_export / "dit.onnx", "dit") == sorted(dit)

    for graph in ("llm",):
        llm = precision.fp32_node_rules(tiny_export / f"{graph}.onnx", graph)
        assert {llm.get(f"/rotary_emb/{n}") for n in ("Cos", "Sin", "MatMul")} == {"rotary_embedding"}, graph
        assert any(n.endswith("input_layernorm/Pow") and r == "norm_reduction" for n, r in llm.items())
        assert any(n.endswith("input_layernorm/Div") and r == "norm_scope" for n, r in llm.items())
        assert not any("q_proj" in n or "o_proj" in n for n in llm)
    vae = precision.fp32_node_rules(tiny_export / "vae_decoder.onnx", "vae_decoder")
    attn = [n for n, r in vae.items() if r == "dcae_linear_attention"]
    assert any(n.endswith("/attn/MatMul") for n in attn)
    assert any(n.endswith("/attn/nonlinearity/Relu") for n in attn)
    assert not any("/attn/to_q/" in n for n in vae)
    assert precision.fp32_layer_names(tiny_export / "dit.onnx", "dit", precision="fp32") == []
    assert precision.fp32_node_rules(tiny_export / "dit.onnx", "dit", "bf16") == dit
    with pytest.raises(ValueError, match="unknown precision"):
        precision.fp32_layer_names(tiny_export / "dit.onnx", "dit", precision="int8")


def test_layer_metadata_maps_back_to_onnx_nodes() -> None:
    fused = "[ONNX Layer: /a/Relu]\x1f[ONNX Layer: /a/MatMul]"
    assert precision.onnx_nodes_of("x", fused) == ["/a/Relu", "/a/MatMul"]
    assert precision.onnx_nodes_of("/a/Relu_1", "") == ["/a/Relu_1"]
    assert precision.onnx_nodes_of("y", "[ONNX Layer: /f/Add | Local Function: f]") == ["/f/Add"]
    assert precision.pinnable("float32", ["float32"]) and not precision.pinnable("int64", ["float32"])
    assert not precision.pinnable("float32", ["int64"]) and not precision.pinnable(None, ["float32"])
    assert precision.policy_digest().startswith(f"v{precision.POLICY_VERSION}-")


# ------------------------------------------------------------------------------------------ padding is exact
def test_dit_padding_to_a_bucket_equals_the_unpadded_call(tiny_runtime) -> None:
    run = tiny_runtime.backend.run
    rng = np.random.default_rng(0)
    n, dim = 20, tiny_runtime.model_info["caption_dim"]
    hidden = rng.standard_normal((2, 4, n, tiny_runtime.model_info["hidden_size"])).astype(np.float32)
    cond = run("mcp", {"hidden_states": hidden})["conditioning"]
    assert cond.shape == (2, n, dim)
    feeds = {
        "latents": rng.standard_normal((2, 32, 16, 16)).astype(np.float32),
        "timestep": np.array([999.0, 999.0], np.float32),
        "encoder_hidden_states": cond,
        "encoder_attention_mask": np.ones((2, n), np.float32),
    }
    padded = profiles.pad_dit_feeds(feeds, (64, 128))
    hidden_p, mask_p = padded["encoder_hidden_states"], padded["encoder_attention_mask"]
    assert hidden_p.shape == (2, 64, dim) and mask_p.shape == (2, 64)
    assert not mask_p[:, n:].any() and not hidden_p[:, n:].any() and mask_p[:, :n].all()
    ref, out = run("dit", feeds)["velocity"], run("dit", padded)["velocity"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    # ... whereas the MCP is not padding-invariant: padding must happen after it.
    pad = np.zeros((2, 4, 64 - n, hidden.shape[-1]), np.float32)
    cond_padded = run("mcp", {"hidden_states": np.concatenate([hidden, pad], axis=2)})["conditioning"]
    assert not np.allclose(cond_padded[:, :n], cond, atol=1e-4)


# ------------------------------------------------------------------------------------------ engine cache
def _key(**changes: Any) -> dict[str, Any]:
    profile = [{"x": [[1], [2], [3]]}]
    key = cache.engine_key("a" * 64, ENV, "fp16", precision.policy_digest(), profile, 3, 1 << 30)
    key.update(changes)
    return key


def _fake_engine(engine_dir: Path, graph: str, key: dict[str, Any], prec: str = "fp16") -> None:
    engine_dir.mkdir(parents=True, exist_ok=True)
    size, digest = cache.write_engine(engine_dir, cache.engine_filename(graph, prec), b"engine-bytes")
    cache.record_engine(engine_dir, graph, prec, key, size, digest, target="orin-nano")


CHANGES = {
    "key_version": 99,
    "onnx_sha256": "b" * 64,
    "tensorrt": "10.4.0",
    "gpu": "NVIDIA H100",
    "compute_capability": "9.0",
    "l4t": "R36.4.7",
    "precision": "bf16",
    "precision_policy": "v2-000000000000",
    "profiles": [{"x": [[1], [4], [8]]}],
    "opt_level": 5,
    "workspace_bytes": 2 << 30,
}


@pytest.mark.parametrize("field", cache.KEY_FIELDS)
def test_every_key_field_invalidates_with_its_reason(tmp_path: Path, field: str) -> None:
    _fake_engine(tmp_path, "dit", _key())
    assert cache.check(tmp_path, "dit", "fp16", _key()).fresh
    status = cache.check(tmp_path, "dit", "fp16", _key(**{field: CHANGES[field]}))
    assert status.state == "stale" and status.changed == (field,)
    assert status.reason.startswith(f"{field} changed: ")


def test_cache_missing_and_changed_engine_files(tmp_path: Path) -> None:
    assert cache.check(tmp_path, "dit", "fp16", _key()).state == "missing"
    _fake_engine(tmp_path, "dit", _key())
    stale = cache.check(tmp_path, "dit", "fp16", _key(tensorrt="10.4.0"))
    assert "tensorrt changed: 10.3.0 -> 10.4.0" in stale.reason
    (tmp_path / "dit.fp16.engine").write_bytes(b"engine-bytez")  # same size, other bytes
    assert cache.check(tmp_path, "dit", "fp16", _key()).fresh
    assert cache.check(tmp_path, "dit", "fp16", _key(), verify_file=True).changed == ("engine_file",)
    (tmp_path / "dit.fp16.engine").write_bytes(b"truncated")
    assert cache.check(tmp_path, "dit", "fp16", _key()).state == "stale"
    (tmp_path / "dit.fp16.engine").unlink()
    assert cache.check(tmp_path, "dit", "fp16", _key()).state == "missing"


def test_engine_manifest_round_trip(tmp_path: Path) -> None:
    _fake_engine(tmp_path, "vae_decoder", _key(), "fp32")
    data = cache.load_engine_manifest(tmp_path)
    assert data["format"] == cache.FORMAT and data["version"] == cache.VERSION
    entry = data["engines"]["vae_decoder.fp32.engine"]
    assert entry["key"] == _key() and entry["size_bytes"] == len(b"engine-bytes")
    assert entry["target"] == "orin-nano" and entry["graph"] == "vae_decoder"
    cache.save_engine_manifest(tmp_path, data)
    assert cache.load_engine_manifest(tmp_path) == data
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave nothing behind
    (tmp_path / cache.ENGINES_JSON).write_text("{not json")
    with pytest.raises(EngineCacheError, match="corrupt"):
        cache.load_engine_manifest(tmp_path)
    assert cache.load_engine_manifest(tmp_path / "empty")["engines"] == {}


def test_onnx_digest_uses_the_manifest_and_verifies_bytes(
    tiny_export: Path, manifest: dict[str, Any], tmp_path: Path
) -> None:
    digest = cache.graph_sha256(tiny_export, manifest, "mcp")
    assert digest == cache.graph_sha256(tiny_export, manifest, "mcp", verify=True)
    assert digest != cache.graph_sha256(tiny_export, manifest, "dit")
    fake = json.loads(json.dumps(manifest))
    fake["files"]["mcp.onnx"] = "0" * 64
    with pytest.raises(EngineCacheError, match="changed since export"):
        cache.graph_sha256(tiny_export, fake, "mcp", verify=True)


def test_l4t_release_and_default_engine_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan 8"
    assert cache.parse_l4t_release(text) == "R36.4.3"
    assert cache.parse_l4t_release("garbage") == "unknown"
    assert cache.read_l4t_release(tmp_path / "absent") == "none"
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "eng"))
    assert cache.default_engine_dir("tiny") == tmp_path / "eng" / "tiny"
    monkeypatch.delenv(cache.ENV_VAR)
    repo = Path(__file__).resolve().parents[1]
    assert cache.default_engine_dir() == repo / "engines"  # a source checkout uses its engines/
    monkeypatch.setattr(cache, "repo_engine_root", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_engine_dir() == tmp_path / "home" / ".cache" / "mobile_o_ros" / "engines"
    assert not str(cache.default_engine_dir()).startswith("/tmp/mobile")


# ------------------------------------------------------------------------------------------ builder checks
def test_no_build_refuses_missing_and_stale_engines(
    tiny_export: Path, manifest: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(EngineCacheError) as err:
        builder.build_engines(tiny_export, tmp_path, no_build=True, env=ENV, log=lambda s: None)
    msg = str(err.value)
    assert all(f"{g}.fp16.engine missing" in msg for g in GRAPHS) and "mobile-o build-engines" in msg
    for graph, key in builder.expected_keys(tiny_export, manifest, "fp16", "orin-nano", ENV).items():
        _fake_engine(tmp_path, graph, key)
    results = builder.build_engines(tiny_export, tmp_path, no_build=True, env=ENV)
    assert [r.status for r in results] == ["fresh"] * len(GRAPHS)
    newer = Environment("10.4.0", ENV.gpu, ENV.compute_capability, ENV.l4t)
    with pytest.raises(EngineCacheError, match=r"dit.fp16.engine stale \(tensorrt changed: 10.3.0 -> 10.4.0"):
        builder.build_engines(tiny_export, tmp_path, no_build=True, env=newer)
    with pytest.raises(EngineCacheError, match="target desktop"):
        builder.build_engines(tiny_export, tmp_path, no_build=True, env=ENV, target="desktop")
    with pytest.raises(EngineCacheError, match="contradict"):
        builder.build_engines(tiny_export, tmp_path, no_build=True, force=True, env=ENV)
    with pytest.raises(EngineCacheError, match="unknown graphs"):
        builder.build_engines(tiny_export, tmp_path, no_build=True, env=ENV, graphs=["unet"])


def test_lm_head_chunks_respect_the_cma_limit() -> None:
    def m(chunks: int) -> dict[str, Any]:
        return {"model": {"vocab_size": 151649, "hidden_size": 896, "lm_head_chunks": chunks}}

    assert builder.lm_head_chunk_bytes(m(3), "fp16") == (50550 * 896 * 2, 3)
    builder.check_lm_head(m(3), "fp16", "orin-nano")
    with pytest.raises(EngineCacheError, match="--lm-head-chunks 3"):
        builder.check_lm_head(m(1), "fp16", "orin-nano")
    with pytest.raises(EngineCacheError, match="--lm-head-chunks 5"):
        builder.check_lm_head(m(3), "fp32", "orin-nano")
    logged: list[str] = []
    builder.check_lm_head(m(1), "fp16", "desktop", log=logged.append)
    assert logged and logged[0].startswith("warning:")


# ------------------------------------------------------------------------------------------ CPU stand-in
class FakeTRT:
    """``tensorrt`` + ``pycuda.driver`` on the CPU: networks from ONNX nodes, engines that run onnxruntime."""

    def __init__(self) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.memory: dict[int, bytearray] = {}
        self.next_addr = 4096
        self.builds: list[dict[str, Any]] = []
        self.executions = 0
        self.pushes = 0
        self.trt = self._make_trt()
        self.cuda = self._make_cuda()

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeTRT:
        pkg = types.ModuleType("pycuda")
        pkg.driver = self.cuda
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        monkeypatch.setitem(sys.modules, "pycuda", pkg)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.cuda)
        monkeypatch.setattr(cache, "gpu_identity", lambda device=0: (ENV.gpu, ENV.compute_capability))
        monkeypatch.setattr(cache, "read_l4t_release", lambda path=None: ENV.l4t)
        return self

    def _make_trt(self) -> types.ModuleType:  # one small class per TensorRT interface
        fake, trt = self, types.ModuleType("tensorrt")
        trt.__version__ = ENV.tensorrt
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
        trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 BF16 TF32 OBEY_PRECISION_CONSTRAINTS")
        trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")

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
            def __init__(self, dtype: Any) -> None:
                self.dtype = dtype

        class Layer:
            def __init__(self, name: str, inputs: list[Any], outputs: list[Any]) -> None:
                self.name, self.metadata = name + "_trt", f"[ONNX Layer: {name}]"
                self._in, self._out, self.precision, self.output_types = inputs, outputs, None, {}
                self.num_inputs, self.num_outputs = len(inputs), len(outputs)

            def get_input(self, i: int) -> Any:
                return self._in[i]

            def get_output(self, i: int) -> Any:
                return self._out[i]

            def set_output_type(self, i: int, dtype: Any) -> None:
                self.output_types[i] = dtype

        class Network:
            def __init__(self) -> None:
                self.layers: list[Layer] = []
                self.onnx = None

            @property
            def num_layers(self) -> int:
                return len(self.layers)

            def get_layer(self, i: int) -> Layer:
                return self.layers[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Network, logger: Logger) -> None:
                self.network = network

            def parse_from_file(self, path: str) -> bool:
                import onnx

                model = onnx.load(path, load_external_data=False)
                dtypes = precision._onnx_dtypes(model)
                self.network.onnx = path
                for n in model.graph.node:
                    if n.op_type == "Constant":
                        continue

                    def tensor(name: str) -> Tensor:
                        return Tensor(from_name.get(dtypes.get(name, ""), DataType.FLOAT))

                    ins = [tensor(i) if i else None for i in n.input]
                    outs = [tensor(o) for o in n.output]
                    self.network.layers.append(Layer(n.name, ins, outs))
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
                self.flags: set[Any] = set()
                self.profiles: list[Profile] = []
                self.pools: dict[Any, int] = {}
                self.builder_optimization_level = 3
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
                assert flags == 0
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                mon = config.progress_monitor
                mon.phase_start("Building engine", None, 2)
                mon.step_complete("Building engine", 1)
                mon.phase_finish("Building engine")
                pinned = [la.name for la in network.layers if la.precision is not None]
                fake.builds.append(
                    {
                        "onnx": network.onnx,
                        "flags": set(config.flags),
                        "pinned": pinned,
                        "profiles": [p.shapes for p in config.profiles],
                        "pools": dict(config.pools),
                        "opt_level": config.builder_optimization_level,
                    }
                )
                profs = [{n: [list(s[0]), list(s[2])] for n, s in p.shapes.items()} for p in config.profiles]
                return json.dumps({"onnx": network.onnx, "profiles": profs}).encode()

        class Engine:
            def __init__(self, blob: bytes) -> None:
                spec = json.loads(blob)
                self.session = fake.ort.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])
                self.profiles = spec["profiles"]
                self.io = {
                    **{i.name: (trt.TensorIOMode.INPUT, i) for i in self.session.get_inputs()},
                    **{o.name: (trt.TensorIOMode.OUTPUT, o) for o in self.session.get_outputs()},
                }
                self.names = list(self.io)
                self.device_memory_size = 1000 + 10 * len(self.names)
                self.num_optimization_profiles = max(1, len(self.profiles))

            num_io_tensors = property(lambda self: len(self.names))

            def get_tensor_name(self, i: int) -> str:
                return self.names[i]

            def get_tensor_mode(self, name: str) -> Any:
                return self.io[name][0]

            def get_tensor_dtype(self, name: str) -> Any:
                t = self.io[name][1].type
                return DataType.INT64 if "int64" in t else DataType.FLOAT

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return tuple(d if isinstance(d, int) else -1 for d in self.io[name][1].shape)

            def get_tensor_profile_shape(self, name: str, p: int) -> list[tuple[int, ...]]:
                lo, hi = self.profiles[p][name]
                return [tuple(lo), tuple(lo), tuple(hi)]

            def create_execution_context_without_device_memory(self) -> Context:
                return Context(self)

        class Context:
            def __init__(self, engine: Engine) -> None:
                self.engine, self.profile, self.shapes, self.addr = engine, 0, {}, {}
                self.out_shapes: dict[tuple, dict[str, tuple]] = {}
                self.device_memory = None

            def set_optimization_profile_async(self, p: int, stream: int) -> bool:
                self.profile = p
                return True

            def set_input_shape(self, name: str, shape: Any) -> bool:
                shape = tuple(shape)
                if self.engine.profiles:
                    lo, hi = self.engine.profiles[self.profile].get(name, (shape, shape))
                    if not all(a <= s <= b for s, a, b in zip(shape, lo, hi, strict=True)):
                        return False
                self.shapes[name] = shape
                return True

            def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
                outs = self.engine.session.run(None, feeds)
                return dict(zip([o.name for o in self.engine.session.get_outputs()], outs, strict=True))

            def _inputs(self) -> list[str]:
                return [n for n in self.engine.names if self.engine.io[n][0] == trt.TensorIOMode.INPUT]

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                if name in self.shapes:
                    return self.shapes[name]
                key = tuple(sorted(self.shapes.items()))
                if key not in self.out_shapes:
                    zeros = {
                        n: np.zeros(self.shapes[n], trt.nptype(self.engine.get_tensor_dtype(n)))
                        for n in self._inputs()
                    }
                    self.out_shapes[key] = {n: a.shape for n, a in self._run(zeros).items()}
                return self.out_shapes[key][name]

            def set_tensor_address(self, name: str, addr: int) -> bool:
                self.addr[name] = addr
                return True

            def execute_async_v3(self, stream: int) -> bool:
                assert self.device_memory is not None, "no device memory"
                assert fake.pushes > 0, "no current CUDA context"
                feeds = {}
                for n in self._inputs():
                    dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
                    count = int(np.prod(self.shapes[n]))
                    feeds[n] = np.frombuffer(fake.memory[self.addr[n]], dtype, count).reshape(self.shapes[n])
                for n, a in self._run(feeds).items():
                    raw = np.ascontiguousarray(a).tobytes()
                    fake.memory[self.addr[n]][: len(raw)] = raw
                fake.executions += 1
                return True

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, src: Any) -> Engine:
                return Engine(src.read(1 << 30) if isinstance(src, IStreamReader) else src)

        for cls in (Logger, IProgressMonitor, IStreamReader, OnnxParser, Builder, Runtime):
            setattr(trt, cls.__name__, cls)
        return trt

    def _make_cuda(self) -> types.ModuleType:
        fake, cuda = self, types.ModuleType("pycuda.driver")

        class DeviceAllocation:
            def __init__(self, nbytes: int) -> None:
                self.addr = fake.next_addr
                fake.next_addr += nbytes + 4096
                fake.memory[self.addr] = bytearray(nbytes)

            def __int__(self) -> int:
                return self.addr

            def free(self) -> None:
                del fake.memory[self.addr]

        class Ctx:
            def push(self) -> None:
                fake.pushes += 1

            def detach(self) -> None:
                fake.detached = True

            @staticmethod
            def pop() -> None:
                fake.pushes -= 1

        class Device:
            def __init__(self, i: int) -> None:
                pass

            def retain_primary_context(self) -> Ctx:
                return Ctx()

        class Stream:
            handle = 1234

            def synchronize(self) -> None:
                pass

        def htod(dev: DeviceAllocation, arr: np.ndarray, stream: Stream) -> None:
            raw = arr.tobytes()
            assert len(raw) <= len(fake.memory[int(dev)]), "host array larger than its device buffer"
            fake.memory[int(dev)][: len(raw)] = raw

        def dtoh(arr: np.ndarray, dev: DeviceAllocation, stream: Stream) -> None:
            arr.reshape(-1).view(np.uint8)[:] = np.frombuffer(fake.memory[int(dev)], np.uint8, arr.nbytes)

        cuda.init, cuda.Device, cuda.Context, cuda.Stream = (lambda: None), Device, Ctx, Stream
        cuda.mem_alloc, cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = DeviceAllocation, htod, dtoh
        cuda.mem_get_info = lambda: (6 << 30, 8 << 30)
        return cuda


class FakeGraphs:
    """Stand-in for the driver-API CUDA graphs: a capture remembers the enqueue, a launch replays it."""

    instances: ClassVar[list[FakeGraphs]] = []

    def __init__(self) -> None:
        self.captured: dict[int, Any] = {}
        self.launches = 0
        FakeGraphs.instances.append(self)

    def capture(self, stream: int, enqueue: Any) -> int:
        self.captured[len(self.captured) + 1] = enqueue
        return len(self.captured)

    def launch(self, graph_exec: int, stream: int) -> None:
        self.launches += 1
        assert self.captured[graph_exec]()

    def destroy(self, graph_exec: int) -> None:
        self.captured.pop(graph_exec)


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTRT:
    from mobile_o_ros.runtime import trt_backend

    monkeypatch.setattr(trt_backend, "_DriverGraphs", FakeGraphs)
    return FakeTRT().install(monkeypatch)


@pytest.fixture
def fake_engines(fake_trt: FakeTRT, tiny_export: Path, tmp_path: Path) -> Path:
    builder.build_engines(tiny_export, tmp_path / "engines", log=lambda s: None)
    return tmp_path / "engines"


def test_builder_with_the_stand_in(
    fake_trt: FakeTRT, tiny_export: Path, manifest: dict[str, Any], tmp_path: Path
) -> None:
    logs: list[str] = []
    engine_dir = tmp_path / "engines"
    results = builder.build_engines(tiny_export, engine_dir, log=logs.append)
    assert [(r.graph, r.status) for r in results] == [(g, "built") for g in manifest["graphs"]]
    trt = fake_trt.trt
    for graph, build in zip(manifest["graphs"], fake_trt.builds, strict=True):
        assert build["onnx"].endswith(f"{graph}.onnx")
        assert {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS} <= build["flags"]
        assert build["pools"][trt.MemoryPoolType.WORKSPACE] == 1 << 30 and build["opt_level"] == 3
        assert build["profiles"] == profiles.shape_profiles(manifest["graphs"][graph], graph, "orin-nano")
        rules = precision.fp32_node_rules(tiny_export / f"{graph}.onnx", graph)
        assert sorted(n.removesuffix("_trt") for n in build["pinned"]) == sorted(rules), graph
        listed = (engine_dir / f"{graph}.fp16.fp32_layers.txt").read_text().splitlines()
        assert len(listed) == len(rules)
    entries = cache.load_engine_manifest(engine_dir)["engines"]
    assert set(entries) == {f"{g}.fp16.engine" for g in GRAPHS}
    assert entries["dit.fp16.engine"]["dit_buckets"] == [64, 128, 256, 512]
    assert entries["dit.fp16.engine"]["fp32_layers"]["sana_linear_attention"] > 0
    assert (engine_dir / "timing-trt10.3.0-sm8.7.cache").is_file()
    assert any("layers kept in fp32" in line for line in logs)
    assert any("Building engine" in line for line in logs)  # the progress monitor

    again = builder.build_engines(tiny_export, engine_dir, log=logs.append)
    assert {r.status for r in again} == {"fresh"} and len(fake_trt.builds) == len(GRAPHS)
    builder.build_engines(tiny_export, engine_dir, log=logs.append, force=True, graphs=["mcp"])
    assert len(fake_trt.builds) == len(GRAPHS) + 1
    builder.build_engines(tiny_export, engine_dir, precision="fp32", log=logs.append, graphs=["vae_decoder"])
    last = fake_trt.builds[-1]
    assert not last["flags"] and not last["pinned"]  # fp32: no FP16, TF32 cleared, nothing pinned
    assert (engine_dir / "vae_decoder.fp32.engine").is_file()


def _ort_reference(tiny_runtime, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return tiny_runtime.backend.run(graph, feeds)


def _feeds(tiny_runtime) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    m = tiny_runtime.model_info
    d, n = m["hidden_size"], 23
    embeds = rng.standard_normal((1, n, d)).astype(np.float32)
    cap = 64
    pos = np.arange(n, dtype=np.int64)
    cache_in = np.zeros((m["num_layers"], 2, 1, m["num_key_value_heads"], cap, m["head_dim"]), np.float32)
    cond = rng.standard_normal((2, n, m["caption_dim"])).astype(np.float32)
    return {
        "vision": {"images": rng.random((1, 3, 1024, 1024), dtype=np.float32)},
        "llm": {
            "inputs_embeds": embeds,
            "position_ids": pos[None],
            "attention_mask": decode_mask(pos, cap),
            "kv_cache": cache_in,
        },
        "mcp": {"hidden_states": rng.standard_normal((2, 4, n, d)).astype(np.float32)},
        "dit": {
            "latents": rng.standard_normal((2, 32, 16, 16)).astype(np.float32),
            "timestep": np.array([500.0, 500.0], np.float32),
            "encoder_hidden_states": cond,
            "encoder_attention_mask": np.ones((2, n), np.float32),
        },
        "vae_decoder": {"latents": rng.standard_normal((1, 32, 16, 16)).astype(np.float32)},
    }


def test_backend_with_the_stand_in_matches_onnxruntime(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, manifest: dict[str, Any], tiny_runtime
) -> None:
    from mobile_o_ros.runtime.engine import make_backend

    backend = make_backend(tiny_export, manifest, "tensorrt", engine_dir=fake_engines)
    assert fake_trt.pushes == 0  # the primary context is popped after loading
    for graph, feeds in _feeds(tiny_runtime).items():
        ref = _ort_reference(tiny_runtime, graph, feeds)
        out = backend.run(graph, feeds)
        assert set(out) == set(ref), graph
        for name in ref:
            assert out[name].shape == ref[name].shape and out[name].dtype == ref[name].dtype, (graph, name)
            scale = float(np.abs(ref[name]).max()) or 1.0
            np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5 * scale, err_msg=graph)
    step = _feeds(tiny_runtime)["llm"]
    first = backend.run("llm", step)
    pos = np.array([23], np.int64)
    token = {
        "inputs_embeds": step["inputs_embeds"][:, :1],
        "position_ids": pos[None],
        "attention_mask": decode_mask(pos, 64),
        "kv_cache": first["kv_cache_out"],
    }
    np.testing.assert_allclose(
        backend.run("llm", token)["logits"],
        tiny_runtime.backend.run("llm", token)["logits"],
        rtol=1e-5,
        atol=1e-5,
    )
    info = backend.describe()
    assert info["backend"] == "tensorrt" and info["version"] == "10.3.0" and info["gpu"] == ENV.gpu
    assert info["engines"]["llm"]["profiles"] == 2 and info["engines"]["dit"]["dit_buckets"][0] == 64
    largest = max(e["device_memory_bytes"] for e in info["engines"].values())
    assert info["shared_device_memory_bytes"] == largest
    assert info["gpu_memory_total_bytes"] == 8 << 30 and fake_trt.pushes == 0
    with pytest.raises(BackendError, match="must be float32"):
        backend.run("mcp", {"hidden_states": np.zeros((2, 4, 5, 64), np.float64)})
    long = _feeds(tiny_runtime)["dit"]
    long["encoder_hidden_states"] = np.zeros((2, 600, 64), np.float32)
    long["encoder_attention_mask"] = np.ones((2, 600), np.float32)
    with pytest.raises(BackendError, match="exceeds the largest DiT bucket 512"):
        backend.run("dit", long)
    backend.close()
    assert not fake_trt.memory and fake_trt.pushes == 0  # every device buffer freed
    with pytest.raises(BackendError, match="closed"):
        backend.run("vae_decoder", _feeds(tiny_runtime)["vae_decoder"])


def test_backend_cuda_graphs_replay_static_shapes(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, manifest: dict[str, Any], tiny_runtime
) -> None:
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    backend = TensorRTBackend(tiny_export, manifest, engine_dir=fake_engines, use_cuda_graphs=True)
    graphs = FakeGraphs.instances[-1]
    feeds = _feeds(tiny_runtime)
    first = backend.run("dit", feeds["dit"])  # warm-up enqueue, then capture
    assert len(graphs.captured) == 1 and graphs.launches == 0
    feeds["dit"]["latents"] = feeds["dit"]["latents"] * 0.5
    second = backend.run("dit", feeds["dit"])  # replay with new input data
    assert graphs.launches == 1 and not np.allclose(first["velocity"], second["velocity"])
    np.testing.assert_allclose(
        second["velocity"], tiny_runtime.backend.run("dit", feeds["dit"])["velocity"], rtol=1e-5, atol=1e-5
    )
    backend.run("llm", feeds["llm"])  # dynamic-shape graphs are never captured
    assert len(graphs.captured) == 1
    assert backend.describe()["engines"]["dit"]["captured_cuda_graphs"] == 1
    backend.close()
    assert not graphs.captured


def test_backend_is_bound_to_its_thread(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, manifest: dict[str, Any], tiny_runtime
) -> None:
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    backend = TensorRTBackend(tiny_export, manifest, engine_dir=fake_engines, graphs=["vae_decoder"])
    errors: list[Exception] = []

    def call() -> None:
        try:
            backend.run("vae_decoder", _feeds(tiny_runtime)["vae_decoder"])
        except BackendError as err:
            errors.append(err)

    worker = threading.Thread(target=call, name="ros-callback")
    worker.start()
    worker.join()
    assert len(errors) == 1 and "belongs to thread 'MainThread'" in str(errors[0])
    assert "'ros-callback'" in str(errors[0])
    with pytest.raises(BackendError, match="not loaded"):
        backend.run("dit", _feeds(tiny_runtime)["dit"])
    backend.close()


def test_backend_refuses_missing_and_stale_engines(
    fake_trt: FakeTRT,
    tiny_export: Path,
    manifest: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    with pytest.raises(BackendError, match=r"no TensorRT engines .*run `mobile-o build-engines"):
        TensorRTBackend(tiny_export, manifest, engine_dir=tmp_path / "none")
    builder.build_engines(tiny_export, tmp_path / "eng", log=lambda s: None, graphs=["mcp"])
    monkeypatch.setattr(fake_trt.trt, "__version__", "10.4.0")
    with pytest.raises(BackendError, match=r"mcp.fp16.engine stale \(tensorrt changed: 10.3.0 -> 10.4.0\)"):
        TensorRTBackend(tiny_export, manifest, engine_dir=tmp_path / "eng", graphs=["mcp"])


def test_backend_without_tensorrt_names_what_to_do(
    tiny_export: Path, manifest: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    with pytest.raises(BackendError, match="build-engines"):
        TensorRTBackend(tiny_export, manifest, engine_dir=tmp_path)
    for graph, key in builder.expected_keys(tiny_export, manifest, "fp16", "orin-nano", ENV).items():
        _fake_engine(tmp_path, graph, key)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError, match="TensorRT is not available"):
        TensorRTBackend(tiny_export, manifest, engine_dir=tmp_path)


def test_pipelines_on_the_stand_in_match_onnxruntime(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, tiny_runtime
) -> None:
    from mobile_o_ros.runtime.engine import MobileORuntime

    rt = MobileORuntime.load(tiny_export, backend="tensorrt", engine_dir=fake_engines, use_cuda_graphs=True)
    a = rt.generate("a red square", steps=2, seed=3)
    b = tiny_runtime.generate("a red square", steps=2, seed=3)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    scene = np.full((100, 120, 3), 90, np.uint8)
    ours, ref = rt.ask(scene, "what?", max_new_tokens=4), tiny_runtime.ask(scene, "what?", max_new_tokens=4)
    assert ours.token_ids == ref.token_ids
    rt.close()


# ------------------------------------------------------------------------------------------ CLI
def _parser() -> argparse.ArgumentParser:
    from mobile_o_ros.trt.cli import add_build_engines_parser

    parser = argparse.ArgumentParser(prog="mobile-o")
    add_build_engines_parser(parser.add_subparsers(dest="verb", required=True))
    return parser


def test_cli_parser_registers_build_engines() -> None:
    args = _parser().parse_args(["build-engines", "exp"])
    got = (args.export_dir, args.engine_dir, args.precision, args.target)
    assert got == ("exp", None, "fp16", "orin-nano")
    assert not args.force and not args.no_build and args.only is None and callable(args.func)
    args = _parser().parse_args(
        [
            "build-engines",
            "exp",
            "eng",
            "--precision",
            "bf16",
            "--target",
            "desktop",
            "--force",
            "--only",
            "dit",
            "vae_decoder",
        ]
    )
    assert (args.engine_dir, args.precision, args.target, args.force, args.only) == (
        "eng",
        "bf16",
        "desktop",
        True,
        ["dit", "vae_decoder"],
    )
    with pytest.raises(SystemExit):
        _parser().parse_args(["build-engines", "exp", "--precision", "int8"])


def test_cli_errors_are_one_line(tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobile_o_ros.cli import CliError

    def run(*argv: str) -> int:
        args = _parser().parse_args(["build-engines", *argv])
        return args.func(args)

    with pytest.raises(CliError, match="export folder not found"):
        run(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CliError, match=r"no manifest\.json"):
        run(str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CliError, match="is a file"):
        run(str(tiny_export), str(tmp_path / "file"))
    with pytest.raises(CliError, match="contradict"):
        run(str(tiny_export), str(tmp_path / "e"), "--force", "--no-build")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(CliError, match="TensorRT is not available") as err:
        run(str(tiny_export), str(tmp_path / "e"), "--no-build")
    assert err.value.code == 1 and "\n" not in str(err.value)
    monkeypatch.setattr(builder.cache, "detect_environment", lambda: ENV)
    with pytest.raises(CliError, match=r"dit.fp16.engine missing .*mobile-o build-engines") as err:
        run(str(tiny_export), str(tmp_path / "e"), "--no-build")
    assert "\n" not in str(err.value)


def test_cli_builds_with_the_stand_in(
    fake_trt: FakeTRT, tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _parser().parse_args(["build-engines", str(tiny_export), str(tmp_path / "e"), "--only", "mcp"])
    assert args.func(args) == 0
    assert "1 engine(s)" in capsys.readouterr().out.splitlines()[-1]
    argv = ["build-engines", str(tiny_export), str(tmp_path / "e"), "--no-build", "--only", "mcp"]
    args = _parser().parse_args(argv)
    assert args.func(args) == 0 and "0 built, 1 up to date" in capsys.readouterr().out


def test_trt_modules_import_without_tensorrt_pycuda_or_torch() -> None:
    code = (
        "import sys; import mobile_o_ros.trt.builder, mobile_o_ros.trt.cli; "
        "import mobile_o_ros.runtime.trt_backend; "
        "print(sorted(m for m in ('tensorrt', 'pycuda', 'torch', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"
