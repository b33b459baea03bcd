"""Reference pipelines for understanding, generation and editing, as the released inference code runs them.

A pipeline is a readable loop over named parts: prompt → tokens (−200 splice of the 256 image tokens) →
LLM → (VQA) sampled tokens, or (generation/editing) hidden_states[-4:] → MCP on [uncond zeros, cond] →
20 DPM-Solver++ steps of the DiT with CFG 1.5 → latents / 0.41407 → DC-AE decode → uint8 RGB.

:class:`ReferencePipeline` is a :class:`~mobile_o_ros.results.Pipeline`: the same ``ask`` / ``generate`` /
``edit``, arguments and results as the torch-free runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from mobile_o_ros import prompts, validation
from mobile_o_ros.reference.model import MobileO
from mobile_o_ros.reference.preprocess import reference_preprocess
from mobile_o_ros.results import AskResult, CancelCheck, ImageResult, StepCallback, TokenCallback
from mobile_o_ros.runtime.sampling import initial_latents, make_rng

#: ``--dtype`` names of the generation path's precision.
GEN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


class _TokenStream(BaseStreamer):
    """HF ``generate``'s streamer → ``on_token(answer so far, tokens so far)`` for each new token but eos."""

    def __init__(self, tokenizer, eos: int, on_token: TokenCallback) -> None:
        self.tokenizer, self.eos, self.on_token = tokenizer, eos, on_token
        self.ids: list[int] = []
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        """The prompt's ids first (empty with ``inputs_embeds``), then each generated id."""
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if token == self.eos:
                continue
            self.ids.append(int(token))
            self.on_token(self.tokenizer.decode(self.ids, skip_special_tokens=True), len(self.ids))

    def end(self) -> None:
        """Nothing is pending at the end."""


class _Cancel(StoppingCriteria):
    """Stops HF ``generate`` after the token in progress once ``should_cancel()`` is true."""

    def __init__(self, should_cancel: CancelCheck) -> None:
        self.should_cancel = should_cancel
        self.cancelled = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.cancelled = self.cancelled or bool(self.should_cancel())
        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool, device=input_ids.device)


