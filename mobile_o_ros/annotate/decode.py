"""Camera messages to RGB uint8, as robots send them: the one decoder of the annotator and the ROS node.

Raw ``sensor_msgs/Image`` (:func:`decode_raw`):

- rgb/bgr/rgba/bgra and mono at 8 and 16 bit, bayer (rggb, bggr, gbrg, grbg) at 8 and 16 bit, yuv422
  (``uyvy``, ``yuv422``), ``yuyv`` (``yuv422_yuy2``): converted by rosbags-image (cv_bridge's conversions);
- ``nv12``/``nv21`` (height × 3/2 rows of ``step`` bytes);
- generic ``nUCm``/``nSCm``/``nFCm``: 8UC1/8UC3/8UC4 read as mono8/bgr8/bgra8 (OpenCV's channel order),
  16UC3/16UC4 as bgr16/bgra16, and any single channel;
- rows padded beyond width × channels (``step``) and big-endian 16-bit data are read as the header says.

16-bit colour is scaled to 8 bit (× 255/65535). A single channel of more than 8 bits (``mono16``,
``16UC1``, ``32FC1``: thermal and depth cameras use a small part of the range) is stretched from its own
minimum to its maximum, so the model sees the scene rather than a black frame; non-finite values count as
the minimum.

``sensor_msgs/CompressedImage`` (:func:`decode_compressed`): JPEG or PNG, whatever ``format`` says
(``jpeg``, ``jpg``, ``png``, empty, or image_transport's ``rgb8; jpeg compressed bgr8``). The part after
``compressed`` gives the channel order of the stored picture, the part before ``;`` a bayer pattern to
demosaic. ``compressedDepth`` (a depth map) is refused.

Every failure raises :class:`DecodeError` with a one-line reason that names what was wrong.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

import cv2
import numpy as np
from rosbags.image import ImageError, image_to_cvimage

#: Largest accepted side, a guard against absurd headers (the vision tower resizes anyway).
MAX_SIDE = 16384


class DecodeError(ValueError):
    """A camera message that cannot be turned into an RGB picture; the message says why, in one line."""


@dataclass(frozen=True)
class RawSpec:
    """How one raw encoding is laid out and converted."""

    #: The rosbags-image encoding to convert from (``""``: converted here).
    source: str
    channels: int
    #: Bytes per sample.
    itemsize: int
    #: ``rosbags`` (rosbags-image to rgb8), ``stretch`` (one channel, min..max), ``nv12``/``nv21``.
    kind: str = "rosbags"
    #: numpy dtype of a ``stretch`` sample.
    dtype: str = "u1"
    #: Width must be even (packed 4:2:2 formats).
    even_width: bool = False


_NAMED: dict[str, RawSpec] = {
    **{e: RawSpec(e, c, 1) for e, c in (("rgb8", 3), ("bgr8", 3), ("rgba8", 4), ("bgra8", 4), ("mono8", 1))},
    **{e: RawSpec(e, c, 2) for e, c in (("rgb16", 3), ("bgr16", 3), ("rgba16", 4), ("bgra16", 4))},
    "mono16": RawSpec("", 1, 2, "stretch", "u2"),
    **{f"bayer_{p}8": RawSpec(f"bayer_{p}8", 1, 1) for p in ("rggb", "bggr", "gbrg", "grbg")},
    **{f"bayer_{p}16": RawSpec(f"bayer_{p}16", 1, 2) for p in ("rggb", "bggr", "gbrg", "grbg")},
    "yuv422": RawSpec("uyvy", 2, 1, even_width=True),
    "uyvy": RawSpec("uyvy", 2, 1, even_width=True),
    "yuyv": RawSpec("yuyv", 2, 1, even_width=True),
    "yuv422_yuy2": RawSpec("yuyv", 2, 1, even_width=True),
    "nv12": RawSpec("", 1, 1, "nv12"),
    "nv21": RawSpec("", 1, 1, "nv21"),
}
_BAYER = re.compile(r"bayer_(rggb|bggr|gbrg|grbg)")
_GENERIC = re.compile(r"(8U|8S|16U|16S|32S|32F|64F)(?:C([1-4]))?")
_GENERIC_DTYPES = {"8U": "u1", "8S": "i1", "16U": "u2", "16S": "i2", "32S": "i4", "32F": "f4", "64F": "f8"}
_GENERIC_AS = {
    ("8U", 1): "mono8",
    ("8U", 3): "bgr8",
    ("8U", 4): "bgra8",
    ("16U", 3): "bgr16",
    ("16U", 4): "bgra16",
}

#: What :func:`decode_raw` accepts, for error messages and docs.
SUPPORTED = (
    "rgb8, bgr8, rgba8, bgra8, mono8, rgb16, bgr16, rgba16, bgra16, mono16, "
    "bayer_{rggb,bggr,gbrg,grbg}{8,16}, yuv422 (uyvy), yuyv (yuv422_yuy2), nv12, nv21, "
    "8UC1/3/4, 16UC1/3/4, and one channel of 8S/16S/32S/32F/64F"
)
#: The named encodings (without the generic nUCm forms).
NAMED_ENCODINGS = tuple(_NAMED)


def raw_spec(encoding: str, what: str = "image") -> RawSpec:
    """The layout of a raw ``encoding`` (case-insensitive), or DecodeError naming it."""
    name = str(encoding).strip()
    spec = _NAMED.get(name.lower())
    if spec is not None:
        return spec
    match = _GENERIC.fullmatch(name.upper())
    if match:
        depth, channels = match.group(1), int(match.group(2) or 1)
        named = _GENERIC_AS.get((depth, channels))
        if named is not None:
            return _NAMED[named]
        if channels == 1:
            dtype = _GENERIC_DTYPES[depth]
            return RawSpec("", 1, np.dtype(dtype).itemsize, "stretch", dtype)
    raise DecodeError(f"unsupported {what} encoding {encoding!r}; supported: {SUPPORTED}")


def as_bytes(data: Any) -> np.ndarray:
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


def stretch(values: np.ndarray) -> np.ndarray:
    """One channel of any depth → uint8 [H, W], its own minimum to 0 and maximum to 255 (constant: 0)."""
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros(v.shape, np.uint8)
    lo, hi = float(v[finite].min()), float(v[finite].max())
    v = np.where(finite, v, lo)
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.round((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def decode_raw(
    encoding: str,
    width: int,
    height: int,
    step: int,
    is_bigendian: int | bool,
    data: Any,
    what: str = "image",
) -> np.ndarray:
    """A raw image's fields → contiguous uint8 [H, W, 3] RGB (a copy; ``data`` is not kept).

    Raises DecodeError for an unsupported encoding, a zero-size or absurdly large image, a ``step``
    shorter than a row, or ``data`` whose length is not the rows times ``step``.
    """
    spec = raw_spec(encoding, what)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise DecodeError(f"zero-size {what} ({width}x{height})")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise DecodeError(f"{what} too large ({width}x{height}; max side {MAX_SIDE})")
    if spec.even_width and width % 2:
        raise DecodeError(f"{what} in {encoding} needs an even width, got {width}")
    nv = spec.kind in ("nv12", "nv21")
    if nv and (width % 2 or height % 2):
        raise DecodeError(f"{what} in {encoding} needs an even width and height, got {width}x{height}")
    row = width * spec.channels * spec.itemsize
    if step < row:
        raise DecodeError(
            f"{what} step {step} is shorter than a row ({width} px x {spec.channels * spec.itemsize} B = "
            f"{row} B)"
        )
    rows = height * 3 // 2 if nv else height
    buf = as_bytes(data)
    if buf.size != rows * step:
        shape = "height*3/2*step" if nv else "height*step"
        factor = f"{height}*3/2*{step}" if nv else f"{height}*{step}"
        raise DecodeError(f"{what} data length {buf.size} does not match {shape} = {factor} = {rows * step}")
    packed = np.ascontiguousarray(buf.reshape(rows, step)[:, :row])
    try:
        if nv:
            code = cv2.COLOR_YUV2RGB_NV12 if spec.kind == "nv12" else cv2.COLOR_YUV2RGB_NV21
            return np.ascontiguousarray(cv2.cvtColor(packed.reshape(rows, width), code))
        if spec.kind == "stretch":
            dtype = np.dtype(spec.dtype)
            if spec.itemsize > 1:
                dtype = dtype.newbyteorder(">" if is_bigendian else "<")
            return _grey_to_rgb(stretch(packed.view(dtype).reshape(height, width)))
        msg = SimpleNamespace(
            height=height,
            width=width,
            encoding=spec.source,
            is_bigendian=bool(is_bigendian) if spec.itemsize > 1 else sys.byteorder != "little",
            data=packed,
        )
        rgb = image_to_cvimage(cast(Any, msg), "rgb8")  # reads only the fields given here
    except (ImageError, cv2.error, ValueError, TypeError) as err:
        raise DecodeError(f"cannot convert {what} from {encoding}: {str(err).splitlines()[0]}") from err
    return np.ascontiguousarray(rgb, dtype=np.uint8)


@dataclass(frozen=True)
class CompressedFormat:
    """A ``CompressedImage.format`` string, read."""

    #: The codec named (``jpeg``, ``png``, ...; ``""`` when the string names none).
    codec: str
    #: The encoding of the image before compression (image_transport's part before ``;``), or ``""``.
    source_encoding: str
    #: The channel order of the stored picture (the part after ``compressed``), or ``""``.
    stored_encoding: str


def parse_format(fmt: str) -> CompressedFormat:
    """Read ``jpeg``, ``png``, ``""`` or ``rgb8; jpeg compressed bgr8`` (case and spacing do not matter)."""
    text = str(fmt).strip().lower()
    source, _, rest = text.partition(";") if ";" in text else ("", "", text)
    codec, _, stored = rest.strip().partition("compressed")
    return CompressedFormat(
        codec.strip().split(" ")[0] if codec.strip() else "", source.strip(), stored.strip()
    )


def decode_compressed(fmt: str, data: Any, what: str = "compressed image") -> np.ndarray:
    """A compressed image's ``format`` and ``data`` → contiguous uint8 [H, W, 3] RGB.

    Raises DecodeError for empty data, a ``compressedDepth`` image, or data that neither JPEG nor PNG
    (nor another format OpenCV reads) decodes.
    """
    buf = as_bytes(data)
    if "compresseddepth" in str(fmt).replace(" ", "").lower():
        raise DecodeError(
            f"{what} is a compressedDepth depth map (format {fmt!r}), not a camera picture; "
            "subscribe to the camera's colour topic"
        )
    if buf.size == 0:
        raise DecodeError(f"empty {what} (format {fmt!r})")
    parsed = parse_format(fmt)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        named = f"format {fmt!r}" if str(fmt).strip() else "no format given"
        raise DecodeError(f"cannot decode {what} ({named}, {buf.size} bytes); expected JPEG or PNG")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    try:
        if img.ndim == 2:
            bayer = _BAYER.match(parsed.source_encoding)
            if bayer:
                encoding = f"bayer_{bayer.group(1)}{16 if img.dtype == np.uint16 else 8}"
                return decode_raw(
                    encoding,
                    img.shape[1],
                    img.shape[0],
                    img.shape[1] * img.itemsize,
                    sys.byteorder != "little",
                    np.ascontiguousarray(img).view(np.uint8),
                    what,
                )
            grey = img if img.dtype == np.uint8 else stretch(img)
            return _grey_to_rgb(grey)
        if img.dtype == np.uint16:
            img = np.round(img.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        stored_rgb = parsed.stored_encoding.startswith("rgb")
        if img.shape[2] == 4:
            rgb = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB if stored_rgb else cv2.COLOR_BGRA2RGB)
        else:
            rgb = img if stored_rgb else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    except cv2.error as err:
        raise DecodeError(f"cannot convert {what} (format {fmt!r}): {str(err).splitlines()[0]}") from err
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def is_compressed(msg: Any) -> bool:
    """Whether a message is shaped like ``CompressedImage`` (``format``, no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def decode_message(msg: Any, what: str = "image") -> np.ndarray:
    """An ``Image`` or ``CompressedImage`` (rclpy or rosbags, or anything with their fields) → RGB."""
    if is_compressed(msg):
        return decode_compressed(msg.format, msg.data, f"compressed {what}")
    return decode_raw(msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian, msg.data, what)


# ------------------------------------------------------------------------------------------- encoding
def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The bayer mosaic of an RGB picture: ``pattern`` names the colours of the 2×2 tile, row by row."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    index = {"r": 0, "g": 1, "b": 2}
    for k, colour in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[colour]]
    return out


