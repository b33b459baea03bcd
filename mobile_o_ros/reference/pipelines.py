"""Reference pipelines for understanding, generation and editing, as the released inference code runs them.

A pipeline is a readable loop over named parts: prompt → tokens (−200 splice of the 256 image tokens) →
LLM → (VQA) sampled tokens, or (generation/editing) hidden_states[-4:] → MCP on [uncond zeros, cond] →
20 DPM-Solver++ steps of the DiT with CFG 1.5 → latents / 0.41407 → DC-AE decode → uint8 RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

from mobile_o_ros import prompts
from mobile_o_ros.reference.model import MobileO
from mobile_o_ros.reference.preprocess import reference_preprocess
from mobile_o_ros.runtime.sampling import initial_latents

#: Called after each denoising step with (step index starting at 1, total steps).
StepCallback = Callable[[int, int], None]


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """LLaVA's splice convention: split on ``<image>``, tokenize chunks, join them with −200."""
    chunks = [
        tokenizer(chunk, add_special_tokens=False).input_ids
        for chunk in prompt.split(prompts.IMAGE_PLACEHOLDER)
    ]
    ids: list[int] = []
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(prompts.IMAGE_TOKEN_INDEX)
        ids.extend(chunk)
    return ids


def answer_stop_id(tokenizer) -> int:
    """The token id an answer stops at: the tokenizer's ``eos_token_id`` (``tokenizer_config.json``'s
    ``eos_token``), or the id of ``<|im_end|>`` when the tokenizer names no eos token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.convert_tokens_to_ids(prompts.IM_END)
    return int(eos)


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """VAE output [B, 3, H, W] in about [−1, 1] → uint8 [B, H, W, 3] (x/2 + 0.5, clamp, ×255, round)."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    x = x.permute(0, 2, 3, 1).cpu().numpy()
    return (x * 255).round().astype(np.uint8)


@dataclass
class Answer:
    """A VQA result."""

    text: str
    token_ids: list[int]


