"""The TensorRT tier without TensorRT: profiles, buckets, precision policy, engine cache, CLI, and the builder
and backend driven by a CPU stand-in for ``tensorrt``/``pycuda`` that runs the ONNX graphs in onnxruntime.

The stand-in checks our control flow (API calls, shapes, profiles, buffers, padding, cache bookkeeping), not
TensorRT's numerics: those are in test_trt_gpu.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trt_standin import ENV, FakeGraphs, FakeTRT

from mobile_o_ros.manifest import load_manifest
from mobile_o_ros.runtime.backend import BackendError
from mobile_o_ros.runtime.engine import decode_mask
from mobile_o_ros.trt import builder, cache, precision, profiles
from mobile_o_ros.trt.cache import EngineCacheError, Environment

pytestmark = pytest.mark.runtime

GRAPHS = ("vision", "llm", "mcp", "dit", "vae_decoder")


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
    dits = profiles.shape_profiles(g["dit"], "dit", "orin-nano")  # one static profile per text bucket
    assert [p["encoder_hidden_states"] for p in dits] == [((2, n, dim),) * 3 for n in (64, 128, 256, 512)]
    assert [p["encoder_attention_mask"] for p in dits] == [((2, n),) * 3 for n in (64, 128, 256, 512)]
    assert all(p["latents"] == ((2, *manifest["model"]["latent_shape"]),) * 3 for p in dits)
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
    assert "/dit/transformer_blocks.0/attn2/Softmax" not in dit  # never pinned: blocks fused attention
    assert not [n for n in dit if n.endswith("LayerNormalization")]  # computes in fp32 anyway
    assert precision.fp32_layer_names(tiny_export / "dit.onnx", "dit") == sorted(dit)

    for graph in ("llm",):
        llm = precision.fp32_node_rules(tiny_export / f"{graph}.onnx", graph)
        assert {llm.get(f"/rotary_emb/{n}") for n in ("Cos", "Sin", "MatMul")} == {"rotary_embedding"}, graph
        assert any(n.endswith("input_layernorm/Pow") and r == "norm_reduction" for n, r in llm.items())
        assert any(n.endswith("input_layernorm/Div") and r == "norm_scope" for n, r in llm.items())
        assert not any("q_proj" in n or "o_proj" in n for n in llm)
        assert not any(n.split("/")[-1].startswith("Softmax") for n in llm)
    vae = precision.fp32_node_rules(tiny_export / "vae_decoder.onnx", "vae_decoder")
    attn = [n for n, r in vae.items() if r == "dcae_linear_attention"]
    assert any(n.endswith("/attn/MatMul") for n in attn)
    assert any(n.endswith("/attn/nonlinearity/Relu") for n in attn)
    assert not any("/attn/to_q/" in n for n in vae)
    assert precision.fp32_layer_names(tiny_export / "dit.onnx", "dit", precision="fp32") == []
    assert precision.fp32_node_rules(tiny_export / "dit.onnx", "dit", "bf16") == dit
    with pytest.raises(ValueError, match="unknown precision"):
        precision.fp32_layer_names(tiny_export / "dit.onnx", "dit", precision="int8")


def test_policy_reads_types_without_an_in_memory_inference(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export records every tensor's type; a file without them is inferred on disk
    (infer_shapes_path), never by onnx.shape_inference.infer_shapes on a second in-memory copy."""
    import onnx

    expected = precision.fp32_node_rules(tiny_export / "llm.onnx", "llm")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("infer_shapes on an in-memory copy")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse)
    assert precision.fp32_node_rules(tiny_export / "llm.onnx", "llm") == expected
    bare = onnx.load(str(tiny_export / "llm.onnx"))
    del bare.graph.value_info[:]
    onnx.save_model(bare, str(tmp_path / "bare.onnx"))
    del bare
    paths: list[str] = []
    original = onnx.shape_inference.infer_shapes_path

    def on_disk(src: str, dst: str = "", *args: Any, **kwargs: Any) -> None:
        paths.append(src)
        original(src, dst, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", on_disk)
    assert precision.fp32_node_rules(tmp_path / "bare.onnx", "llm") == expected
    assert paths == [str(tmp_path / "bare.onnx")]


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


def test_lm_head_chunks_above_the_cma_guess_only_warn() -> None:
    def m(chunks: int) -> dict[str, Any]:
        return {"model": {"vocab_size": 151649, "hidden_size": 896, "lm_head_chunks": chunks}}

    assert builder.lm_head_chunk_bytes(m(3), "fp16") == (50550 * 896 * 2, 3)
    logged: list[str] = []
    assert not builder.check_lm_head(m(3), "fp16", "orin-nano", log=logged.append) and not logged
    for chunks, prec, needed in ((1, "fp16", 3), (3, "fp32", 5)):
        logged.clear()
        assert builder.check_lm_head(m(chunks), prec, "orin-nano", log=logged.append)  # a warning, no refusal
        assert (
            len(logged) == 1
            and logged[0].startswith("warning:")
            and f"--lm-head-chunks {needed}" in logged[0]
        )


# ------------------------------------------------------------------------------------------ CPU stand-in
@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTRT:
    from mobile_o_ros.runtime import trt_backend

    fake = FakeTRT().install(monkeypatch)
    monkeypatch.setattr(trt_backend, "_DriverGraphs", FakeGraphs)
    monkeypatch.setattr(FakeGraphs, "fake", fake)
    return fake


@pytest.fixture
def fake_engines(fake_trt: FakeTRT, tiny_export: Path, tmp_path: Path) -> Path:
    builder.build_engines(tiny_export, tmp_path / "engines", log=lambda s: None)
    return tmp_path / "engines"


@pytest.mark.slow
def test_builder_with_the_stand_in(
    fake_trt: FakeTRT, tiny_export: Path, manifest: dict[str, Any], tmp_path: Path
) -> None:
    from mobile_o_ros.trt import inspect

    logs: list[str] = []
    engine_dir = tmp_path / "engines"
    results = builder.build_engines(tiny_export, engine_dir, log=logs.append)
    assert [(r.graph, r.status) for r in results] == [(g, "built") for g in manifest["graphs"]]
    trt = fake_trt.trt
    for graph, build in zip(manifest["graphs"], fake_trt.builds, strict=True):
        assert build["onnx"].endswith(f"{graph}.onnx") and not build["strongly_typed"]
        assert {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS} <= build["flags"]
        assert trt.BuilderFlag.TF32 not in build["flags"]  # cleared in every build
        assert build["profiling_verbosity"] == trt.ProfilingVerbosity.DETAILED
        assert build["pools"][trt.MemoryPoolType.WORKSPACE] == 1 << 30 and build["opt_level"] == 3
        assert build["profiles"] == profiles.shape_profiles(manifest["graphs"][graph], graph, "orin-nano")
        rules = precision.fp32_node_rules(tiny_export / f"{graph}.onnx", graph)
        assert sorted(n.removesuffix("_trt") for n in build["pinned"]) == sorted(rules), graph
        listed = (engine_dir / f"{graph}.fp16.fp32_layers.txt").read_text().splitlines()
        assert len(listed) == len(rules)
        layers = inspect.read_layers((engine_dir / f"{graph}.fp16.layers.json").read_text())
        assert layers and all(la.precision != "unknown" for la in layers), graph  # shapes were attached
    entries = cache.load_engine_manifest(engine_dir)["engines"]
    assert set(entries) == {f"{g}.fp16.engine" for g in GRAPHS}
    assert entries["dit.fp16.engine"]["dit_buckets"] == [64, 128, 256, 512]
    assert entries["dit.fp16.engine"]["fp32_layers"]["sana_linear_attention"] > 0
    assert entries["llm.fp16.engine"]["io_dtypes"] == {"kv_cache": "float16", "kv_cache_out": "float16"}
    for g in GRAPHS:
        e = entries[f"{g}.fp16.engine"]
        assert e["device_memory_bytes"] > 0 and e["layers_json"] == f"{g}.fp16.layers.json"
        assert e["onnx_weights_bytes"] == manifest["graphs"][g]["weights_bytes"] and not e["strongly_typed"]
    assert (engine_dir / "timing-trt10.3.0-sm8.7.cache").is_file()
    assert any("layers pinned to fp32" in line for line in logs)
    assert any("Building engine" in line for line in logs)  # the progress monitor
    assert any("all engines loaded" in line and "GiB target" in line for line in logs)

    again = builder.build_engines(tiny_export, engine_dir, log=logs.append)
    assert {r.status for r in again} == {"fresh"} and len(fake_trt.builds) == len(GRAPHS)
    builder.build_engines(tiny_export, engine_dir, log=logs.append, force=True, graphs=["mcp"])
    assert len(fake_trt.builds) == len(GRAPHS) + 1
    builder.build_engines(tiny_export, engine_dir, precision="fp32", log=logs.append, graphs=["vae_decoder"])
    last = fake_trt.builds[-1]
    assert not last["flags"] and not last["pinned"]  # fp32: no FP16, TF32 cleared, nothing pinned
    assert (engine_dir / "vae_decoder.fp32.engine").is_file()


def test_half_cache_io_falls_back_to_fp32_io(
    fake_trt: FakeTRT, tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should TensorRT refuse the fp16 cache I/O (e.g. a Scatter with mixed types), the engine is built
    again with the ONNX's fp32 I/O instead of failing."""
    original = fake_trt.trt.Builder.build_serialized_network

    def refuse_half_io(self, network, config):
        if any(t.dtype == fake_trt.trt.float16 for t in network.inputs):
            return None
        return original(self, network, config)

    monkeypatch.setattr(fake_trt.trt.Builder, "build_serialized_network", refuse_half_io)
    logs: list[str] = []
    builder.build_engines(tiny_export, tmp_path, graphs=["llm"], log=logs.append)
    assert any("did not build with ['kv_cache', 'kv_cache_out'] in half precision" in line for line in logs)
    assert cache.load_engine_manifest(tmp_path)["engines"]["llm.fp16.engine"]["io_dtypes"] == {}


def test_engine_inspector_shows_pins_lost_in_foreign_nodes(fake_engines: Path, tiny_export: Path) -> None:
    """The stand-in fuses SANA's /attn1/ island into a Myelin node, as TensorRT 10 is reported to; the
    report says so instead of counting the network's pins."""
    from mobile_o_ros.trt import inspect

    dit = inspect.check_engine(fake_engines / "dit.fp16.layers.json", tiny_export / "dit.onnx", "dit", "fp16")
    assert dit["formats_known"] and dit["foreign_nodes"] and not dit["violations"]
    attn = dit["by_rule"]["sana_linear_attention"]
    assert attn["nodes"] > 0 and attn["not_visible"] == attn["nodes"] and attn["fp32"] == 0
    assert dit["by_rule"]["sana_time_embedding"]["fp32"] == dit["by_rule"]["sana_time_embedding"]["nodes"]
    assert any("time_proj" in name for name in dit["fp32_layers"])
    # a layer that ran in fp16 although pinned is a violation
    layers = [inspect.EngineLayer("x", "ElementWise", "fp16", ["/dit/caption_norm/Pow"])]
    report = inspect.check_policy(layers, {"/dit/caption_norm/Pow": "norm_reduction"})
    assert report["violations"] == [
        {"node": "/dit/caption_norm/Pow", "rule": "norm_reduction", "layer": "x", "precision": "fp16"}
    ]
    assert inspect.precision_of("Row major linear FP16 format") == "fp16"
    assert inspect.precision_of("Float") == "fp32" and inspect.precision_of("Half") == "fp16"
    assert inspect.precision_of("N/A due to dynamic shapes") == "unknown"
    assert inspect.precision_of("Thirty-two wide channel vectorized row major Int8 format.") == "int"


def test_typed_copy_has_explicit_fp32_islands(tiny_export: Path, tmp_path: Path) -> None:
    """The STRONGLY_TYPED fallback: an fp16 ONNX whose policy nodes are fp32 behind Casts, type-checked,
    and within fp16 rounding of the fp32 graph in onnxruntime."""
    import onnx
    import onnxruntime as ort

    from mobile_o_ros.trt.typed import write_typed_onnx

    rules = precision.fp32_node_rules(tiny_export / "dit.onnx", "dit")
    kept = write_typed_onnx(tiny_export / "dit.onnx", tmp_path / "dit.typed.onnx", rules)
    assert kept == len(rules)
    onnx.checker.check_model(str(tmp_path / "dit.typed.onnx"), full_check=True)  # every type consistent
    model = onnx.load(str(tmp_path / "dit.typed.onnx"))
    halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    consts = [
        onnx.numpy_helper.to_array(a.t)
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
    ]
    eps = [c for c in consts if c.dtype == np.float32 and c.size == 1 and 0 < float(c) < 1e-12]
    assert eps and all(float(c) == np.float32(1e-15) for c in eps)  # SANA's epsilon stays fp32, not 0
    rng = np.random.default_rng(0)
    feeds = {
        "latents": rng.standard_normal((2, 32, 16, 16)).astype(np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 20, 64)).astype(np.float32),
        "encoder_attention_mask": np.ones((2, 20), np.float32),
    }

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    ref, out = run(tiny_export / "dit.onnx"), run(tmp_path / "dit.typed.onnx")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=5e-3 * float(np.abs(ref).max()))


