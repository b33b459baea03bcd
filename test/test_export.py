"""ONNX export of the tiny checkpoint: manifest, standard ops, per-graph and end-to-end parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mobile_o_ros.export.onnx_export import embedding_table_dtype, export_model, sha256_file
from mobile_o_ros.export.parity import COSINE_THRESHOLD, end_to_end_parity, graph_parity
from mobile_o_ros.runtime.backend import BackendError

GRAPHS = ("vision", "llm", "mcp", "dit", "vae_decoder")


def test_manifest_describes_every_graph(tiny_export: Path) -> None:
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert set(manifest["graphs"]) == set(GRAPHS)
    assert manifest["exporter"]["dynamo"] is False and 17 <= manifest["exporter"]["opset"] <= 19
    for name, g in manifest["graphs"].items():
        proto = onnx.load(str(tiny_export / g["file"]), load_external_data=False)
        assert [i.name for i in proto.graph.input] == [i["name"] for i in g["inputs"]], name
        assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), name
        assert proto.opset_import[0].version == manifest["exporter"]["opset"]
    for f, digest in manifest["files"].items():
        assert sha256_file(tiny_export / f) == digest
    dit = manifest["graphs"]["dit"]
    assert [i["name"] for i in dit["inputs"]] == [
        "latents",
        "timestep",
        "encoder_hidden_states",
        "encoder_attention_mask",
    ]
    assert "Clip" in dit["op_types"]  # the ±65504 clip of SANA's linear attention is explicit
    assert dit["inputs"][0]["shape"] == ["batch", 32, 16, 16]
    assert manifest["graphs"]["vae_decoder"]["outputs"][0]["shape"] == [1, 3, 512, 512]
    llm = manifest["graphs"]["llm"]
    assert [o["name"] for o in llm["outputs"]] == ["logits", "kv_cache_out", "mcp_inputs"]
    assert llm["outputs"][2]["shape"][:2] == [1, 4] and llm["outputs"][2]["shape"][2] == "seq"
    assert "ScatterElements" in llm["op_types"] and "If" not in llm["op_types"]
    assert manifest["model"]["lm_head_chunks"] == 2
    assert manifest["special_tokens"]["image_token_index"] == -200
    assert manifest["defaults"]["steps"] == 20 and manifest["defaults"]["guidance_scale"] == 1.5
    table = np.load(tiny_export / "embed_tokens.npy")
    assert table.shape == (manifest["model"]["vocab_size"], manifest["model"]["hidden_size"])
    assert table.dtype == np.float32  # the tiny checkpoint stores fp32: the table keeps every bit


@pytest.mark.parametrize(
    ("choice", "stored", "expected"),
    [
        ("auto", "BF16", torch.float16),
        ("auto", "F16", torch.float16),
        ("auto", "F32", torch.float32),
        ("auto", None, torch.float32),
        ("fp16", "F32", torch.float16),
        ("fp32", "BF16", torch.float32),
    ],
)
def test_the_embedding_table_is_fp16_only_where_the_checkpoint_is_16_bit(choice, stored, expected) -> None:
    assert embedding_table_dtype(choice, stored) == expected


@pytest.mark.slow
def test_a_bf16_checkpoint_exports_an_fp16_table_that_holds_its_values(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from mobile_o_ros.reference.checkpoint import load_checkpoint, save_checkpoint, stored_dtype

    loaded = load_checkpoint(tiny_checkpoint)
    bf16_dir = save_checkpoint(loaded.model, tmp_path / "bf16", dtype=torch.bfloat16)
    for f in tiny_checkpoint.iterdir():  # the tokenizer files beside the weights
        if f.is_file() and not (bf16_dir / f.name).exists():
            (bf16_dir / f.name).write_bytes(f.read_bytes())
    assert stored_dtype(bf16_dir, "model.embed_tokens.weight") == "BF16"
    bf16 = load_checkpoint(bf16_dir)
    export_model(bf16, tmp_path / "export", only=["mcp"])
    table = np.load(tmp_path / "export" / "embed_tokens.npy")
    assert table.dtype == np.float16
    weight = bf16.model.llm.get_input_embeddings().weight.detach().float().numpy()
    small = np.abs(weight) < 2.0**-17  # fp16 holds every bf16 value from 2**-17 to 65504 exactly
    assert np.array_equal(table[~small].astype(np.float32), weight[~small])


def test_one_llm_graph_without_a_gather_at_minus_one(tiny_export: Path) -> None:
    """The last position is a Slice: a Gather at index -1 on a dynamic axis is undefined in TensorRT."""
    proto = onnx.load(str(tiny_export / "llm.onnx"))
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[1] in consts]
    assert not [n.name for n in gathers if (consts[n.input[1]] < 0).any()]
    # q is scaled before QK^T: the score MatMul of each layer takes a Mul, not the other way round
    scaled = {n.output[0] for n in proto.graph.node if n.op_type == "Mul"}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[0] in scaled]
    assert len(matmuls) >= 4  # one per layer of the tiny model


def test_manifest_memory_budget_counts_the_graph_weights(tiny_export: Path, tiny_loaded) -> None:
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    budget = manifest["memory_budget"]
    assert set(budget["graphs"]) == set(GRAPHS)
    for name, g in manifest["graphs"].items():
        proto = onnx.load(str(tiny_export / g["file"]))
        stored = sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)
        assert stored <= g["weights_bytes"] <= stored + 4096, name  # + small Constant tensors
        assert g["weights_bytes"] / 2 <= g["weights_bytes_fp16"] < g["weights_bytes"], name
        assert budget["graphs"][name]["weights_bytes"] == g["weights_bytes"]
    assert budget["total_weights_bytes"] == sum(g["weights_bytes"] for g in manifest["graphs"].values())
    m = manifest["model"]
    table = np.load(tiny_export / "embed_tokens.npy", mmap_mode="r")
    assert budget["embed_table_bytes"] == m["vocab_size"] * m["hidden_size"] * table.dtype.itemsize
    # one LLM graph: the transformer and the (tied) LM head once, i.e. every LLM parameter once in fp32
    expected = sum(p.numel() for p in tiny_loaded.model.llm.parameters()) * 4
    assert 0 <= manifest["graphs"]["llm"]["weights_bytes"] - expected <= 1 << 16


@pytest.mark.slow
def test_every_graph_matches_pytorch(tiny_loaded, tiny_runtime) -> None:
    results = graph_parity(tiny_loaded, tiny_runtime)
    assert set(results) == set(GRAPHS)
    for graph, outputs in results.items():
        for out, m in outputs.items():
            assert m["cosine"] >= COSINE_THRESHOLD, (graph, out, m)
            assert m["max_abs"] <= 1e-3 * max(1.0, m["ref_max_abs"]), (graph, out, m)


@pytest.mark.slow
def test_end_to_end_matches_pytorch(tiny_loaded, tiny_runtime) -> None:
    e = end_to_end_parity(tiny_loaded, tiny_runtime, steps=4)
    assert e["answer"]["identical_ids"], e["answer"]
    assert e["generate"]["psnr_db"] >= 40.0
    assert e["edit"]["psnr_db"] >= 40.0


def test_backend_names_mismatched_tensors(tiny_runtime) -> None:
    with pytest.raises(
        BackendError, match=r"graph 'vae_decoder' input 'latents' must have shape \[1, 32, 16, 16\]"
    ):
        tiny_runtime.backend.run("vae_decoder", {"latents": np.zeros((1, 32, 8, 8), np.float32)})
    with pytest.raises(BackendError, match="must be float32, got float64"):
        tiny_runtime.backend.run("vae_decoder", {"latents": np.zeros((1, 32, 16, 16))})
    with pytest.raises(BackendError, match="takes inputs"):
        tiny_runtime.backend.run("mcp", {"x": np.zeros(1, np.float32)})
