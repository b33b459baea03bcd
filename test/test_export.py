"""ONNX export of the tiny checkpoint: manifest, standard ops, per-graph and end-to-end parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mobile_o_ros.export.onnx_export import sha256_file
from mobile_o_ros.export.parity import COSINE_THRESHOLD, end_to_end_parity, graph_parity
from mobile_o_ros.runtime.backend import BackendError

GRAPHS = ("vision", "llm_hidden", "llm_decode", "mcp", "dit", "vae_decoder")


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
    assert manifest["graphs"]["llm_hidden"]["outputs"][0]["shape"][:2] == [1, 4]
    assert "ScatterElements" in manifest["graphs"]["llm_decode"]["op_types"]
    assert manifest["model"]["lm_head_chunks"] == 2
    assert manifest["special_tokens"]["image_token_index"] == -200
    assert manifest["defaults"]["steps"] == 20 and manifest["defaults"]["guidance_scale"] == 1.5
    table = np.load(tiny_export / "embed_tokens.npy")
    assert table.shape == (manifest["model"]["vocab_size"], manifest["model"]["hidden_size"])


def test_every_graph_matches_pytorch(tiny_loaded, tiny_runtime) -> None:
    results = graph_parity(tiny_loaded, tiny_runtime)
    assert set(results) == set(GRAPHS)
    for graph, outputs in results.items():
        for out, m in outputs.items():
            assert m["cosine"] >= COSINE_THRESHOLD, (graph, out, m)
            assert m["max_abs"] <= 1e-3 * max(1.0, m["ref_max_abs"]), (graph, out, m)


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