def _planes(rgb: np.ndarray, name: str) -> np.ndarray | None:
    """The pixel planes of an RGB picture in encoding ``name`` (lower case), or None when unknown."""
    height, width = rgb.shape[:2]
    opaque8, opaque16 = np.full((height, width), 255, np.uint8), np.full((height, width), 65535, np.uint16)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    wide = rgb.astype(np.uint16) * 257
    if name.startswith("bayer_") and _BAYER.match(name):
        mosaic = _mosaic(rgb, name[len("bayer_") : len("bayer_") + 4])
        return mosaic.astype(np.uint16) * 257 if name.endswith("16") else mosaic
    if name in ("nv12", "nv21"):
        i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # the Y plane, then U, then V
        chroma = i420[height:].reshape(-1)
        u, v = chroma[: chroma.size // 2], chroma[chroma.size // 2 :]
        uv = np.stack([u, v] if name == "nv12" else [v, u], axis=1).reshape(height // 2, width)
        return np.concatenate([i420[:height], uv], axis=0)
    makers = {
        "rgb8": lambda: rgb,
        "bgr8": lambda: rgb[:, :, ::-1],
        "8uc3": lambda: rgb[:, :, ::-1],
        "rgba8": lambda: np.dstack([rgb, opaque8]),
        "bgra8": lambda: np.dstack([rgb[:, :, ::-1], opaque8]),
        "mono8": lambda: grey,
        "8uc1": lambda: grey,
        "yuv422": lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY),
        "uyvy": lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_UYVY),
        "yuyv": lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2),
        "yuv422_yuy2": lambda: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2),
        "rgb16": lambda: wide,
        "bgr16": lambda: wide[:, :, ::-1],
        "rgba16": lambda: np.dstack([wide, opaque16]),
        "bgra16": lambda: np.dstack([wide[:, :, ::-1], opaque16]),
        "mono16": lambda: grey.astype(np.uint16) * 257,
        "16uc1": lambda: grey.astype(np.uint16) * 257,
    }
    make = makers.get(name)
    return None if make is None else make()


def encode_rgb(
    rgb: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False
) -> tuple[int, int, int, bytes]:
    """An RGB uint8 picture in a raw ``encoding`` → (height, width, step, data), ``pad`` bytes per row.

    For tests and synthetic recordings: the inverse of :func:`decode_raw` up to the encoding's loss
    (16-bit samples are the 8-bit value × 257; one 16-bit channel is the grey level × 257).
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    pixels = _planes(rgb, encoding.strip().lower())
    if pixels is None:
        raise DecodeError(f"encode_rgb does not write {encoding!r}")
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], pad), np.uint8)], axis=1)
    return rgb.shape[0], rgb.shape[1], int(rows.shape[1]), np.ascontiguousarray(rows).tobytes()
