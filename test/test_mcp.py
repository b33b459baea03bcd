"""The MCP: exact facts-§2 structure, fed hidden_states[-4:] (three raw layers, the last final-normed)."""

from __future__ import annotations

import torch

from mobile_o_ros.model_config import MCPConfig
from mobile_o_ros.reference.mcp import MobileConditioningProjector


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
