"""A classical detector for the shapes world, and GenEval-style scoring of generated and edited images.

Detection (OpenCV, no learning): every pixel is labelled with its nearest palette entry (the named colours
and the backgrounds) in CIELAB, within a distance limit; each colour's mask is opened, split into connected
components, and each component large enough becomes an object. Its shape comes from its fill ratio (area
over bounding box: square ≈ 1, circle ≈ π/4, triangle ≈ 1/2; the world's shapes are axis-aligned), its
position from the centroid (nearest named position), its size from the box extent.

Scoring compares detections with the scene a caption or an edit describes: an image is right when the
detected (shape, colour, position) multiset equals the expected one; attribute-level rates are reported too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from mobile_o_ros.shapes.world import BACKGROUNDS, COLOURS, POSITIONS, SIZES, Edit, Scene

#: Largest CIELAB distance at which a pixel still counts as a palette colour.
MAX_LAB_DISTANCE = 45.0
#: Smallest object, as a fraction of the image area (a small triangle covers about 1.3 %).
MIN_AREA_FRACTION = 0.0025
#: Fill-ratio boundaries: below the first a triangle, above the second a square, a circle in between.
#: (Clean renders: triangle 0.49-0.51, circle 0.75-0.78, square 0.96-0.98; blurred: 0.58 / 0.70-0.77 / 0.86.)
TRIANGLE_MAX_FILL = 0.64
SQUARE_MIN_FILL = 0.82
#: Centroid offset below the box centre (fraction of the box height) that marks a rounded triangle (≈ 1/6).
TRIANGLE_MIN_SKEW = 0.07
#: Images larger than this are area-downsampled to it before detection (speed; same results on renders).
WORK_SIZE = 256


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


_PALETTE_NAMES: tuple[str, ...] = (*COLOURS, *(f"bg:{b}" for b in BACKGROUNDS))
_PALETTE_LAB: np.ndarray = _lab(np.array([[*COLOURS.values(), *BACKGROUNDS.values()]], dtype=np.uint8))[0]


@dataclass(frozen=True)
class Detection:
    """One detected object; ``centre`` and ``radius`` are fractions of the image side."""

    shape: str
    colour: str
    position: str
    size: str
    centre: tuple[float, float]
    radius: float
    area: float
    fill: float

    def key(self) -> tuple[str, str, str]:
        """(shape, colour, position): what scoring compares."""
        return (self.shape, self.colour, self.position)


@dataclass
class Detections:
    """Everything found in one image."""

    background: str
    objects: list[Detection] = field(default_factory=list)

    def keys(self) -> Counter:
        """Multiset of (shape, colour, position)."""
        return Counter(d.key() for d in self.objects)

    def at(self, position: str) -> list[Detection]:
        """Objects detected at a named position."""
        return [d for d in self.objects if d.position == position]


def label_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the nearest palette entry (colours then backgrounds) and its CIELAB distance."""
    lab = _lab(rgb).reshape(-1, 3)
    d = np.linalg.norm(lab[:, None, :] - _PALETTE_LAB[None, :, :], axis=2)
    idx = d.argmin(axis=1)
    return idx.reshape(rgb.shape[:2]), d[np.arange(len(idx)), idx].reshape(rgb.shape[:2])


def classify_shape(contour: np.ndarray, area: float) -> tuple[str, float]:
    """(shape name, fill ratio) of one outer contour.

    Fill ratio first; a blurred (rounded) triangle keeps its tell-tale vertical asymmetry: its centroid
    sits about h/6 below the box centre (the world's triangles point up), a circle's or square's on it.
    """
    _, y, w, h = cv2.boundingRect(contour)
    fill = float(area) / max(1.0, float(w * h))
    m = cv2.moments(contour)
    skew = (m["m01"] / max(m["m00"], 1e-9) - (y + h / 2)) / max(1.0, float(h))
    if fill < TRIANGLE_MAX_FILL or (skew > TRIANGLE_MIN_SKEW and fill < SQUARE_MIN_FILL):
        return "triangle", fill
    if fill > SQUARE_MIN_FILL:
        return "square", fill
    return "circle", fill


def nearest_position(x: float, y: float) -> str:
    """The named position closest to (x, y) (fractions of the side)."""
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - x) ** 2 + (POSITIONS[p][1] - y) ** 2)


def nearest_size(radius: float) -> str:
    """The named size closest to a half-extent, on a log scale."""
    return min(SIZES, key=lambda s: abs(np.log(radius / SIZES[s])))


