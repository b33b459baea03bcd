"""The shared image decoder on real sensor_msgs messages (rosbags' typestore, through CDR): every encoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from mobile_o_ros.annotate import decode

pytestmark = pytest.mark.runtime

TYPES = get_typestore(Stores.ROS2_HUMBLE)
Image = TYPES.types["sensor_msgs/msg/Image"]
CompressedImage = TYPES.types["sensor_msgs/msg/CompressedImage"]
Header = TYPES.types["std_msgs/msg/Header"]
Time = TYPES.types["builtin_interfaces/msg/Time"]

RNG = np.random.default_rng(7)
#: 8×8 blocks of random colours: subsampled chroma and demosaicing are exact inside a block.
BLOCKS = np.kron(RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
INTERIOR = np.zeros(BLOCKS.shape[:2], bool)
for _y in range(3):
    for _x in range(5):
        INTERIOR[_y * 8 + 2 : _y * 8 + 6, _x * 8 + 2 : _x * 8 + 6] = True
GREY = cv2.cvtColor(BLOCKS, cv2.COLOR_RGB2GRAY)


def _header() -> object:
    return Header(stamp=Time(sec=12, nanosec=34), frame_id="cam")


def _through_cdr(msg: object, msgtype: str) -> object:
    """The message as a bag holds it: serialized to CDR and read back."""
    return TYPES.deserialize_cdr(TYPES.serialize_cdr(msg, msgtype), msgtype)


def raw_message(rgb: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> object:
    height, width, step, data = decode.encode_rgb(rgb, encoding, pad, bigendian)
    msg = Image(
        header=_header(),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=step,
        data=np.frombuffer(data, np.uint8),
    )
    return _through_cdr(msg, "sensor_msgs/msg/Image")


def compressed_message(fmt: str, data: bytes) -> object:
    msg = CompressedImage(header=_header(), format=fmt, data=np.frombuffer(data, np.uint8))
    return _through_cdr(msg, "sensor_msgs/msg/CompressedImage")


COLOUR = [
    "rgb8",
    "bgr8",
    "rgba8",
    "bgra8",
    "rgb16",
    "bgr16",
    "rgba16",
    "bgra16",
    "8UC3",
    "bayer_rggb8",
    "bayer_bggr8",
    "bayer_gbrg8",
    "bayer_grbg8",
    "bayer_rggb16",
    "bayer_bggr16",
    "bayer_gbrg16",
    "bayer_grbg16",
    "yuv422",
    "uyvy",
    "yuyv",
    "yuv422_yuy2",
    "nv12",
    "nv21",
]


@pytest.mark.parametrize("pad", [0, 10])
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", COLOUR)
def test_colour_encodings(encoding: str, bigendian: bool, pad: int) -> None:
    """Within one level of the picture inside flat regions (exact for the lossless ones), padded rows too."""
    msg = raw_message(BLOCKS, encoding, pad, bigendian)
    out = decode.decode_message(msg)
    assert out.shape == BLOCKS.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    error = np.abs(out.astype(int) - BLOCKS)
    lossy = encoding in ("yuv422", "uyvy", "yuyv", "yuv422_yuy2", "nv12", "nv21")
    assert error[INTERIOR].max() <= (1 if lossy else 0)
    if not lossy and not encoding.startswith("bayer_"):
        assert error.max() == 0


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8(encoding: str) -> None:
    out = decode.decode_message(raw_message(BLOCKS, encoding, pad=3))
    np.testing.assert_array_equal(out, np.repeat(GREY[:, :, None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_one_16_bit_channel_is_stretched(encoding: str, bigendian: bool) -> None:
    """A thermal band (29000..29400 of 65535) fills 0..255, in either byte order."""
    values = np.linspace(29000, 29400, 24 * 40).reshape(24, 40).astype(np.uint16)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    msg = Image(
        header=_header(),
        height=24,
        width=40,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=80,
        data=np.frombuffer(data, np.uint8),
    )
    out = decode.decode_message(_through_cdr(msg, "sensor_msgs/msg/Image"))
    expected = np.round((values.astype(float) - 29000) * (255.0 / 400)).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert (out[:, :, 0] == out[:, :, 2]).all()


@pytest.mark.parametrize(("encoding", "dtype"), [("32FC1", "<f4"), ("64FC1", "<f8"), ("16SC1", "<i2")])
def test_other_single_channels_are_stretched(encoding: str, dtype: str) -> None:
    values = np.arange(12, dtype=dtype).reshape(3, 4)
    if dtype.startswith("<f"):
        values[0, 0] = np.nan  # a depth hole counts as the minimum
    msg = Image(
        header=_header(),
        height=3,
        width=4,
        encoding=encoding,
        is_bigendian=0,
        step=4 * values.itemsize,
        data=np.frombuffer(values.tobytes(), np.uint8),
    )
    out = decode.decode_message(msg)[:, :, 0]
    assert out[0, 1] == (0 if dtype.startswith("<f") else 23) and out[2, 3] == 255


@pytest.mark.parametrize(
    ("encoding", "width", "height", "step", "size", "match"),
    [
        ("h264", 4, 4, 12, 48, "unsupported image encoding 'h264'; supported: rgb8"),
        ("32FC3", 4, 4, 48, 192, "unsupported image encoding '32FC3'"),
        ("rgb8", 0, 4, 12, 0, r"zero-size image \(0x4\)"),
        ("rgb8", 20000, 1, 60000, 60000, "too large"),
        ("rgb8", 4, 4, 11, 44, r"step 11 is shorter than a row \(4 px x 3 B = 12 B\)"),
        ("mono16", 4, 4, 7, 28, r"step 7 is shorter than a row \(4 px x 2 B = 8 B\)"),
        ("rgb8", 4, 4, 12, 47, r"data length 47 does not match height\*step = 4\*12 = 48"),
        ("nv12", 4, 4, 4, 16, r"data length 16 does not match height\*3/2\*step = 4\*3/2\*4 = 24"),
        ("nv12", 4, 3, 4, 18, "needs an even width and height"),
        ("yuv422", 3, 2, 6, 12, "needs an even width, got 3"),
    ],
)
def test_malformed_raw_images_are_refused(
    encoding: str, width: int, height: int, step: int, size: int, match: str
) -> None:
    with pytest.raises(decode.DecodeError, match=match):
        decode.decode_raw(encoding, width, height, step, 0, bytes(size))


def _png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(
    "fmt", ["bgr8; jpeg compressed bgr8", "rgb8; jpeg compressed bgr8", "jpeg", "jpg", "png", "", "JPEG "]
)
def test_compressed_bgr_pictures(fmt: str) -> None:
    ok, buf = cv2.imencode(".jpg", BLOCKS[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    out = decode.decode_message(compressed_message(fmt, buf.tobytes()))
    assert np.abs(out.astype(int) - BLOCKS)[INTERIOR].mean() < 3


def test_compressed_rgb_order_is_read_from_the_format() -> None:
    """image_transport stores rgb8 as is when the format says ``compressed rgb8``."""
    out = decode.decode_message(compressed_message("rgb8; png compressed rgb8", _png(BLOCKS)))
    np.testing.assert_array_equal(out, BLOCKS)


def test_compressed_grey_alpha_16_bit_and_bayer() -> None:
    grey = decode.decode_message(compressed_message("mono8; png compressed mono8", _png(GREY)))
    np.testing.assert_array_equal(grey, np.repeat(GREY[:, :, None], 3, axis=2))
    bgra = np.dstack([BLOCKS[:, :, ::-1], np.full(BLOCKS.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(decode.decode_message(compressed_message("png", _png(bgra))), BLOCKS)
    wide = BLOCKS[:, :, ::-1].astype(np.uint16) * 257
    np.testing.assert_array_equal(decode.decode_message(compressed_message("png", _png(wide))), BLOCKS)
    thermal = np.linspace(1000, 1255, 24 * 40).reshape(24, 40).astype(np.uint16)
    out = decode.decode_message(compressed_message("mono16; png compressed mono16", _png(thermal)))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    _, _, _, mosaic = decode.encode_rgb(BLOCKS, "bayer_rggb8")
    mosaic_png = _png(np.frombuffer(mosaic, np.uint8).reshape(BLOCKS.shape[:2]))
    out = decode.decode_message(compressed_message("bayer_rggb8; png compressed ", mosaic_png))
    assert np.abs(out.astype(int) - BLOCKS)[INTERIOR].max() == 0


@pytest.mark.parametrize(
    ("fmt", "data", "match"),
    [
        ("16UC1; compressedDepth png", bytes(12) + b"\x89PNG", "compressedDepth depth map"),
        ("16UC1; compressedDepth", b"", "compressedDepth depth map"),
        ("jpeg", b"", r"empty compressed image \(format 'jpeg'\)"),
        (
            "jpeg",
            b"\xff\xd8\xff\xe0 not a jpeg",
            r"cannot decode compressed image \(format 'jpeg', 15 bytes\)",
        ),
        ("", b"garbage", r"cannot decode compressed image \(no format given, 7 bytes\)"),
        ("theora", b"\x00\x01\x02", r"cannot decode compressed image \(format 'theora'"),
    ],
)
def test_undecodable_compressed_images_are_refused(fmt: str, data: bytes, match: str) -> None:
    with pytest.raises(decode.DecodeError, match=match):
        decode.decode_message(compressed_message(fmt, data))


def test_a_truncated_jpeg_is_refused_or_decoded_never_raised_otherwise() -> None:
    ok, buf = cv2.imencode(".jpg", BLOCKS)
    assert ok
    for cut in (2, 20, len(buf) // 2):
        try:
            out = decode.decode_compressed("jpeg", buf.tobytes()[:cut])
        except decode.DecodeError as err:
            assert "cannot decode compressed image" in str(err)
        else:
            assert out.shape == BLOCKS.shape


def test_format_strings_are_read() -> None:
    assert decode.parse_format("rgb8; jpeg compressed bgr8") == decode.CompressedFormat(
        "jpeg", "rgb8", "bgr8"
    )
    assert decode.parse_format("bayer_rggb8; jpeg compressed ") == decode.CompressedFormat(
        "jpeg", "bayer_rggb8", ""
    )
    assert decode.parse_format(" PNG") == decode.CompressedFormat("png", "", "")
    assert decode.parse_format("") == decode.CompressedFormat("", "", "")


def test_a_thousand_malformed_images_each_get_a_one_line_refusal() -> None:
    """Random wrong headers and data, raw and compressed: a DecodeError with one line each, nothing else."""
    rng = np.random.default_rng(1234)
    encodings = [*decode.NAMED_ENCODINGS, "16UC1", "32FC1", "8UC3", "h264", "", "RGB8", "32FC3", "bayer"]
    formats = ["jpeg", "png", "", "bgr8; jpeg compressed bgr8", "16UC1; compressedDepth", "theora"]
    refused = 0
    for i in range(1000):
        if i % 4 == 3:
            good = _png(BLOCKS) if rng.random() < 0.5 else b""
            cut = int(rng.integers(0, max(1, len(good))))
            data = good[:cut] + rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8).tobytes()
            call = lambda d=data: decode.decode_compressed(str(rng.choice(formats)), d)
        else:
            width, height = int(rng.integers(-2, 9)), int(rng.integers(-2, 9))
            step = int(rng.integers(-1, 40))
            size = max(0, width * height * 2 + int(rng.integers(-5, 5)))
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            enc = str(rng.choice(encodings))
            call = lambda e=enc, w=width, h=height, s=step, d=data: decode.decode_raw(e, w, h, s, 0, d)
        try:
            out = call()
        except decode.DecodeError as err:
            refused += 1
            assert "\n" not in str(err) and str(err)
        else:
            assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
    assert refused > 900
