"""Image preprocessing for the vision tower without torch or PIL.

Reproduces LLaVA's ``expand2square`` (black) followed by HF ``CLIPImageProcessor`` with
``shortest_edge=1024``, ``crop_size=1024``, bicubic, rescale 1/255, mean 0 / std 1. The bicubic resize is a
numpy re-implementation of Pillow's ``ImagingResample`` for 8-bit images: the same double-precision
coefficients, the same fixed-point rounding (``PRECISION_BITS`` = 22) and the same horizontal-then-vertical
passes with rounding to uint8 in between, so the output is bit-identical to Pillow's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c
_BICUBIC_SUPPORT = 2.0
_BICUBIC_A = -0.5
RESCALE_FACTOR = 1 / 255  # CLIPImageProcessor default
# transformers' rescale: float64(u8) * (1/255), then float32; mean 0 / std 1 leaves it unchanged.
_RESCALE_LUT = (np.arange(256, dtype=np.float64) * RESCALE_FACTOR).astype(np.float32)

_COLOR_CONVERSIONS = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
}
_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def _check_nonempty(image: np.ndarray) -> None:
    if image.ndim < 2 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")


def to_rgb(image: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a ROS-style uint8 image (``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8``) to RGB HxWx3."""
    enc = encoding.lower()
    if enc not in _CHANNELS:
        raise ValueError(f"unsupported encoding {encoding!r}; expected one of {sorted(_CHANNELS)}")
    image = np.asarray(image)
    _check_nonempty(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels for {encoding}, got {image.dtype}")
    channels = _CHANNELS[enc]
    if image.ndim == 2 and channels == 1:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f"{encoding} needs HxWx{channels} pixels, got shape {image.shape}")
    if enc == "rgb8":
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image), _COLOR_CONVERSIONS[enc])