class ReferencePipeline:
    """The three Mobile-O tasks on the PyTorch reference model.

    ``gen_dtype`` is the precision of the generation path: when given, the model's MCP, DiT and VAE are cast
    to it in place (fp32 is the parity baseline; the released code runs these in bf16). The vision tower,
    projector and LLM keep the model's dtype, so VQA and the LLM prefill that conditions generation run as
    loaded (fp32 from :func:`~mobile_o_ros.reference.checkpoint.load_checkpoint`).
    """

    def __init__(self, model: MobileO, tokenizer, gen_dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.gen_dtype = gen_dtype or next(model.parameters()).dtype
        for part in (model.mcp, model.dit, model.vae):
            part.to(self.gen_dtype)

    # ----------------------------------------------------------------------------- shared steps
    def prompt_embeddings(self, prompt: str, image: np.ndarray | None = None) -> torch.Tensor:
        """Templated prompt (+ optional RGB image) → inputs_embeds [1, L, D] with the image tokens spliced."""
        ids = tokenizer_image_token(prompt, self.tokenizer)
        n_placeholders = ids.count(prompts.IMAGE_TOKEN_INDEX)
        if (image is None) != (n_placeholders == 0) or n_placeholders > 1:
            raise ValueError("the prompt must hold exactly one <image> placeholder when an image is given")
        text_ids = torch.tensor([i for i in ids if i != prompts.IMAGE_TOKEN_INDEX], dtype=torch.long)
        text_embeds = self.model.embed_tokens(text_ids[None])[0]
        if image is None:
            return text_embeds[None]
        pixels = reference_preprocess(image, size=self.config.image_size)
        image_embeds = self.model.encode_images(pixels)[0].to(text_embeds.dtype)
        cut = ids.index(prompts.IMAGE_TOKEN_INDEX)
        return torch.cat([text_embeds[:cut], image_embeds, text_embeds[cut:]], dim=0)[None]

    def conditioning(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """LLM prefill → MCP on the CFG batch [all-zero hidden states, conditional] → [2, N, caption_dim]."""
        hidden = self.model.mcp_inputs(inputs_embeds)
        stacked = torch.stack(hidden, dim=1)  # [1, 4, N, D]
        cfg_batch = torch.cat([torch.zeros_like(stacked), stacked], dim=0)
        return self.model.mcp(cfg_batch.to(self.gen_dtype)).float()

    def initial_latents(self, seed: int) -> torch.Tensor:
        """The noise of ``seed``, [1, C, H, W] fp32, by the runtime's definition
        (:func:`~mobile_o_ros.runtime.sampling.initial_latents`): a seed gives one image on every backend."""
        return torch.from_numpy(initial_latents(seed, self.config.latent_shape))

    def denoise(
        self,
        cond: torch.Tensor,
        latents: torch.Tensor,
        steps: int,
        guidance_scale: float,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """The DPM-Solver++ loop with batched CFG: v = u + g·(c − u); latent math in fp32."""
        scheduler = DPMSolverMultistepScheduler.from_config(self.config.scheduler)
        scheduler.set_timesteps(steps)
        dtype = self.gen_dtype
        for i, t in enumerate(scheduler.timesteps):
            model_in = torch.cat([latents, latents], dim=0).to(dtype)
            velocity = self.model.dit(
                hidden_states=model_in,
                encoder_hidden_states=cond.to(dtype),
                timestep=t.expand(2),
                encoder_attention_mask=None,
                return_dict=False,
            )[0].float()
            v_uncond, v_cond = velocity.chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if callback is not None:
                callback(i + 1, steps)
        return latents

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """latents / scaling_factor → VAE decode → uint8 [H, W, 3]."""
        images = self.model.vae.decode(latents.to(self.gen_dtype) / self.config.vae_scaling_factor).sample
        return images_to_uint8(images)[0]

    # ----------------------------------------------------------------------------- tasks
    @torch.inference_mode()
    def generate(
        self,
        caption: str,
        steps: int = 20,
        guidance_scale: float = 1.5,
        seed: int = 0,
        latents: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> np.ndarray:
        """Text to a 512×512 RGB image (uint8 [H, W, 3])."""
        embeds = self.prompt_embeddings(prompts.generation_prompt(caption))
        noise = self.initial_latents(seed) if latents is None else latents.float()
        out = self.denoise(self.conditioning(embeds), noise, steps, guidance_scale, callback)
        return self.decode(out)

    @torch.inference_mode()
    def edit(
        self,
        image: np.ndarray,
        instruction: str,
        steps: int = 20,
        guidance_scale: float = 1.5,
        seed: int = 0,
        latents: torch.Tensor | None = None,
        callback: StepCallback | None = None,
    ) -> np.ndarray:
        """Image + instruction to a new image; the source enters only as 256 spliced vision tokens."""
        embeds = self.prompt_embeddings(prompts.edit_prompt(instruction), image)
        noise = self.initial_latents(seed) if latents is None else latents.float()
        out = self.denoise(self.conditioning(embeds), noise, steps, guidance_scale, callback)
        return self.decode(out)

    @torch.inference_mode()
    def answer(
        self,
        image: np.ndarray | None,
        question: str,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> Answer:
        """Visual question answering with HF ``generate`` on inputs_embeds; stops at the tokenizer's eos token
        (:func:`answer_stop_id`)."""
        prompt = prompts.vqa_prompt(question) if image is not None else prompts.chat_prompt(question)
        embeds = self.prompt_embeddings(prompt, image)
        eos = answer_stop_id(self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        sample = temperature > 0
        torch.manual_seed(int(seed))
        out = self.model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=top_k if sample else None,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            num_beams=1,
            use_cache=True,
        )
        ids = [int(i) for i in out[0]]
        if ids and ids[-1] == eos:
            ids = ids[:-1]
        return Answer(text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(), token_ids=ids)
