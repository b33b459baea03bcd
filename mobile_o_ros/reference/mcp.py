"""Mobile Conditioning Projector (MCP), as the released code builds it.

Fuses the LLM's last ``num_layers`` hidden states (three raw layer outputs and the final-normed last one)
into the DiT's caption embeddings. Not padding-invariant: the SE pooling averages over every token and the
depthwise conv zero-pads both ends, so run it at the true sequence length.
"""

from __future__ import annotations

import torch
from torch import nn

from mobile_o_ros.model_config import MCPConfig


class DepthwiseSeparableConv1d(nn.Module):
    """Depthwise Conv1d (k=3, zero pad 1) → pointwise Conv1d → LayerNorm → Hardswish, over [B, N, C]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.pointwise = nn.Conv1d(dim, dim, kernel_size=1, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x.transpose(1, 2))).transpose(1, 2)
        return self.act(self.norm(y))


#: The squeeze-excitation's hidden width never goes below this many channels.
SE_MIN_HIDDEN = 8


def se_hidden_dim(dim: int, reduction: int = 4) -> int:
    """The SE bottleneck width of a ``dim``-wide block: ``max(dim // reduction, 8)``."""
    return max(dim // reduction, SE_MIN_HIDDEN)


class SqueezeExcite(nn.Module):
    """SE channel attention: mean over all tokens → C→H → Hardswish → H→C → Hardsigmoid (no biases), with
    H = ``max(C // 4, 8)``."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = se_hidden_dim(dim, reduction)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False),
            nn.Hardswish(),
            nn.Linear(hidden, dim, bias=False),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=1)).unsqueeze(1)


class SequenceRefinementBlock(nn.Module):
    """conv branch → SE → residual → post-LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = DepthwiseSeparableConv1d(dim)
        self.channel_attn = SqueezeExcite(dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.channel_attn(self.conv(x)) + x)


class LayerFusion(nn.Module):
    """The MCP body; its state-dict keys are the checkpoint's under ``model.diffusion_connector.fusion.``."""

    def __init__(self, cfg: MCPConfig) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.layer_weights = nn.Parameter(torch.linspace(0.8, 1.2, cfg.num_layers))
        self.register_buffer("temperature", torch.tensor(2.0), persistent=True)
        self.input_compress = nn.Sequential(
            nn.Linear(cfg.input_dim, cfg.hidden_dim), nn.LayerNorm(cfg.hidden_dim), nn.Hardswish()
        )
        self.sequence_refiners = nn.ModuleList(
            [SequenceRefinementBlock(cfg.hidden_dim) for _ in range(cfg.num_refinement_blocks)]
        )
        self.output_proj = nn.Sequential(
            nn.Linear(cfg.hidden_dim, cfg.output_dim), nn.LayerNorm(cfg.output_dim)
        )

    def fusion_weights(self) -> torch.Tensor:
        """softmax(layer_weights / temperature), both read from the checkpoint."""
        return torch.softmax(self.layer_weights / self.temperature, dim=0)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        """``stacked`` [B, num_layers, N, D], oldest layer first → [B, N, output_dim]. No final activation."""
        w = self.fusion_weights().to(stacked.dtype)
        fused = (stacked * w.view(1, -1, 1, 1)).sum(dim=1)
        x = self.input_compress(fused)
        for block in self.sequence_refiners:
            x = block(x)
        return self.output_proj(x)


class MobileConditioningProjector(nn.Module):
    """Wrapper whose ``fusion`` child carries the weights (matching the checkpoint's module path)."""

    def __init__(self, cfg: MCPConfig) -> None:
        super().__init__()
        self.fusion = LayerFusion(cfg)

    @property
    def num_layers(self) -> int:
        """How many trailing hidden states it consumes."""
        return self.fusion.num_layers

    def forward(
        self, hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...] | torch.Tensor
    ) -> torch.Tensor:
        """Takes the last ``num_layers`` hidden states (a sequence, oldest first) or them stacked on dim 1."""
        if isinstance(hidden_states, torch.Tensor):
            stacked = hidden_states
        else:
            stacked = torch.stack(list(hidden_states)[-self.num_layers :], dim=1)
        return self.fusion(stacked)