def expand_to_square(rgb: np.ndarray, fill: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """LLaVA ``expand2square``: centre ``rgb`` on a ``fill``-coloured square of side max(h, w)."""
    _check_nonempty(rgb)
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    side = max(h, w)
    out = np.empty((side, side, rgb.shape[2]), dtype=rgb.dtype)
    out[:] = np.asarray(fill, dtype=rgb.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


def _bicubic_filter(x: np.ndarray) -> np.ndarray:
    """Pillow's ``bicubic_filter`` (a = -0.5), same operation order, float64."""
    x = np.abs(x)
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_bicubic_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for BICUBIC over the full box.

    Returns ``(index [out, ksize] int64, weight [out, ksize] int32)``: output pixel ``i`` is
    ``sum_t in[index[i, t]] * weight[i, t]`` in fixed point. Taps past Pillow's ``xmax`` have weight 0.
    """
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < xmax[:, None]
    pos = xmin[:, None] + taps[None, :]
    weights = np.where(valid, _bicubic_filter(((pos - center[:, None]) + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.zeros(out_size)
    for t in range(ksize):  # sequential sum, like the C loop
        total = total + weights[:, t]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = np.where(weights < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    return np.minimum(pos, in_size - 1), fixed


def _resample_axis0(img: np.ndarray, out_size: int) -> np.ndarray:
    """One Pillow 8-bit resampling pass along axis 0 of a C-contiguous uint8 array.

    Integer arithmetic identical to ``ImagingResample{Horizontal,Vertical}_8bpc`` (int32 accumulators that
    start at 1/2 in fixed point, arithmetic shift, clip to [0, 255]). Works on blocks of output rows so the
    accumulators stay in cache.
    """
    index, weight = pil_bicubic_coefficients(img.shape[0], out_size)
    flat = img.reshape(img.shape[0], -1)
    width = flat.shape[1]
    taps = [t for t in range(index.shape[1]) if weight[:, t].any()]
    block = int(np.clip((1 << 19) // (4 * max(width, 1)), 4, 256))
    acc = np.empty((block, width), dtype=np.int32)
    tmp = np.empty((block, width), dtype=np.int32)
    buf = np.empty((block, width), dtype=np.uint8)
    out = np.empty((out_size, width), dtype=np.uint8)
    for r0 in range(0, out_size, block):
        r1 = min(r0 + block, out_size)
        a, n = acc[: r1 - r0], r1 - r0
        a.fill(1 << (PRECISION_BITS - 1))
        for t in taps:
            np.take(flat, index[r0:r1, t], axis=0, out=buf[:n])
            np.multiply(buf[:n], weight[r0:r1, t, None], out=tmp[:n])
            a += tmp[:n]
        np.right_shift(a, PRECISION_BITS, out=a)
        out[r0:r1] = np.clip(a, 0, 255, out=a)
    return out.reshape(out_size, *img.shape[1:])


def pil_resize_bicubic(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bit-exact numpy ``PIL.Image.fromarray(rgb).resize((width, height), BICUBIC)`` (Pillow 13)."""
    _check_nonempty(rgb)
    if width < 1 or height < 1:
        raise ValueError(f"invalid target size {width}x{height}")
    out = np.asarray(rgb, dtype=np.uint8)
    in_h, in_w = out.shape[:2]
    # Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as
    # the width; older Pillow always goes horizontal first. For square -> square (our path) both agree.
    vertical_first = (in_h - height) > 0 and (in_h - height) > (in_w - width) * 2
    if vertical_first and in_h != height:
        out = _resample_axis0(np.ascontiguousarray(out), height)
    if in_w != width:
        out = _resample_axis0(np.ascontiguousarray(out.swapaxes(0, 1)), width).swapaxes(0, 1)
    if not vertical_first and in_h != height:
        out = _resample_axis0(np.ascontiguousarray(out), height)
    return np.ascontiguousarray(out)


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """transformers 4.57 ``get_resize_output_image_size(default_to_square=False)`` -> (height, width)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """transformers ``center_crop`` on HxWxC (zero-pads when the image is smaller than the crop)."""
    orig_h, orig_w = image.shape[:2]
    top, left = (orig_h - crop_height) // 2, (orig_w - crop_width) // 2
    bottom, right = top + crop_height, left + crop_width
    if top >= 0 and bottom <= orig_h and left >= 0 and right <= orig_w:
        return image[top:bottom, left:right]
    new_h, new_w = max(crop_height, orig_h), max(crop_width, orig_w)
    padded = np.zeros((new_h, new_w, *image.shape[2:]), dtype=image.dtype)
    top_pad, left_pad = math.ceil((new_h - orig_h) / 2), math.ceil((new_w - orig_w) / 2)
    padded[top_pad : top_pad + orig_h, left_pad : left_pad + orig_w] = image
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[max(0, top) : min(new_h, bottom), max(0, left) : min(new_w, right)]


def clip_image_processor(rgb: np.ndarray, shortest_edge: int = 1024, crop_size: int = 1024) -> np.ndarray:
    """The configured ``CLIPImageProcessor`` on an RGB uint8 image -> float32 [1, 3, crop, crop] in [0, 1]."""
    _check_nonempty(rgb)
    height, width = shortest_edge_size(rgb.shape[0], rgb.shape[1], shortest_edge)
    resized = pil_resize_bicubic(rgb, width, height)
    cropped = center_crop(resized, crop_size, crop_size)
    return _RESCALE_LUT[cropped.transpose(2, 0, 1)][None]


def resize_padded_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """``pil_resize_bicubic(expand_to_square(rgb), size, size)`` without resampling the black bands.

    Square to square, Pillow runs the horizontal pass first (every version); black rows stay exactly 0
    through it (1/2 in fixed point rounds down), so only the image rows are resampled horizontally.
    """
    _check_nonempty(rgb)
    h, w, c = rgb.shape
    side = max(h, w)
    if side == size:
        return expand_to_square(rgb)
    top, left = (side - h) // 2, (side - w) // 2
    columns = np.zeros((side, h, c), dtype=np.uint8)  # width-major, so the pass runs along axis 0
    columns[left : left + w] = rgb.swapaxes(0, 1)
    rows = np.zeros((side, size, c), dtype=np.uint8)
    rows[top : top + h] = _resample_axis0(columns, size).swapaxes(0, 1)
    return _resample_axis0(rows, size)


def preprocess_image(rgb: np.ndarray, size: int = 1024) -> np.ndarray:
    """Reference vision preprocessing: black square pad, bicubic to ``size``, [0, 1] -> [1, 3, size, size].

    Equal to ``clip_image_processor(expand_to_square(rgb), size, size)`` (the crop is a no-op on a square).
    """
    rgb = np.asarray(rgb)
    _check_nonempty(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    square = resize_padded_square(rgb, size)
    return _RESCALE_LUT[square.transpose(2, 0, 1)][None]
