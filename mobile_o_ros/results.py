"""The pipeline contract, without torch: what ``ask`` / ``generate`` / ``edit`` take and return.

Two pipelines implement :class:`Pipeline`: the PyTorch reference
(:class:`~mobile_o_ros.reference.pipelines.ReferencePipeline`, on a checkpoint folder) and the torch-free
runtime (:class:`~mobile_o_ros.runtime.engine.MobileORuntime`, on an export folder with onnxruntime or
TensorRT). Both validate a request once, with :mod:`mobile_o_ros.validation`, and take their defaults from
the model's :class:`~mobile_o_ros.model_config.Defaults` (the runtime reads them from the export's
manifest, which the export wrote from the same config). The self-test, parity, the CLI and the ROS node use
either one the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mobile_o_ros.model_config import Defaults

#: Called after each denoising step with (step index starting at 1, total steps).
StepCallback = Callable[[int, int], None]
#: Called after each answer token with (the answer's text so far, tokens so far).
TokenCallback = Callable[[str, int], None]
#: Polled before each step or token; True stops the request (its result says ``cancelled``).
CancelCheck = Callable[[], bool]


@dataclass
class AskResult:
    """A VQA answer; ``cancelled`` when stopped early (``answer`` then holds the text so far)."""

    answer: str
    num_tokens: int
    seed: int
    token_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    prompt_tokens: int = 0


@dataclass
class ImageResult:
    """A generated or edited image (uint8 [H, W, 3] RGB), or ``None`` with ``cancelled``; the seed, steps
    and guidance scale it was made with."""

    image: np.ndarray | None
    seed: int
    steps: int
    cancelled: bool = False
    prompt_tokens: int = 0
    guidance_scale: float = 0.0


class Pipeline(Protocol):
    """Visual question answering, generation and editing on one model.

    ``None`` for ``steps``, ``guidance_scale``, ``max_new_tokens`` (0 too) or ``temperature`` means the
    model's default (:attr:`defaults`); ``seed`` ``None`` or -1 draws a random seed, which the result
    reports. ``latents`` replaces the noise of the seed ([1, *latent_shape] float32).
    """

    #: The backend it runs on: ``torch``, ``onnxruntime`` or ``tensorrt``.
    name: str
    #: The model's sampling defaults.
    defaults: Defaults

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the latents the DiT denoises."""
        ...

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
        """Answer a question about an RGB image (or a text-only question when ``image`` is None)."""
        ...

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
        """Text to an RGB image at the model's output size."""
        ...

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
        """An RGB image and an instruction to a new image."""
        ...
