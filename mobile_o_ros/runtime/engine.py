"""The torch-free Mobile-O pipelines over a :class:`~mobile_o_ros.runtime.backend.Backend`.

Host-side, in numpy: tokenization and the −200 splice of image tokens, the CFG batch, the DPM-Solver++
flow scheduler, CFG combine and latent math in fp32, token sampling. Engines run the five graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros import prompts, validation, vocabulary
from mobile_o_ros.manifest import int8_graphs, load_manifest
from mobile_o_ros.model_config import Defaults
from mobile_o_ros.results import AskResult, CancelCheck, ImageResult, StepCallback, TokenCallback
from mobile_o_ros.runtime import frame_context
from mobile_o_ros.runtime.backend import Backend
from mobile_o_ros.runtime.decoding import capacity_for, decode_mask, generate_tokens
from mobile_o_ros.runtime.frame_context import FrameContext
from mobile_o_ros.runtime.preprocess import preprocess_image
from mobile_o_ros.runtime.sampling import initial_latents, make_rng
from mobile_o_ros.runtime.scheduler import FlowDPMSolverScheduler
from mobile_o_ros.runtime.tokenizer import TextTokenizer


def postprocess(image: np.ndarray) -> np.ndarray:
    """VAE output [1, 3, H, W] in ~[−1, 1] → uint8 [H, W, 3]: x/2 + 0.5, clip, ×255, round."""
    x = np.clip(image[0].astype(np.float32) / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)
    return np.round(x * 255).astype(np.uint8)


def make_backend(export_dir: Path, manifest: dict[str, Any], backend: str, **options: Any) -> Backend:
    """Instantiate a backend by name: ``onnxruntime`` or ``tensorrt`` (imported lazily)."""
    if backend == "onnxruntime":
        from mobile_o_ros.runtime.ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(export_dir, manifest, **options)
    if backend == "tensorrt":
        from mobile_o_ros.runtime.trt_backend import TensorRTBackend

        return TensorRTBackend(export_dir, manifest, **options)
    raise ValueError(f"unknown backend {backend!r} (onnxruntime, tensorrt)")


class MobileORuntime:
    """Visual question answering, generation and editing on exported graphs: a
    :class:`~mobile_o_ros.results.Pipeline`, like the torch reference.

    Not thread-safe: one worker thread owns an instance (and the backend's device context).
    """

    def __init__(self, export_dir: str | Path, manifest: dict[str, Any], backend: Backend) -> None:
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.backend = backend
        self.name = backend.name
        m = manifest["model"]
        self.model_info = m
        self.tokenizer = TextTokenizer.from_file(self.export_dir / "tokenizer.json")
        # fp16 rows, memory-mapped; every lookup is upcast to fp32
        self.embed_table = np.load(self.export_dir / "embed_tokens.npy", mmap_mode="r")
        self.eos_id = int(manifest["special_tokens"]["eos"])
        self.latent_shape = tuple(m["latent_shape"])
        self.context_length = min(
            int(m.get("max_position_embeddings", 2048)), int(m.get("context_length", 2048))
        )
        self.image_size = int(manifest["image"]["size"])
        #: The model's sampling defaults, as the export recorded them from its config.
        self.defaults = Defaults(**manifest["defaults"])
        self.scheduler = FlowDPMSolverScheduler(manifest["scheduler"])
        self.vocabulary = vocabulary.load(self.export_dir)

    @classmethod
    def load(
        cls,
        export_dir: str | Path,
        backend: str = "onnxruntime",
        verify: bool = False,
        **backend_options: Any,
    ) -> MobileORuntime:
        """Open an export folder (``manifest.json`` + graphs) with the named backend."""
        export_dir = Path(export_dir)
        manifest = load_manifest(export_dir, verify_hashes=verify)
        return cls(export_dir, manifest, make_backend(export_dir, manifest, backend, **backend_options))

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()

    # ----------------------------------------------------------------------------- shared steps
    def encode_image(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] → projected image tokens [256, D]."""
        pixels = preprocess_image(rgb, self.image_size)
        return self.backend.run("vision", {"images": pixels})["image_embeds"][0]

    def prompt_embeddings(self, prompt: str, image: np.ndarray | None = None, reserve: int = 0) -> np.ndarray:
        """Templated prompt (+ image) → inputs_embeds [L, D] with the image tokens spliced at −200."""
        ids = self.tokenizer.split_image_prompt(prompt)
        image_embeds = None if image is None else self.encode_image(image)
        n_image = 0 if image_embeds is None else image_embeds.shape[0]
        length = len(ids) - (1 if image is not None else 0) + n_image
        if length + reserve > self.context_length:
            raise validation.InvalidRequest(
                f"prompt too long: {length} tokens (+{reserve} to generate) exceeds the context of "
                f"{self.context_length}"
            )
        return self.tokenizer.splice_image_embeddings(ids, self.embed_table, image_embeds).astype(np.float32)

    def kv_shape(self, capacity: int) -> tuple[int, ...]:
        """The ``llm`` graph's KV cache shape for ``capacity`` positions."""
        m = self.model_info
        return (m["num_layers"], 2, 1, m["num_key_value_heads"], int(capacity), m["head_dim"])

    def conditioning(self, inputs_embeds: np.ndarray) -> np.ndarray:
        """LLM prefill (``mcp_inputs`` of the ``llm`` graph, zero cache of the prompt's length) → MCP on
        [all-zero hidden states, conditional] → [2, N, caption_dim] (true length)."""
        n = len(inputs_embeds)
        positions = np.arange(n, dtype=np.int64)
        feeds: dict[str, np.ndarray] = {
            "inputs_embeds": inputs_embeds[None].astype(np.float32),
            "position_ids": positions[None],
            "attention_mask": decode_mask(positions, n, self.model_info["mask_value"]),
        }
        with self.backend.kv_cache("llm", self.kv_shape(n)) as kv:
            stacked = kv.run(feeds, outputs=("mcp_inputs",))["mcp_inputs"]
        cfg_batch = np.concatenate([np.zeros_like(stacked), stacked], axis=0)
        return self.backend.run("mcp", {"hidden_states": cfg_batch})["conditioning"]

    def initial_latents(self, seed: int) -> np.ndarray:
        """The noise of ``seed``, [1, C, H, W] fp32 (:func:`~mobile_o_ros.runtime.sampling.initial_latents`:
        the torch reference draws the same)."""
        return initial_latents(seed, self.latent_shape)

    def denoise(
        self,
        cond: np.ndarray,
        latents: np.ndarray,
        steps: int,
        guidance_scale: float,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> np.ndarray | None:
        """DPM-Solver++ with batched CFG: v = u + g·(c − u); returns None when cancelled."""
        self.scheduler.set_timesteps(steps)
        mask = np.ones(cond.shape[:2], dtype=np.float32)
        latents = latents.astype(np.float32)
        for i, t in enumerate(self.scheduler.timesteps):
            if should_cancel is not None and should_cancel():
                return None
            feeds = {
                "latents": np.concatenate([latents, latents], axis=0),
                "timestep": np.full((2,), float(t), dtype=np.float32),
                "encoder_hidden_states": cond.astype(np.float32),
                "encoder_attention_mask": mask,
            }
            velocity = self.backend.run("dit", feeds)["velocity"].astype(np.float32)
            v = velocity[:1] + np.float32(guidance_scale) * (velocity[1:] - velocity[:1])
            latents = self.scheduler.step(v, int(t), latents)
            if on_step is not None:
                on_step(i + 1, steps)
        return latents

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """latents / scaling_factor → VAE decoder → uint8 [H, W, 3]."""
        scaled = (latents / np.float32(self.model_info["vae_scaling_factor"])).astype(np.float32)
        return postprocess(self.backend.run("vae_decoder", {"latents": scaled})["image"])

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
        noise = self.initial_latents(used_seed) if latents is None else np.asarray(latents, dtype=np.float32)
        cond = self.conditioning(embeds)
        out = self.denoise(cond, noise, request.steps, request.guidance_scale, on_step, should_cancel)
        return ImageResult(
            None if out is None else self.decode(out),
            used_seed,
            request.steps,
            cancelled=out is None,
            prompt_tokens=len(embeds),
            guidance_scale=request.guidance_scale,
        )

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
        """Image + instruction to a new image (the source enters as the vision tokens: 256 for the released
        model)."""
        request = validation.check_image_request(
            instruction, "instruction", steps, guidance_scale, seed, self.defaults
        )
        return self._image_task(
            prompts.edit_prompt(request.text), image, request, latents, on_step, should_cancel
        )

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
        """Answer a question about an image (or a text-only question when ``image`` is None)."""
        request = validation.check_ask(
            question, max_new_tokens, temperature, top_p, top_k, seed, self.defaults
        )
        n_new = request.max_new_tokens
        rng, used_seed = make_rng(request.seed)
        prompt = (
            prompts.vqa_prompt(request.question)
            if image is not None
            else prompts.chat_prompt(request.question)
        )
        embeds = self.prompt_embeddings(prompt, image, reserve=n_new)
        capacity = capacity_for(len(embeds) + n_new)
        positions = np.arange(len(embeds), dtype=np.int64)
        with self.backend.kv_cache("llm", self.kv_shape(capacity)) as kv:  # stays on the device (TensorRT)
            ids, cancelled = generate_tokens(
                kv,
                self.tokenizer,
                self.embed_table,
                self.model_info,
                self.eos_id,
                embeds,
                positions,
                capacity,
                request,
                rng,
                on_token,
                should_cancel,
            )
        answer = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return AskResult(answer, len(ids), used_seed, ids, cancelled, prompt_tokens=len(embeds))

    def frame(self, image: np.ndarray) -> FrameContext:
        """See a picture once: its vision tokens and the KV cache of the prompt before the question, which
        :meth:`ask_about` and :meth:`edit_frame` reuse (:mod:`mobile_o_ros.runtime.frame_context`)."""
        return frame_context.make_frame(self, image)

    def frame_of_tokens(self, image_embeds: np.ndarray) -> FrameContext:
        """:meth:`frame` from vision tokens already computed (:meth:`encode_image`): the prefix prefill
        only."""
        return frame_context.frame_of_tokens(self, image_embeds)

    def ask_about(self, frame: FrameContext, question: str, **options: Any) -> AskResult:
        """:meth:`ask` about a seen frame (same options, same greedy answer), prefilling only the
        question."""
        return frame_context.ask_about(self, frame, question, **options)

    def edit_frame(self, frame: FrameContext, instruction: str, **options: Any) -> ImageResult:
        """:meth:`edit` of a seen frame (same options except ``latents``), reusing its vision tokens."""
        return frame_context.edit_frame(self, frame, instruction, **options)

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` the model never saw in training ([] when the export ships no vocabulary)."""
        return [] if self.vocabulary is None else self.vocabulary.unknown(text)

    def info(self) -> dict[str, Any]:
        """Model and backend description for diagnostics."""
        return {
            "model": self.model_info.get("name"),
            "export_dir": str(self.export_dir),
            "int8_graphs": int8_graphs(self.manifest),
            **self.backend.describe(),
        }
