"""``sensor_msgs/Image`` and ``CompressedImage`` ↔ numpy RGB, with validation (numpy/OpenCV, no cv_bridge).

Inputs: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` (8-bit, so ``is_bigendian`` does not matter), rows
padded to ``step`` bytes; JPEG/PNG ``CompressedImage``. Outputs: ``rgb8`` with a given header.

The conversion functions read message attributes only (``height``, ``width``, ``encoding``, ``step``,
``data``, ``format``), so they work on any object shaped like the ROS messages. Every failure raises
:class:`~mobile_o_ros.validation.InvalidRequest` with a one-line reason.
"""

from __future__ import annotations

import array
from typing import Any

import cv2
import numpy as np

from mobile_o_ros.runtime.preprocess import to_rgb
from mobile_o_ros.validation import InvalidRequest

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
SUPPORTED_ENCODINGS = tuple(CHANNELS)
#: Largest accepted side, a guard against absurd headers (the vision tower resizes to 1024 anyway).
MAX_SIDE = 16384


def _as_bytes(data: Any) -> np.ndarray:
    """A message's ``data`` (bytes, bytearray, array.array('B'), list or ndarray) as a flat uint8 array."""
    if isinstance(data, np.ndarray):
        return (
            data.reshape(-1).view(np.uint8) if data.dtype == np.uint8 else data.astype(np.uint8).reshape(-1)
        )
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)  # array.array('B')
    except TypeError:
        return np.asarray(list(data), dtype=np.uint8)


def is_empty_image(msg: Any) -> bool:
    """True for a default-constructed Image (no size, encoding or data): "no inline image given"."""
    return not msg.width and not msg.height and not msg.encoding and len(msg.data) == 0


def image_to_rgb(msg: Any, what: str = "image") -> np.ndarray:
    """``sensor_msgs/Image`` → contiguous uint8 [H, W, 3] RGB (a copy; the message is not kept).

    Raises InvalidRequest for an unsupported encoding, a zero-size image, a ``step`` shorter than a row or
    ``data`` whose length is not ``height * step``.
    """
    encoding = str(msg.encoding).strip().lower()
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if encoding not in CHANNELS:
        raise InvalidRequest(
            f"unsupported {what} encoding {msg.encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    if height <= 0 or width <= 0:
        raise InvalidRequest(f"zero-size {what} ({width}x{height})")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise InvalidRequest(f"{what} too large ({width}x{height}; max side {MAX_SIDE})")
    channels = CHANNELS[encoding]
    row = width * channels
    if step < row:
        raise InvalidRequest(
            f"{what} step {step} is shorter than a row ({width} px x {channels} B = {row} B)"
        )
    data = _as_bytes(msg.data)
    if data.size != height * step:
        raise InvalidRequest(
            f"{what} data length {data.size} does not match height*step = {height}*{step} = {height * step}"
        )
    pixels = data.reshape(height, step)[:, :row].reshape(height, width, channels)
    try:
        return to_rgb(pixels, encoding)
    except ValueError as err:  # to_rgb's own checks; unreachable for validated input
        raise InvalidRequest(f"{what}: {err}") from err


def compressed_to_rgb(msg: Any, what: str = "compressed image") -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG or PNG, colour or grey) → uint8 [H, W, 3] RGB."""
    data = _as_bytes(msg.data)
    if data.size == 0:
        raise InvalidRequest(f"empty {what} (format {msg.format!r})")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise InvalidRequest(
            f"cannot decode {what} (format {msg.format!r}, {data.size} bytes); expected JPEG or PNG"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_rgb_any(msg: Any, what: str = "image") -> np.ndarray:
    """Dispatch on the message shape: CompressedImage (has ``format``) or Image."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        return compressed_to_rgb(msg, f"compressed {what}")
    return image_to_rgb(msg, what)


def rgb_to_image(rgb: np.ndarray, header: Any = None) -> Any:
    """uint8 [H, W, 3] RGB → ``sensor_msgs/Image`` (``rgb8``, ``step = 3 * width``) with ``header`` copied."""
    from sensor_msgs.msg import Image

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB, got shape {rgb.shape}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(rgb.shape[1] * 3)
    msg.data = array.array("B", rgb.tobytes())
    return msg


def array_to_image(pixels: np.ndarray, encoding: str, header: Any = None, pad: int = 0) -> Any:
    """uint8 pixels in ``encoding`` → ``sensor_msgs/Image``; ``pad`` extra bytes per row (tests, clients)."""
    from sensor_msgs.msg import Image

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    channels = CHANNELS[encoding]
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * channels)
    if pad:
        rows = np.concatenate([rows, np.zeros((height, pad), np.uint8)], axis=1)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = int(height), int(width), encoding
    msg.is_bigendian = 0
    msg.step = int(width * channels + pad)
    msg.data = array.array("B", np.ascontiguousarray(rows).tobytes())
    return msg


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", header: Any = None, quality: int = 90) -> Any:
    """uint8 RGB → ``sensor_msgs/CompressedImage`` (``jpeg`` or ``png``)."""
    from sensor_msgs.msg import CompressedImage

    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}[fmt]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode {fmt}")
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = "jpeg" if ext == ".jpg" else "png"
    msg.data = array.array("B", buf.tobytes())
    return msg