class ReferencePipeline:
    """The three Mobile-O tasks on the PyTorch reference model.

    ``gen_dtype`` is the precision of the generation path: when given, the model's MCP, DiT and VAE are cast
    to it in place (fp32 is the parity baseline; the released code runs these in bf16). The vision tower,
    projector and LLM keep the model's dtype, so VQA and the LLM prefill that conditions generation run as
    loaded (fp32 from :func:`~mobile_o_ros.reference.checkpoint.load_checkpoint`).
    """

    #: The backend name the self-test and parity report.
    name = "torch"

    def __init__(self, model: MobileO, tokenizer, gen_dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        #: The model's sampling defaults (its config's; an export records the same in its manifest).
        self.defaults = model.config.defaults
        self.gen_dtype = gen_dtype or next(model.parameters()).dtype
        for part in (model.mcp, model.dit, model.vae):
            part.to(self.gen_dtype)

    @classmethod
    def load(cls, model_dir: str | Path, gen_dtype: str = "fp32") -> ReferencePipeline:
        """Load a checkpoint folder strictly (fp32) with the generation path in ``gen_dtype``
        (:data:`GEN_DTYPES`)."""
        from mobile_o_ros.reference.checkpoint import load_checkpoint

        loaded = load_checkpoint(model_dir)
        return cls(loaded.model, loaded.tokenizer, gen_dtype=GEN_DTYPES[gen_dtype])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the latents the DiT denoises."""
        return tuple(self.config.latent_shape)

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
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> torch.Tensor | None:
        """The DPM-Solver++ loop with batched CFG: v = u + g·(c − u); latent math in fp32. None when
        cancelled."""
        scheduler = DPMSolverMultistepScheduler.from_config(self.config.scheduler)
        scheduler.set_timesteps(steps)
        scheduler.set_begin_index(0)  # from 599 steps up the truncated timesteps repeat 999
        dtype = self.gen_dtype
        for i, t in enumerate(scheduler.timesteps):
            if should_cancel is not None and should_cancel():
                return None
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
            if on_step is not None:
                on_step(i + 1, steps)
        return latents

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """latents / scaling_factor → VAE decode → uint8 [H, W, 3]."""
        images = self.model.vae.decode(latents.to(self.gen_dtype) / self.config.vae_scaling_factor).sample
        return images_to_uint8(images)[0]

    # ----------------------------------------------------------------------------- tasks
    def _image_task(
        self,
        prompt: str,
        image: np.ndarray | None,
        request: validation.ImageRequest,
        latents: np.ndarray | None,
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
    ) -> ImageResult:
        _, used_seed = make_rng(request.seed)
        embeds = self.prompt_embeddings(prompt, image)
        noise = (
            self.initial_latents(used_seed)
            if latents is None
            else torch.from_numpy(np.asarray(latents, dtype=np.float32))
        )
        cond = self.conditioning(embeds)
        out = self.denoise(cond, noise, request.steps, request.guidance_scale, on_step, should_cancel)
        return ImageResult(
            None if out is None else self.decode(out),
            used_seed,
            request.steps,
            cancelled=out is None,
            prompt_tokens=int(embeds.shape[1]),
            guidance_scale=request.guidance_scale,
        )

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> ImageResult:
        """Text to an RGB image at the model's output size (512×512 for the released model)."""
        request = validation.check_image_request(prompt, "prompt", steps, guidance_scale, seed, self.defaults)
        return self._image_task(
            prompts.generation_prompt(request.text), None, request, latents, on_step, should_cancel
        )

    @torch.inference_mode()
    def edit(
        self,
        image: np.ndarray,
        instruction: str,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> ImageResult:
        """Image + instruction to a new image; the source enters only as the spliced vision tokens."""
        request = validation.check_image_request(
            instruction, "instruction", steps, guidance_scale, seed, self.defaults
        )
        return self._image_task(
            prompts.edit_prompt(request.text), image, request, latents, on_step, should_cancel
        )

    @torch.inference_mode()
    def ask(
        self,
        image: np.ndarray | None,
        question: str,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        on_token: TokenCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> AskResult:
        """Visual question answering with HF ``generate`` on inputs_embeds; stops at the tokenizer's eos token
        (:func:`answer_stop_id`). A cancel stops after the token in progress."""
        request = validation.check_ask(
            question, max_new_tokens, temperature, top_p, top_k, seed, self.defaults
        )
        _, used_seed = make_rng(request.seed)
        q = request.question
        embeds = self.prompt_embeddings(
            prompts.vqa_prompt(q) if image is not None else prompts.chat_prompt(q), image
        )
        n_prompt = int(embeds.shape[1])
        if should_cancel is not None and should_cancel():
            return AskResult("", 0, used_seed, [], cancelled=True, prompt_tokens=n_prompt)
        eos = answer_stop_id(self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        sample = request.temperature > 0
        cancel = None if should_cancel is None else _Cancel(should_cancel)
        torch.manual_seed(used_seed)
        out = self.model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            do_sample=sample,
            temperature=request.temperature if sample else None,
            top_p=request.top_p if sample else None,
            top_k=request.top_k if sample else None,
            max_new_tokens=request.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            num_beams=1,
            use_cache=True,
            streamer=None if on_token is None else _TokenStream(self.tokenizer, eos, on_token),
            stopping_criteria=None if cancel is None else StoppingCriteriaList([cancel]),
        )
        ids = [int(i) for i in out[0]]
        if ids and ids[-1] == eos:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        cancelled = cancel is not None and cancel.cancelled
        return AskResult(text, len(ids), used_seed, ids, cancelled, prompt_tokens=n_prompt)
