"""``sensor_msgs/Image`` and ``CompressedImage`` ↔ numpy RGB, with validation (no cv_bridge).

Decoding is :mod:`mobile_o_ros.annotate.decode`, the annotator's: every raw encoding robots send (rgb, bgr,
rgba, bgra and mono at 8 and 16 bit, bayer, yuv422/uyvy/yuyv, nv12/nv21, generic ``nUCm``), rows padded to
``step``, and JPEG/PNG ``CompressedImage`` whatever its ``format`` string says. Outputs: ``rgb8`` with a
given header.

The conversion functions read message attributes only (``height``, ``width``, ``encoding``, ``step``,
``is_bigendian``, ``data``, ``format``), so they work on any object shaped like the ROS messages. Every
failure raises :class:`~mobile_o_ros.validation.InvalidRequest` with a one-line reason.
"""

from __future__ import annotations

import array
from typing import Any

import cv2
import numpy as np

from mobile_o_ros.annotate import decode
from mobile_o_ros.validation import InvalidRequest

#: Channels of each named raw encoding.
CHANNELS = {name: decode.raw_spec(name).channels for name in decode.NAMED_ENCODINGS}
SUPPORTED_ENCODINGS = decode.NAMED_ENCODINGS
MAX_SIDE = decode.MAX_SIDE


def is_empty_image(msg: Any) -> bool:
    """True for a default-constructed Image (no size, encoding or data): "no inline image given"."""
    return not msg.width and not msg.height and not msg.encoding and len(msg.data) == 0


def image_to_rgb(msg: Any, what: str = "image") -> np.ndarray:
    """``sensor_msgs/Image`` → contiguous uint8 [H, W, 3] RGB (a copy; the message is not kept).

    Raises InvalidRequest for an unsupported encoding, a zero-size image, a ``step`` shorter than a row or
    ``data`` whose length is not the rows times ``step``.
    """
    try:
        return decode.decode_raw(
            msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian, msg.data, what
        )
    except decode.DecodeError as err:
        raise InvalidRequest(str(err)) from err


def compressed_to_rgb(msg: Any, what: str = "compressed image") -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG or PNG, colour, grey or bayer) → uint8 [H, W, 3] RGB."""
    try:
        return decode.decode_compressed(msg.format, msg.data, what)
    except decode.DecodeError as err:
        raise InvalidRequest(str(err)) from err


def to_rgb_any(msg: Any, what: str = "image") -> np.ndarray:
    """Dispatch on the message shape: CompressedImage (has ``format``) or Image."""
    if decode.is_compressed(msg):
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
    """Pixels already in ``encoding`` (any dtype; little-endian) → ``sensor_msgs/Image``; ``pad`` extra bytes
    per row (tests, clients)."""
    from sensor_msgs.msg import Image

    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.zeros((height, pad), np.uint8)], axis=1)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = int(height), int(width), encoding
    msg.is_bigendian = 0
    msg.step = int(rows.shape[1])
    msg.data = array.array("B", np.ascontiguousarray(rows).tobytes())
    return msg


def rgb_to_raw(
    rgb: np.ndarray, encoding: str, header: Any = None, pad: int = 0, bigendian: bool = False
) -> Any:
    """An RGB picture as a ``sensor_msgs/Image`` in any raw ``encoding`` that
    :func:`~mobile_o_ros.annotate.decode.encode_rgb` writes (yuv422, bayer, mono16, nv12, ...)."""
    from sensor_msgs.msg import Image

    height, width, step, data = decode.encode_rgb(rgb, encoding, pad, bigendian)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding, msg.step = height, width, encoding, step
    msg.is_bigendian = int(bigendian)
    msg.data = array.array("B", data)
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