def test_strongly_typed_build(fake_trt: FakeTRT, tiny_export: Path, tmp_path: Path) -> None:
    results = builder.build_engines(
        tiny_export, tmp_path / "e", graphs=["mcp"], strongly_typed=True, log=lambda s: None
    )
    build = fake_trt.builds[-1]
    assert results[0].status == "built" and build["strongly_typed"] and not build["pinned"]
    assert not build["flags"]  # no FP16/BF16/OBEY on a strongly typed network, TF32 cleared
    assert (
        build["onnx"].endswith("mcp.fp16.typed.onnx") and (tmp_path / "e" / "mcp.fp16.typed.onnx").is_file()
    )
    entry = cache.load_engine_manifest(tmp_path / "e")["engines"]["mcp.fp16.engine"]
    assert entry["strongly_typed"] and entry["key"]["precision_policy"].endswith("+strongly-typed")
    # the weakly typed key differs, so the same engine is stale for a plain build ...
    with pytest.raises(EngineCacheError, match="precision_policy changed"):
        builder.build_engines(tiny_export, tmp_path / "e", graphs=["mcp"], no_build=True, env=ENV)
    # ... and the backend checks it against the key it was built with
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    manifest = load_manifest(tiny_export)
    TensorRTBackend(tiny_export, manifest, engine_dir=tmp_path / "e", graphs=["mcp"]).close()


