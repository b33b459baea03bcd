"""Export wrappers: one ``nn.Module`` per ONNX graph, with the I/O contract the runtime relies on.

Host-side logic (token splicing, CFG batch, scheduler, sampling) stays out of the graphs, so each graph is a
pure tensor function that onnxruntime and TensorRT run alike.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from mobile_o_ros.reference.model import MobileO

#: Additive mask value for hidden positions: −inf after softmax in fp32, and representable in fp16.
MASK_VALUE = -30000.0
#: fp16's largest finite value; diffusers clips SANA's linear-attention output to it in fp16, and the graph
#: clips always, so an engine built in fp16 never overflows there.
FP16_MAX = 65504.0


class VisionGraph(nn.Module):
    """images [B, 3, 1024, 1024] in [0, 1] → image_embeds [B, 256, D] (vision tower + mm projector)."""

    def __init__(self, model: MobileO) -> None:
        super().__init__()
        self.vision = model.vision
        self.mm_projector = model.mm_projector

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mm_projector(self.vision(images))


class LlmGraph(nn.Module):
    """The Qwen2 LLM for both uses: prefill and decode over a fixed-capacity KV cache written in place
    (ScatterElements), with the MCP's inputs as a third output.

    Inputs: ``inputs_embeds`` [1, T, D]; ``position_ids`` [1, T] (absolute positions, also the cache slots
    written); ``attention_mask`` [1, 1, T, C] additive (0 visible, −30000 hidden; the host builds it);
    ``kv_cache`` [layers, 2, 1, kv_heads, C, head_dim]. Outputs: ``logits`` [1, V] of the last position,
    ``kv_cache_out`` (same shape as ``kv_cache``) and ``mcp_inputs`` [1, 4, T, D]: the raw outputs of the
    last layers but one plus the final-normed last layer, i.e. ``hidden_states[-4:]`` of the T positions.

    Generation runs one prefill of the whole prompt (zero cache, C = T) and reads ``mcp_inputs``; question
    answering runs the prefill and then one call per token and reads ``logits``. The LM head is split along
    the vocabulary into ``lm_head_chunks`` MatMuls joined by a Concat, to fit Jetson's contiguous-allocation
    limit.
    """

    def __init__(self, model: MobileO, lm_head_chunks: int = 1) -> None:
        super().__init__()
        self.inner = model.llm.model
        self.num_out = int(model.config.mcp.num_layers)
        weight = model.llm.get_output_embeddings().weight
        bounds = [round(i * weight.shape[0] / lm_head_chunks) for i in range(lm_head_chunks + 1)]
        self.lm_head_bounds = list(itertools.pairwise(bounds))
        self.lm_head_weight = weight

    def _attention(self, layer, h, cos, sin, mask, cache_kv, position_ids):
        attn = layer.self_attn
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        index = position_ids.view(1, 1, t, 1).expand(b, k.shape[1], t, attn.head_dim)
        keys = cache_kv[0].scatter(2, index, k)
        values = cache_kv[1].scatter(2, index, v)
        k_all = repeat_kv(keys, attn.num_key_value_groups)
        v_all = repeat_kv(values, attn.num_key_value_groups)
        # The scale goes on q before QK^T: fp16 scores stay in range, and it is the form TensorRT's fused
        # attention matches (transformers' eager path scales after the MatMul).
        scores = torch.matmul(q * attn.scaling, k_all.transpose(2, 3)) + mask
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v_all).transpose(1, 2).reshape(b, t, -1)
        return attn.o_proj(out), torch.stack([keys, values], dim=0)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        kv_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cos, sin = self.inner.rotary_emb(inputs_embeds, position_ids)
        h = inputs_embeds
        new_cache, outs = [], []
        for i, layer in enumerate(self.inner.layers):
            residual = h
            attn_out, layer_cache = self._attention(
                layer, layer.input_layernorm(h), cos, sin, attention_mask, kv_cache[i], position_ids
            )
            h = residual + attn_out
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            new_cache.append(layer_cache)
            outs.append(h)
        final = self.inner.norm(h)
        mcp_inputs = torch.stack([*outs[-self.num_out : -1], final], dim=1)
        # A Slice (not a Gather at index -1, undefined in TensorRT on a dynamic axis) takes the last position.
        last = final[:, -1:, :].flatten(1)  # Flatten: a squeeze of a dynamic axis exports as an If
        logits = torch.cat([last @ self.lm_head_weight[a:b].t() for a, b in self.lm_head_bounds], dim=-1)
        return logits, torch.stack(new_cache, dim=0), mcp_inputs


class McpGraph(nn.Module):
    """hidden_states [B, 4, N, D] → conditioning [B, N, caption_dim], at the true N (not pad-invariant)."""

    def __init__(self, model: MobileO) -> None:
        super().__init__()
        self.mcp = model.mcp

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mcp(hidden_states)


class ExportLinearAttnProcessor:
    """SANA's ReLU linear attention with its fp32 island and ±65504 clip explicit in the graph.

    Same arithmetic as diffusers' ``SanaLinearAttnProcessor2_0``; the differences are only in what the
    graph shows: Cast-to-fp32 of q/k/v (no-ops in an fp32 export), an unconditional Clip (the reference
    clips only in fp16; identical whenever |x| < 65504), and positive slice bounds for the normaliser.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        original_dtype = hidden_states.dtype
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        query = query.transpose(1, 2).unflatten(1, (attn.heads, -1))
        key = key.transpose(1, 2).unflatten(1, (attn.heads, -1)).transpose(2, 3)
        value = value.transpose(1, 2).unflatten(1, (attn.heads, -1))
        query, key = F.relu(query), F.relu(key)
        query, key, value = query.float(), key.float(), value.float()
        head_dim = value.shape[2]
        value = F.pad(value, (0, 0, 0, 1), mode="constant", value=1.0)
        out = torch.matmul(torch.matmul(value, key), query)
        out = out[:, :, :head_dim] / (out[:, :, head_dim : head_dim + 1] + 1e-15)
        out = out.flatten(1, 2).transpose(1, 2).to(original_dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out.clip(-FP16_MAX, FP16_MAX)


class DitGraph(nn.Module):
    """latents [B, 32, 16, 16], timestep [B] (float), encoder_hidden_states [B, N, C], encoder_attention_mask
    [B, N] (1 keep) → velocity [B, 32, 16, 16]. The timestep embedding is computed in fp32 inside."""

    def __init__(self, model: MobileO) -> None:
        super().__init__()
        self.dit = model.dit
        for block in self.dit.transformer_blocks:
            block.attn1.set_processor(ExportLinearAttnProcessor())

    def forward(self, latents, timestep, encoder_hidden_states, encoder_attention_mask):
        return self.dit(
            hidden_states=latents,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            encoder_attention_mask=encoder_attention_mask,
            return_dict=False,
        )[0]


class VaeDecoderGraph(nn.Module):
    """latents [1, 32, 16, 16], already divided by the scaling factor → image [1, 3, 512, 512] in ~[−1, 1]."""

    def __init__(self, model: MobileO) -> None:
        super().__init__()
        self.vae = model.vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


def lm_head_chunks_for(vocab: int, hidden: int, max_bytes: int = 128 << 20, bytes_per_weight: int = 2) -> int:
    """How many vocabulary chunks keep each LM-head MatMul's fp16 weight under ``max_bytes``."""
    return max(1, math.ceil(vocab * hidden * bytes_per_weight / max_bytes))
