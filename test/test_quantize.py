"""int8 graphs: the node plan, QDQ and dynamic candidates of the tiny export, the manifest's decisions, the
runtime on an int8 export, calibration folders, the TensorRT INT8 build on the CPU stand-in, and the bench's
load guard. Figures come from onnxruntime runs; nothing is mocked but TensorRT (the stand-in)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from int8_support import GRAPHS, quantized_copy
from trt_standin import ENV, FakeGraphs, FakeTRT

from mobile_o_ros.export import quantize
from mobile_o_ros.export.calibration import CalibrationError, folder_set, write_folder
from mobile_o_ros.manifest import int8_graphs, load_manifest
from mobile_o_ros.shapes.calibration import shapes_set
from mobile_o_ros.trt import builder, cache, precision
from mobile_o_ros.trt import quantized as trt_quantized

#: The worst output cosine against fp32 each int8 graph of the tiny random export keeps (measured ≥ 0.99).
TINY_MIN_COSINE = 0.98


@pytest.fixture(scope="module")
def dynamic_export(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny export with the llm graph forced to its dynamic candidate (the others fp32)."""
    out = tmp_path_factory.mktemp("int8") / "dynamic"
    quantized_copy(tiny_export, out, graphs=["llm"], force=["llm"], modes=("int8-dynamic",))
    return out


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def _dequantized_inputs(path: Path, weights_only: bool = False) -> dict[str, list[str]]:
    """Node name → its inputs that are DequantizeLinear outputs (of int8 weights only, if asked)."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    dq = {
        o
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and (not weights_only or n.input[0] in inits)
        for o in n.output
    }
    return {n.name: [i for i in n.input if i in dq] for n in model.graph.node}


# ------------------------------------------------------------------------------------------- plan
def test_plan_keeps_the_fp32_islands_and_activation_products(tiny_export: Path) -> None:
    for graph in GRAPHS:
        model = onnx.load(str(tiny_export / f"{graph}.onnx"), load_external_data=False)
        nodes, kept = quantize.plan_nodes(model, graph)
        ops = {n.name: n.op_type for n in model.graph.node}
        assert nodes and all(ops[n] in quantize.QUANTIZED_OPS for n in nodes), graph
        for name, reason in kept.items():
            assert reason == "activation_product" or reason == precision.rule_for(graph, name, ops[name])
        assert not set(nodes) & set(kept)
    dit = onnx.load(str(tiny_export / "dit.onnx"), load_external_data=False)
    _, kept = quantize.plan_nodes(dit, "dit")
    blocks = {n.name.split("/")[2] for n in dit.graph.node if "/transformer_blocks." in n.name}
    assert sum(r == "sana_linear_attention" for r in kept.values()) == 2 * len(blocks)  # 2 MatMuls a block
    llm = onnx.load(str(tiny_export / "llm.onnx"), load_external_data=False)
    _, kept = quantize.plan_nodes(llm, "llm")
    assert "rotary_embedding" in kept.values() and "activation_product" in kept.values()


def test_pointwise_convs_as_matmuls_compute_the_same(tiny_export: Path, tmp_path: Path) -> None:
    from mobile_o_ros.export.conv_matmul import pointwise_convs_to_matmul

    rng = np.random.default_rng(0)
    manifest = load_manifest(tiny_export)
    m, size = manifest["model"], manifest["image"]["size"]
    c, h, w = m["latent_shape"]
    feeds = {
        "vision": {"images": rng.random((1, 3, size, size), dtype=np.float32)},
        "dit": {
            "latents": rng.standard_normal((2, c, h, w)).astype(np.float32),
            "timestep": np.array([500.0, 500.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 5, m["caption_dim"])).astype(np.float32),
            "encoder_attention_mask": np.ones((2, 5), np.float32),
        },
    }
    for graph, graph_feeds in feeds.items():
        model = onnx.load(str(tiny_export / f"{graph}.onnx"))
        before = sum(n.op_type == "Conv" for n in model.graph.node)
        count = pointwise_convs_to_matmul(model)
        assert count > 0 and sum(n.op_type == "Conv" for n in model.graph.node) == before - count
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp_path / f"{graph}.onnx"))
        measured = quantize.compare(
            tiny_export / f"{graph}.onnx", tmp_path / f"{graph}.onnx", graph, [graph_feeds], min_seconds=0
        )
        assert measured["cosine"] > 0.999999, graph


# ------------------------------------------------------------------------------------------- QDQ export
def test_qdq_graphs_have_qdq_nodes_and_keep_fp32_islands(tiny_int8_export: Path, tiny_export: Path) -> None:
    manifest = load_manifest(tiny_int8_export, verify_hashes=True)
    for graph in GRAPHS:
        meta = manifest["graphs"][graph]
        assert meta["file"] == f"{graph}.int8.onnx" and meta["fp32_file"] == f"{graph}.onnx"
        ops = _ops(tiny_int8_export / meta["file"])
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0, graph
        assert meta["weights_bytes"] < manifest["memory_budget"]["total_weights_bytes"]
        fed = _dequantized_inputs(tiny_int8_export / meta["file"])
        model = onnx.load(str(tiny_export / f"{graph}.onnx"), load_external_data=False)
        planned, kept = quantize.plan_nodes(model, graph)
        for name in kept:  # islands and activation products take no int8 input
            assert not fed.get(name), (graph, name)
        assert all(fed[name] for name in planned), graph  # every planned node got Q/DQ inputs
        softmax = [n for n, inputs in fed.items() if "Softmax" in n and inputs]
        assert not softmax, graph
        # TensorRT's fp32 islands stay fp32 ops: same op, no int8 weight (their input may be the dequantized
        # output of a quantized producer)
        rules = precision.fp32_node_rules(tiny_int8_export / meta["file"], graph)
        assert rules == precision.fp32_node_rules(tiny_export / f"{graph}.onnx", graph), graph
        weights = _dequantized_inputs(tiny_int8_export / meta["file"], weights_only=True)
        assert all(not weights.get(n) for n in rules), graph


def test_manifest_records_each_decision(tiny_int8_export: Path, dynamic_export: Path) -> None:
    q = load_manifest(tiny_int8_export)["quantization"]
    assert q["criteria"]["modes_tried"] == ["int8-qdq"] and q["calibration"]["images"] == 2
    assert len(q["load_average"]["before"]) == 3
    for graph in GRAPHS:
        d = q["graphs"][graph]
        assert d["mode"] == "int8-qdq" and d["reason"]
        assert d["speedup"] > 0.0 and TINY_MIN_COSINE <= d["cosine"] <= 1.0, (graph, d["cosine"])
        cand = d["candidates"]["int8-qdq"]
        assert cand["quantized_nodes"] > 0 and cand["QuantizeLinear"] > 0
        assert all(t["fp32_ms"] > 0 and t["int8_ms"] > 0 for t in cand["timing"].values())
    assert set(q["graphs"]["llm"]["candidates"]["int8-qdq"]["timing"]) == {"prefill", "decode"}
    d = load_manifest(dynamic_export)["quantization"]["graphs"]
    assert d["llm"]["mode"] == "int8-dynamic" and d["vision"] == {"mode": "fp32", "reason": "not tried"}
    assert int8_graphs(load_manifest(dynamic_export)) == ["llm"]


def test_int8_graphs_run_in_onnxruntime_close_to_fp32(tiny_int8_export: Path, tiny_export: Path) -> None:
    from mobile_o_ros.runtime.engine import MobileORuntime

    image = np.full((96, 128, 3), 200, np.uint8)
    image[20:60, 30:90] = (220, 30, 30)
    fp32 = MobileORuntime.load(tiny_export, backend="onnxruntime")
    int8 = MobileORuntime.load(tiny_int8_export, backend="onnxruntime")
    a, b = fp32.encode_image(image), int8.encode_image(image)
    assert not np.array_equal(a, b)  # the int8 file ran
    assert quantize.cosine(a, b) >= TINY_MIN_COSINE
    answer = int8.ask(image, "what colour is the square?", max_new_tokens=4, seed=0)
    assert answer.num_tokens >= 0
    img = int8.generate("a red circle", steps=2, seed=0).image
    assert img is not None and img.shape == fp32.generate("a red circle", steps=2, seed=0).image.shape


def test_dynamic_candidate_is_onnxruntime_only(dynamic_export: Path) -> None:
    manifest = load_manifest(dynamic_export)
    meta = manifest["graphs"]["llm"]
    assert meta["file"] == "llm.int8dyn.onnx" and meta["fp32_file"] == "llm.onnx"
    ops = _ops(dynamic_export / meta["file"])
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert trt_quantized.engine_graph(manifest, "llm")["file"] == "llm.onnx"
    assert trt_quantized.engine_graph(manifest, "dit")["file"] == "dit.onnx"


# ------------------------------------------------------------------------------------------- decisions
def _measured(cos: float, **speedups: float) -> dict[str, Any]:
    timing = {k: {"fp32_ms": 10.0, "int8_ms": 10.0 / v, "speedup": v} for k, v in speedups.items()}
    return {"cosine": cos, "timing": timing, "speedup": min(speedups.values())}


def test_choose_keeps_int8_only_where_it_holds_and_pays() -> None:
    assert quantize.choose({}) == ("fp32", "nothing to quantize")
    mode, why = quantize.choose({"int8-qdq": _measured(0.95, call=3.0)})
    assert mode == "fp32" and "cosine 0.9500" in why
    mode, why = quantize.choose({"int8-qdq": _measured(0.999, prefill=2.0, decode=0.8)})
    assert mode == "fp32" and "slower than fp32 on decode" in why
    mode, why = quantize.choose({"int8-qdq": _measured(0.999, call=1.05)})
    assert mode == "fp32" and "does not pay" in why
    both = {"int8-qdq": _measured(0.999, call=1.5), "int8-dynamic": _measured(0.9999, call=2.0)}
    assert quantize.choose(both)[0] == "int8-dynamic"
    both["int8-dynamic"] = _measured(0.9, call=3.0)
    mode, why = quantize.choose(both)
    assert mode == "int8-qdq" and "int8-dynamic: cosine" in why
    mode, why = quantize.choose({"int8-qdq": _measured(0.95, call=0.5)}, force=True)
    assert mode == "int8-qdq" and why.startswith("forced")


# ------------------------------------------------------------------------------------------- calibration
def test_calibration_folder_round_trip_and_errors(tmp_path: Path) -> None:
    original = shapes_set(items=3, render_size=64)
    folder = write_folder(original, tmp_path / "calib")
    loaded = folder_set(folder)
    assert loaded.prompts == original.prompts and loaded.questions == original.questions
    assert loaded.instructions == original.instructions
    assert all(np.array_equal(a, b) for a, b in zip(loaded.images, original.images, strict=True))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no images"):
        folder_set(tmp_path / "empty")
    (folder / "prompts.txt").unlink()
    with pytest.raises(CalibrationError, match=r"no prompts\.txt"):
        folder_set(folder)
    with pytest.raises(CalibrationError, match="not found"):
        folder_set(tmp_path / "missing")


def test_export_cli_quantize_errors_are_one_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mobile_o_ros.cli import main

    out = str(tmp_path / "out")
    cases = [
        (["--calibration", str(tmp_path)], "need --quantize int8"),
        (["--int8-mode", "qdq"], "need --quantize int8"),
        (["--quantize", "int8", "--calibration", str(tmp_path / "nope")], "calibration folder not found"),
        (["--quantize", "int8", "--force-int8", "unet"], "unknown graphs unet"),
        (["--quantize", "int8", "--only", "mcp"], "export every graph"),
    ]
    for extra, message in cases:
        assert main(["export", str(tiny_checkpoint), out, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mobile-o: error:") and message in err and "\n" not in err
    assert not Path(out).exists()  # refused before exporting


# ------------------------------------------------------------------------------------------- TensorRT
@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTRT:
    from mobile_o_ros.runtime import trt_backend

    fake = FakeTRT().install(monkeypatch)
    monkeypatch.setattr(trt_backend, "_DriverGraphs", FakeGraphs)
    monkeypatch.setattr(FakeGraphs, "fake", fake)
    return fake


def test_qdq_graphs_build_as_int8_engines(fake_trt: FakeTRT, tiny_int8_export: Path, tmp_path: Path) -> None:
    from mobile_o_ros.trt import inspect

    logs: list[str] = []
    builder.build_engines(tiny_int8_export, tmp_path / "e", log=logs.append)
    trt = fake_trt.trt
    entries = cache.load_engine_manifest(tmp_path / "e")["engines"]
    for graph, build in zip(GRAPHS, fake_trt.builds, strict=True):
        assert build["onnx"].endswith(f"{graph}.int8.onnx")
        assert {trt.BuilderFlag.INT8, trt.BuilderFlag.FP16} <= build["flags"], graph
        rules = precision.fp32_node_rules(tiny_int8_export / f"{graph}.int8.onnx", graph)
        assert sorted(n.removesuffix("_trt") for n in build["pinned"]) == sorted(rules), graph
        layers = inspect.read_layers((tmp_path / "e" / f"{graph}.fp16.layers.json").read_text())
        assert any(la.precision == "int" for la in layers), graph  # layers behind a DequantizeLinear
        e = entries[f"{graph}.fp16.engine"]
        assert e["int8"] and e["source_file"] == f"{graph}.int8.onnx"
    assert entries["dit.fp16.engine"]["fp32_layers"]["sana_linear_attention"] > 0
    assert any("explicit quantization, INT8 flag" in line for line in logs)
    # fp32 precision: INT8 alone
    builder.build_engines(
        tiny_int8_export, tmp_path / "e32", precision="fp32", graphs=["mcp"], log=logs.append
    )
    assert fake_trt.builds[-1]["flags"] == {trt.BuilderFlag.INT8}
    with pytest.raises(cache.EngineCacheError, match="explicitly quantized"):
        builder.build_engines(
            tiny_int8_export, tmp_path / "st", graphs=["mcp"], strongly_typed=True, log=logs.append
        )


def test_qdq_build_without_the_int8_flag_fails_on_the_stand_in(
    fake_trt: FakeTRT, tiny_int8_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in refuses Q/DQ layers in a weakly typed build without INT8, as TensorRT does; the builder
    sets it (checked above), so only a builder that forgot it fails."""
    monkeypatch.setattr(trt_quantized, "has_qdq", lambda path: False)
    with pytest.raises(cache.EngineCacheError, match="failed to build"):
        builder.build_engines(tiny_int8_export, tmp_path / "e", graphs=["mcp"], log=lambda s: None)
    assert fake_trt.failed_builds == ["Q/DQ layers in a weakly typed network without the INT8 flag"]