def _ort_reference(tiny_runtime, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return tiny_runtime.backend.run(graph, feeds)


def _feeds(tiny_runtime, n: int = 23) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    m = tiny_runtime.model_info
    d = m["hidden_size"]
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


#: The stand-in's llm engine has fp16 KV I/O (as the fp16 build makes it): the cache is rounded to fp16.
KV_RTOL = 2e-3


def test_backend_with_the_stand_in_matches_onnxruntime(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, manifest: dict[str, Any], tiny_runtime
) -> None:
    from mobile_o_ros.runtime.engine import make_backend

    fake_trt.contexts_created.clear()  # (the builder's inspector made its own)
    backend = make_backend(tiny_export, manifest, "tensorrt", engine_dir=fake_engines)
    assert fake_trt.pushes == 0  # the primary context is popped after loading
    assert set(fake_trt.contexts_created) == {"USER_MANAGED"}  # no deprecated context creation
    for graph, feeds in _feeds(tiny_runtime).items():
        ref = _ort_reference(tiny_runtime, graph, feeds)
        out = backend.run(graph, feeds)
        assert set(out) == set(ref), graph
        for name in ref:
            assert out[name].shape == ref[name].shape and out[name].dtype == ref[name].dtype, (graph, name)
            scale = float(np.abs(ref[name]).max()) or 1.0
            rtol = KV_RTOL if name == "kv_cache_out" else 1e-5
            np.testing.assert_allclose(out[name], ref[name], rtol=rtol, atol=rtol * scale, err_msg=graph)
    assert fake_trt.pageable_copies == 0  # every staging buffer is page-locked
    step = _feeds(tiny_runtime)["llm"]
    first = backend.run("llm", step)
    pos = np.array([23], np.int64)
    token = {
        "inputs_embeds": step["inputs_embeds"][:, :1],
        "position_ids": pos[None],
        "attention_mask": decode_mask(pos, 64),
        "kv_cache": first["kv_cache_out"],
    }
    ref = tiny_runtime.backend.run("llm", token)["logits"]
    got = backend.run("llm", token)["logits"]
    np.testing.assert_allclose(got, ref, rtol=KV_RTOL, atol=KV_RTOL * float(np.abs(ref).max()))
    info = backend.describe()
    assert info["backend"] == "tensorrt" and info["version"] == "10.3.0" and info["gpu"] == ENV.gpu
    assert info["engines"]["llm"]["profiles"] == 2 and info["engines"]["dit"]["dit_buckets"][0] == 64
    assert info["engines"]["dit"]["profiles"] == info["engines"]["dit"]["static_profiles"] == 4
    assert info["engines"]["llm"]["io_dtypes"]["kv_cache"] == "float16"
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
    one = {k: v[:1] for k, v in _feeds(tiny_runtime)["dit"].items()}  # batch 1 runs as the CFG pair
    np.testing.assert_allclose(
        backend.run("dit", one)["velocity"],
        tiny_runtime.backend.run("dit", one)["velocity"],
        rtol=1e-5,
        atol=1e-5,
    )
    backend.close()
    assert not fake_trt.memory and fake_trt.pushes == 0  # every device buffer freed
    with pytest.raises(BackendError, match="closed"):
        backend.run("vae_decoder", _feeds(tiny_runtime)["vae_decoder"])


def test_legacy_tensorrt_context_api(
    tiny_export: Path, manifest: dict[str, Any], tmp_path: Path, monkeypatch, tiny_runtime
) -> None:
    """A TensorRT without USER_MANAGED / set_device_memory / device_memory_size_v2 gets the older calls."""
    from mobile_o_ros.runtime import trt_backend

    fake = FakeTRT(legacy=True).install(monkeypatch)
    monkeypatch.setattr(trt_backend, "_DriverGraphs", FakeGraphs)
    monkeypatch.setattr(FakeGraphs, "fake", fake)
    builder.build_engines(tiny_export, tmp_path, graphs=["mcp"], log=lambda s: None)
    fake.contexts_created.clear()
    backend = trt_backend.TensorRTBackend(tiny_export, manifest, engine_dir=tmp_path, graphs=["mcp"])
    feeds = _feeds(tiny_runtime)["mcp"]
    np.testing.assert_allclose(
        backend.run("mcp", feeds)["conditioning"],
        tiny_runtime.backend.run("mcp", feeds)["conditioning"],
        rtol=1e-5,
        atol=1e-5,
    )
    assert fake.contexts_created == ["without_device_memory"] and backend.scratch_bytes > 0
    backend.close()


@pytest.mark.slow
def test_cuda_graphs_per_dit_bucket_64_128_64(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, manifest: dict[str, Any], tiny_runtime
) -> None:
    """Each bucket replays its own graph, captured on its own static context: 64 after 128 is still 64.

    On one dynamic-profile context the 64 graph would replay with the shapes of the last enqueue (128) and
    read the stale tail of the conditioning buffer."""
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    backend = TensorRTBackend(tiny_export, manifest, engine_dir=fake_engines, use_cuda_graphs=True)
    graphs = FakeGraphs.instances[-1]
    plain = TensorRTBackend(tiny_export, manifest, engine_dir=fake_engines, graphs=["dit"])
    results = []
    for n, scale in ((40, 1.0), (100, 1.0), (40, 0.5), (100, 0.5), (40, 0.25)):
        feeds = _feeds(tiny_runtime, n)["dit"]
        feeds["latents"] = feeds["latents"] * scale
        got = backend.run("dit", feeds)["velocity"]
        ref = tiny_runtime.backend.run("dit", feeds)["velocity"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=f"text length {n}, x{scale}")
        np.testing.assert_allclose(plain.run("dit", feeds)["velocity"], got, rtol=1e-6, atol=1e-6)
        results.append(got)
    assert len(graphs.captured) == 2 and graphs.launches == 3  # one graph per bucket, replayed
    info = backend.describe()["engines"]["dit"]
    assert info["captured_cuda_graphs"] == 2 and info["static_profiles"] == 4
    dit = backend._engines["dit"]
    assert len({id(c) for c in dit.contexts}) == 4
    assert {c.device_memory for c in dit.contexts} == {int(backend._scratch)}  # one shared scratch block
    backend.run("llm", _feeds(tiny_runtime)["llm"])  # dynamic-shape profiles are never captured
    assert len(graphs.captured) == 2
    backend.close()
    plain.close()
    assert not graphs.captured


def test_decode_keeps_the_kv_cache_on_the_device(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, tiny_runtime
) -> None:
    """ask(): the cache never crosses to the host; each step copies embeddings, positions and mask in and
    the logits out, page-locked, and swaps the two cache buffers."""
    from mobile_o_ros.runtime.engine import MobileORuntime

    rt = MobileORuntime.load(tiny_export, backend="tensorrt", engine_dir=fake_engines)
    eng = rt.backend._engines["llm"]
    kv_in, kv_out = int(eng.buffers["kv_cache"]), int(eng.buffers["kv_cache_out"])
    seen: list[tuple[int, int]] = []
    original = eng.contexts[1].execute_async_v3

    def spy(stream: int) -> bool:
        seen.append((eng.contexts[1].addr["kv_cache"], eng.contexts[1].addr["kv_cache_out"]))
        return original(stream)

    eng.contexts[1].execute_async_v3 = spy
    fake_trt.copies.clear()
    ours = rt.ask(None, "what is a square?", max_new_tokens=6)  # text only: every copy is the LLM's
    ref = tiny_runtime.ask(None, "what is a square?", max_new_tokens=6)
    assert ours.token_ids == ref.token_ids and len(seen) >= 2
    m = rt.model_info
    assert fake_trt.pageable_copies == 0 and all(pinned for _, _, pinned in fake_trt.copies)
    htod = [n for d, n, _ in fake_trt.copies if d == "htod"]
    dtoh = [n for d, n, _ in fake_trt.copies if d == "dtoh"]
    calls = len(seen) + 1  # the decode steps and the prefill
    assert len(htod) == 3 * calls  # embeddings, positions, mask: never the cache
    capacity = 64 * -(-(ours.prompt_tokens + 6) // 64)
    assert max(htod[3:]) <= 4 * max(m["hidden_size"], capacity)  # a decode step is a few KB
    assert dtoh == [m["vocab_size"] * 4] * calls  # only the logits come back
    assert seen[:3] == [(kv_out, kv_in), (kv_in, kv_out), (kv_out, kv_in)]  # swapped every call
    rt.close()


@pytest.mark.slow
def test_bench_runs_in_the_backends_context(fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path) -> None:
    """GPU timings come from events on the backend's own stream, memory from its context: no pycuda call
    without a current context (the backend pops it after every call)."""
    from mobile_o_ros.bench import run_trt_bench

    report = run_trt_bench(tiny_export, fake_engines, repeats=1, steps=1, max_new_tokens=3)
    assert fake_trt.pushes == 0
    rows = report["rows"]
    assert rows["vision"]["gpu_ms"] >= 0 and rows["vision"]["wall_ms"] > 0
    split = rows["decode_split"]
    assert split["calls"] >= 1 and {"h2d_ms", "enqueue_ms", "d2h_ms"} <= set(split)
    assert report["gpu_memory_gb"] == pytest.approx(2.0)


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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------------ gpu-report
@pytest.mark.slow
def test_gpu_report_on_the_stand_in(
    fake_trt: FakeTRT, tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step of the first-GPU report runs on the stand-in, in order, into JSON and Markdown."""
    from mobile_o_ros import gpu_report as rep

    monkeypatch.setattr(rep, "is_jetson", lambda: True)
    monkeypatch.setattr(rep.GpuReport, "one_chunk_build", lambda self: {"status": "built", "seconds": 0.0})
    runner = rep.GpuReport(tiny_export, tmp_path / "work", target="orin-nano", log=lambda s: None)
    result = runner.run()
    steps = result["steps"]
    assert list(steps) == list(rep.STEPS)
    assert {s: r["status"] for s, r in steps.items()} == dict.fromkeys(rep.STEPS, "done"), steps
    parity = steps["parity"]["result"]
    assert set(parity) == {"fp32", "fp16"}
    fp32 = parity["fp32"]
    assert "llm/logits (prefill)" in fp32 and "llm/logits (decode step)" in fp32 and "llm/mcp_inputs" in fp32
    assert all(m["cosine"] > 0.99999 and m["nan"] == m["inf"] == 0 for m in fp32.values())
    dit_layers = steps["fp32_layers"]["result"]["dit"]
    assert dit_layers["by_rule"]["sana_linear_attention"]["not_visible"] > 0  # the stand-in's Myelin node
    buckets = steps["dit_buckets"]["result"]
    assert buckets["identical"] and buckets["captured_cuda_graphs"] == 2
    assert [c["text_len"] for c in buckets["calls"]] == [40, 100, 40, 100, 40]
    rope = steps["rope"]["result"]
    assert set(rope) == {"fp32, TF32 off", "fp32, TF32 on", "fp16"}
    assert "positions 600..631" in rope["fp32, TF32 off"]
    tf32_build = [b for b in fake_trt.builds if fake_trt.trt.BuilderFlag.TF32 in b["flags"]]
    assert len(tf32_build) == 1 and tf32_build[0]["onnx"].endswith("llm.onnx")
    memory = steps["memory"]["result"]
    assert set(memory["engines"]) == {f"{g}.fp16.engine" for g in GRAPHS}
    assert (
        memory["all_engines_loaded"]["shared_scratch_bytes"] > 0
        and "all engines loaded" in memory["budget"][-1]
    )
    split = steps["decode_split"]["result"]
    assert split["per_decode_step"]["calls"] == 32 and split["prefill"]["calls"] == 1
    assert steps["jetson"]["result"]["lm_head_chunks_1"]["status"] == "built"
    json_path, md_path = rep.write_report(result, tmp_path / "out")
    assert json.loads(json_path.read_text())["steps"]["rope"]["status"] == "done"
    md = md_path.read_text()
    assert all(title in md for title in rep.TITLES.values()) and "| llm/logits (decode step) |" in md
    assert fake_trt.pushes == 0


def test_gpu_report_without_a_gpu_skips_with_reasons(
    tiny_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mobile_o_ros import gpu_report as rep

    monkeypatch.setattr(rep, "gpu_status", lambda: (False, "needs TensorRT and pycuda (not here)"))
    monkeypatch.setattr(rep, "is_jetson", lambda: False)
    result = rep.GpuReport(tiny_export, tmp_path, log=lambda s: None).run()
    steps = result["steps"]
    skipped = [s for s, r in steps.items() if r["status"] == "skipped"]
    assert skipped == ["parity", "fp32_layers", "dit_buckets", "rope", "decode_split", "jetson"]
    assert all("needs TensorRT" in steps[s]["reason"] for s in skipped[:-1])
    assert steps["jetson"]["reason"].startswith("not a Jetson")
    memory = steps["memory"]["result"]  # the ONNX part of the budget needs no GPU
    assert memory["onnx_budget"]["total_weights_bytes"] > 0 and "needs TensorRT" in memory["skipped"]
    md = rep.to_markdown(result)
    assert md.count("Skipped: ") == 6 and "| all |" in md
    assert rep.cma_from_meminfo("MemTotal: 10 kB\nCmaTotal:  262144 kB\nCmaFree:  1024 kB\n") == {
        "CmaTotal": 262144 * 1024,
        "CmaFree": 1024 * 1024,
    }


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


def test_a_seen_frame_answers_from_the_device_cache(
    fake_trt: FakeTRT, fake_engines: Path, tiny_export: Path, tiny_runtime
) -> None:
    """frame() reads the prefix's cache back once; each ask_about() loads it into the device buffer and
    answers as onnxruntime's independent ask does."""
    from mobile_o_ros.runtime.engine import MobileORuntime

    rt = MobileORuntime.load(tiny_export, backend="tensorrt", engine_dir=fake_engines)
    picture = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frame = rt.frame(picture)
    np.testing.assert_allclose(
        frame.prefix_cache, tiny_runtime.frame(picture).prefix_cache, rtol=1e-3, atol=1e-3
    )
    for question in ("what is this?", "is there a red circle?"):
        ours = rt.ask_about(frame, question, max_new_tokens=6)
        assert ours.token_ids == tiny_runtime.ask(picture, question, max_new_tokens=6).token_ids
    rt.close()
