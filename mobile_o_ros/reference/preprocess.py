"""Reference (oracle) vision preprocessing: LLaVA ``process_images`` with ``image_aspect_ratio="pad"``.

LLaVA's ``expand2square`` with the background ``int(mean * 255)`` (black, as the mean is 0), then HF
``CLIPImageProcessor`` configured like FastVLM's MobileCLIP tower: resize the short side to the tower's
size (bicubic), centre crop, rescale by 1/255, mean 0 and std 1 (so pixels stay in [0, 1]).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor
from transformers.image_utils import ChannelDimension, PILImageResampling

IMAGE_SIZE = 1024
IMAGE_MEAN = (0.0, 0.0, 0.0)
IMAGE_STD = (1.0, 1.0, 1.0)


def make_image_processor(size: int = IMAGE_SIZE) -> CLIPImageProcessor:
    """``CLIPImageProcessor`` as configured for a ``mobileclip_l_<size>`` vision tower (1024 px released)."""
    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_resize=True,
        do_center_crop=True,
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        do_convert_rgb=True,
    )


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """LLaVA's ``expand2square``: paste the image centred on a square canvas."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def reference_preprocess(
    image: Image.Image | np.ndarray,
    processor: CLIPImageProcessor | None = None,
    size: int = IMAGE_SIZE,
) -> torch.FloatTensor:
    """Oracle preprocessing of one RGB image (PIL or uint8 HxWx3) -> float32 [1, 3, size, size].

    ``size`` is the vision tower's input side (1024 for the released model; a model config's
    ``image_size``); it is ignored when a ``processor`` is given.

    ``input_data_format`` is passed explicitly as channels-last: LLaVA leaves it to inference, which
    misreads images whose padded side is 1 or 3 pixels as channels-first; for every other size the result
    is the same.
    """
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
    if pil.width == 0 or pil.height == 0:
        raise ValueError("empty image")
    processor = processor or make_image_processor(size)
    background = tuple(int(x * 255) for x in processor.image_mean)
    square = expand2square(pil.convert("RGB"), background)
    out = processor.preprocess(square, return_tensors="pt", input_data_format=ChannelDimension.LAST)
    return out["pixel_values"].float()