def detect(rgb: np.ndarray) -> Detections:
    """Find the shapes in an RGB uint8 image of any size."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got {rgb.shape}")
    if max(rgb.shape[:2]) > WORK_SIZE:
        f = WORK_SIZE / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    h, w = rgb.shape[:2]
    idx, dist = label_pixels(rgb)
    n_colours = len(COLOURS)
    border = np.concatenate([idx[0], idx[-1], idx[:, 0], idx[:, -1]])
    bg_votes = Counter(int(i) for i in border if i >= n_colours)
    background = _PALETTE_NAMES[bg_votes.most_common(1)[0][0]][3:] if bg_votes else "unknown"
    k = max(3, round(min(h, w) / 170) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    min_area = MIN_AREA_FRACTION * h * w
    side = float(min(h, w))
    found: list[Detection] = []
    for ci, name in enumerate(COLOURS):
        mask = ((idx == ci) & (dist < MAX_LAB_DISTANCE)).astype(np.uint8)
        if mask.sum() < min_area:
            continue
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for c in contours:
            area = cv2.contourArea(c)
            if area < min_area:
                continue
            m = cv2.moments(c)
            cx, cy = m["m10"] / m["m00"] / w, m["m01"] / m["m00"] / h
            _, _, bw, bh = cv2.boundingRect(c)
            radius = float(np.sqrt(bw * bh)) / 2 / side
            shape, fill = classify_shape(c, area)
            found.append(
                Detection(
                    shape,
                    name,
                    nearest_position(cx, cy),
                    nearest_size(radius),
                    (cx, cy),
                    radius,
                    float(area) / (h * w),
                    fill,
                )
            )
    return Detections(background, found)


def expected_keys(scene: Scene) -> Counter:
    """Multiset of (shape, colour, position) a scene should show."""
    return Counter((o.shape, o.colour, o.position) for o in scene.objects)


@dataclass
class GenerationScore:
    """How well one image shows a scene (GenEval-style: all objects right, nothing extra)."""

    correct: bool
    count: bool
    shapes: float
    colours: float
    positions: float
    sizes: float
    background: bool
    detections: Detections

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary."""
        return {
            "correct": self.correct,
            "count": self.count,
            "shapes": self.shapes,
            "colours": self.colours,
            "positions": self.positions,
            "sizes": self.sizes,
            "background": self.background,
            "detected": [[*list(d.key()), d.size] for d in self.detections.objects],
        }


def score_generation(
    scene: Scene, image: np.ndarray, detections: Detections | None = None
) -> GenerationScore:
    """Score an image generated for ``caption(scene)``.

    ``correct``: the detected (shape, colour, position) multiset equals the scene's (right shapes, colours,
    counts and positions; nothing missing, nothing extra). Attribute rates are per expected object: a
    detection at its position with its shape / colour / size; ``positions``: an object of its shape and
    colour at its position.
    """
    det = detections or detect(image)
    n = len(scene.objects)
    shapes = colours = positions = sizes = 0
    for o in scene.objects:
        here = det.at(o.position)
        shapes += any(d.shape == o.shape for d in here)
        colours += any(d.colour == o.colour for d in here)
        sizes += any(d.size == o.size for d in here)
        positions += any(d.shape == o.shape and d.colour == o.colour for d in here)
    return GenerationScore(
        correct=det.keys() == expected_keys(scene),
        count=len(det.objects) == n,
        shapes=shapes / n,
        colours=colours / n,
        positions=positions / n,
        sizes=sizes / n,
        background=det.background == scene.background,
        detections=det,
    )


@dataclass
class EditScore:
    """Whether an edit did what was asked (``changed``) and left the rest alone (``kept``)."""

    correct: bool
    changed: bool
    kept: bool
    background: bool
    detections: Detections

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary."""
        return {
            "correct": self.correct,
            "changed": self.changed,
            "kept": self.kept,
            "background": self.background,
            "detected": [[*list(d.key()), d.size] for d in self.detections.objects],
        }


def score_edit(edit: Edit, image: np.ndarray, detections: Detections | None = None) -> EditScore:
    """Score an edited image.

    ``changed``: recolour → the object's position shows its shape in the new colour; remove → nothing is at
    its position; move → its shape and colour are at the new position and nothing at the old one.
    ``kept``: every other object is still detected at its position with its shape and colour, and nothing
    extra appeared. ``correct``: both, i.e. the detections equal the edited scene's.
    """
    det = detections or detect(image)
    o = edit.obj
    if edit.kind == "recolour":
        changed = any(d.shape == o.shape and d.colour == edit.new_colour for d in det.at(o.position))
    elif edit.kind == "remove":
        changed = not det.at(o.position)
    elif edit.kind == "move":
        assert edit.new_position is not None
        changed = not det.at(o.position) and any(
            d.shape == o.shape and d.colour == o.colour for d in det.at(edit.new_position)
        )
    else:
        raise ValueError(f"unknown edit kind {edit.kind!r}")
    target = expected_keys(edit.target)
    others = [x for x in edit.source.objects if x is not o]
    kept = all(any(d.shape == x.shape and d.colour == x.colour for d in det.at(x.position)) for x in others)
    kept = kept and len(det.objects) <= len(edit.target.objects)
    return EditScore(
        correct=det.keys() == target,
        changed=changed,
        kept=kept,
        background=det.background == edit.target.background,
        detections=det,
    )