def test_dynamic_graph_engine_is_built_from_its_fp32_file(
    fake_trt: FakeTRT, dynamic_export: Path, tmp_path: Path
) -> None:
    logs: list[str] = []
    builder.build_engines(dynamic_export, tmp_path / "e", graphs=["llm", "mcp"], log=logs.append)
    llm, mcp = fake_trt.builds
    assert llm["onnx"].endswith("/llm.onnx") and fake_trt.trt.BuilderFlag.INT8 not in llm["flags"]
    assert mcp["onnx"].endswith("/mcp.onnx")
    assert any("int8-dynamic (onnxruntime only); its engine is built from llm.onnx" in line for line in logs)
    again = builder.build_engines(dynamic_export, tmp_path / "e", graphs=["llm"], no_build=True, env=ENV)
    assert again[0].status == "fresh"  # the key is the fp32 file's, as the backend computes it


def test_int8_engines_run_in_the_backend(fake_trt: FakeTRT, tiny_int8_export: Path, tmp_path: Path) -> None:
    from mobile_o_ros.runtime.ort_backend import OnnxRuntimeBackend
    from mobile_o_ros.runtime.trt_backend import TensorRTBackend

    builder.build_engines(tiny_int8_export, tmp_path / "e", graphs=["mcp"], log=lambda s: None)
    manifest = load_manifest(tiny_int8_export)
    m = manifest["model"]
    shape = (2, m["mcp_num_layers"], 9, m["hidden_size"])
    feeds = {"hidden_states": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    want = OnnxRuntimeBackend(tiny_int8_export, manifest, graphs=["mcp"]).run("mcp", feeds)["conditioning"]
    trt = TensorRTBackend(tiny_int8_export, manifest, engine_dir=tmp_path / "e", graphs=["mcp"])
    try:
        got = trt.run("mcp", feeds)["conditioning"]
    finally:
        trt.close()
    assert got.shape == want.shape and quantize.cosine(got, want) > 0.999


# ------------------------------------------------------------------------------------------- bench load guard
def test_bench_refuses_a_loaded_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mobile_o_ros import bench_load
    from mobile_o_ros.bench import run_bench
    from mobile_o_ros.errors import CliError

    cores = os.cpu_count() or 1
    busy = lambda: (cores * 0.5 + 0.25, 0.0, 0.0)
    idle = lambda: (cores * 0.5, 9.0, 9.0)  # the 5- and 15-minute loads do not count
    assert bench_load.is_loaded(busy)[0] and not bench_load.is_loaded(idle)[0]
    with pytest.raises(CliError) as err:
        run_bench(tmp_path / "b", quick=True, load=busy)
    assert err.value.code == 2 and str(err.value).startswith("the machine is busy: 1-minute load average")
    assert "\n" not in str(err.value) and not (tmp_path / "b").exists()
    with pytest.raises(CliError, match="unknown bench sections"):
        run_bench(tmp_path / "b", quick=True, sections=["nope"], load=idle)
    snap = bench_load.snapshot(busy)
    assert snap["load_average"][0] == round(cores * 0.5 + 0.25, 2) and snap["cpu_model"]


def test_bench_allow_loaded_marks_every_row(tmp_path: Path) -> None:
    from mobile_o_ros.bench import run_bench

    cores = os.cpu_count() or 1
    busy = lambda: (cores + 1.0, 0.0, 0.0)
    code = run_bench(
        tmp_path, quick=True, components=["mcp"], sections=["components"], allow_loaded=True, load=busy
    )
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["load_check"]["allow_loaded"] and report["load_check"]["rows_marked_loaded"]
    assert "above half" in report["load_check"]["at_start"]
    row = report["components"]["mcp"]
    assert row["loaded"] and row["onnxruntime"]["median_ms"] > 0
    for key in ("machine_before", "machine_after"):
        assert len(row[key]["load_average"]) == 3 and row[key]["cpu_model"] == report["machine"]["cpu_model"]
    tables = (tmp_path / "bench.md").read_text()
    assert "Every row is marked loaded (`--allow-loaded`)." in tables
    assert "| MCP | " in tables and f"at most {cores + 1.0:.2f}" in tables


def test_bench_int8_rows_on_tiny(tmp_path: Path) -> None:
    from mobile_o_ros.bench import _worker
    from mobile_o_ros.bench_int8 import int8_section

    onnx_dir = tmp_path / "onnx"

    def export(graphs: list[str]) -> str | None:
        return _worker(["--export", "tiny", "mcp", str(onnx_dir)], 600).get("error")

    section = int8_section("tiny", onnx_dir, True, export, graphs=("mcp",))
    row = section["rows"]["mcp"]
    assert set(row) == {"int8-qdq", "int8-dynamic", "chosen"}
    assert all(row[m]["fp32_ms"] > 0 and 0 < row[m]["cosine"] <= 1.0 for m in quantize.MODES)
    decision = section["graphs"]["mcp"]
    assert decision["mode"] in ("fp32", *quantize.MODES) and decision["machine_before"]["cpu_model"]
    assert "end_to_end" not in section  # only with every graph


def test_selftest_takes_an_int8_export(tiny_int8_export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mobile_o_ros.cli import main

    assert (
        main(["selftest", str(tiny_int8_export), "--limit", "3", "--json"])
        == 0  # --backend auto: onnxruntime
    )
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "onnxruntime" and set(result["scores"]) == {"vqa", "generation", "editing"}
    assert result["vqa"]["n"] == 3 and result["editing"]["n"] == 3
