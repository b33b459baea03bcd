"""The MCP: the released structure, fed hidden_states[-4:] (three raw layers, the last final-normed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mobile_o_ros.model_config import MCPConfig
from mobile_o_ros.reference.mcp import MobileConditioningProjector, SqueezeExcite


def test_parameter_count_and_keys() -> None:
    mcp = MobileConditioningProjector(MCPConfig())
    assert sum(p.numel() for p in mcp.parameters()) == 2_440_452
    sd = mcp.state_dict()
    assert sd["fusion.temperature"].shape == () and float(sd["fusion.temperature"]) == 2.0
    assert sd["fusion.sequence_refiners.1.channel_attn.fc.0.weight"].shape == (128, 512)
    weights = mcp.fusion.fusion_weights()
    assert torch.allclose(weights, torch.tensor([0.2256, 0.2411, 0.2578, 0.2755]), atol=1e-4)


def test_mcp_inputs_are_last_four_hidden_states(tiny_loaded) -> None:
    model = tiny_loaded.model
    embeds = torch.randn(1, 9, model.config.hidden_size)
    with torch.no_grad():
        got = model.mcp_inputs(embeds)
        full = model.llm.model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
        # independent recomputation: run the decoder layers by hand
        pos = torch.arange(9)[None]
        cos_sin = model.llm.model.rotary_emb(embeds, pos)
        mask = torch.full((9, 9), float("-inf")).triu(1)[None, None]
        h, raw = embeds, []
        for layer in model.llm.model.layers:
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=cos_sin)
            raw.append(h)
    n = len(model.llm.model.layers)
    assert len(full) == n + 1 and len(got) == 4
    for i in range(3):
        torch.testing.assert_close(got[i], raw[n - 4 + i], rtol=1e-5, atol=1e-5)  # raw layer outputs
    torch.testing.assert_close(got[3], model.llm.model.norm(raw[-1]), rtol=1e-5, atol=1e-5)  # final-normed
    assert not torch.allclose(got[3], raw[-1])


def test_mcp_depends_on_length_and_weights_are_softmaxed(tiny_loaded) -> None:
    mcp = tiny_loaded.model.mcp
    x = torch.randn(1, 4, 10, tiny_loaded.config.hidden_size)
    with torch.no_grad():
        full = mcp(x)
        padded = mcp(torch.cat([x, torch.zeros(1, 4, 3, x.shape[-1])], dim=2))[:, :10]
        w = mcp.fusion.fusion_weights()
    assert full.shape == (1, 10, tiny_loaded.config.mcp.output_dim)
    assert not torch.allclose(full, padded)  # not padding-invariant: run at the true length
    assert torch.isclose(w.sum(), torch.tensor(1.0))


@pytest.mark.parametrize(
    ("dim", "hidden"), [(8, 8), (16, 8), (32, 8), (36, 9), (64, 16), (128, 32), (512, 128)]
)
def test_squeeze_excite_width_is_a_quarter_but_at_least_8(dim: int, hidden: int) -> None:
    se = SqueezeExcite(dim)
    assert se.fc[0].weight.shape == (hidden, dim)
    assert se.fc[2].weight.shape == (dim, hidden)


def test_narrow_mcp_has_8_wide_se_and_exports_to_onnx(tmp_path: Path) -> None:
    """An MCP 16 wide: SE 16→8→16, and its ONNX graph computes what torch does."""
    from mobile_o_ros.export import graphs
    from mobile_o_ros.export.onnx_export import GraphSpec, export_graph
    from mobile_o_ros.export.parity import compare
    from mobile_o_ros.runtime.ort_backend import OnnxRuntimeBackend

    torch.manual_seed(0)
    mcp = MobileConditioningProjector(MCPConfig(input_dim=24, hidden_dim=16, output_dim=20)).eval()
    for block in mcp.fusion.sequence_refiners:
        assert block.channel_attn.fc[0].weight.shape == (8, 16)
    with torch.no_grad():
        for p in mcp.parameters():  # away from LayerNorm's defaults, so every weight matters
            p.add_(0.3 * torch.randn_like(p))
    spec = GraphSpec(
        "mcp",
        graphs.McpGraph(SimpleNamespace(mcp=mcp)),
        {"hidden_states": torch.randn(2, 4, 12, 24)},
        ["conditioning"],
        {"hidden_states": {0: "batch", 2: "seq"}, "conditioning": {0: "batch", 1: "seq"}},
    )
    meta = export_graph(spec, tmp_path)
    backend = OnnxRuntimeBackend(tmp_path, {"graphs": {"mcp": meta}}, graphs=["mcp"])
    x = torch.randn(2, 4, 7, 24)
    x[0] = 0
    with torch.no_grad():
        ref = mcp(x).numpy()
    out = backend.run("mcp", {"hidden_states": x.numpy()})["conditioning"]
    m = compare(ref, out)
    assert out.shape == (2, 7, 20) and np.isfinite(out).all()
    assert m["cosine"] >= 0.99999 and m["max_abs"] <= 1e-4, m
