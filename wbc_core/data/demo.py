"""Built-in offline demo dataset: procedurally drawn, cell-like pictures. They are NOT real blood cells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil", "platelet"]
README_NAME = "DEMO_DATA_README.txt"
_SUPERSAMPLE = 4  # draw at 4x and downsample: smooth edges without an anti-aliasing rasteriser

README_TEXT = """\
DEMO DATA - NOT REAL CELLS

Every image in this folder was drawn procedurally by wbc_core.data.demo (random discs and blobs on a pink
background) so that wbc-curate can be tried offline. They only imitate the look of stained blood smears:
class names are borrowed from real white-blood-cell types, but the pictures carry no medical information.
Never use them to train or evaluate a model meant for real cells.

Classes: {classes}. Images per class: {per_class}. Size: {size}x{size} pixels. Seed: {seed}.
"""

# Colours (RGB) of a May-Grunwald-Giemsa-like stain.
_RBC = np.array([222.0, 150.0, 160.0])
_RBC_PALLOR = np.array([238.0, 196.0, 202.0])
_NUCLEUS = np.array([86.0, 42.0, 122.0])
_PLATELET = np.array([128.0, 78.0, 158.0])
_CYTOPLASM = {
    "lymphocyte": np.array([168.0, 188.0, 226.0]),  # thin sky-blue rim
    "neutrophil": np.array([226.0, 202.0, 218.0]),  # pale lilac with fine granules
    "eosinophil": np.array([228.0, 178.0, 150.0]),  # pale orange under the granules
    "monocyte": np.array([188.0, 182.0, 214.0]),  # grey-blue, vacuolated
}
_RADIUS = {"lymphocyte": (0.16, 0.20), "neutrophil": (0.23, 0.27), "eosinophil": (0.24, 0.28), "monocyte": (0.27, 0.32)}


def make_demo_cells(per_class: int = 60, size: int = 64, seed: int = 0) -> dict[str, list[Image.Image]]:
    """Draw per_class RGB images of size x size for each demo class; identical output for identical arguments."""
    if per_class < 0 or size < 16:
        raise ValueError(f"need per_class >= 0 and size >= 16, got per_class={per_class} size={size}")
    # One generator per (seed, class, index): image i is the same whatever per_class is.
    return {
        name: [_draw(name, size, np.random.default_rng([seed, k, i])) for i in range(per_class)]
        for k, name in enumerate(DEMO_CLASSES)
    }


def write_demo_folder(dest: Path, per_class: int = 60, size: int = 64, seed: int = 0) -> Path:
    """Write the demo images as PNGs in one subfolder per class plus a README; return dest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, images in make_demo_cells(per_class, size, seed).items():
        folder = dest / name
        folder.mkdir(exist_ok=True)
        for i, image in enumerate(images):
            image.save(folder / f"demo_{name}_{i:03d}.png", format="PNG")
    text = README_TEXT.format(classes=", ".join(DEMO_CLASSES), per_class=per_class, size=size, seed=seed)
    (dest / README_NAME).write_text(text, encoding="utf-8")
    return dest


class _Canvas:
    """A float RGB canvas at supersampled resolution, painted through soft masks."""

    def __init__(self, width: int, rng: np.random.Generator) -> None:
        self.w = width
        self.rng = rng
        base = np.array([233.0, 214.0, 226.0]) + rng.normal(0, 3, 3)
        shade = 1.0 + 0.05 * self.smooth_noise(4)
        self.rgb = (base[None, None, :] * shade[:, :, None]).astype(np.float32)

    def smooth_noise(self, cells: int) -> np.ndarray:
        """Zero-mean noise of about unit amplitude varying over `cells` blobs per side."""
        small = self.rng.normal(0, 1, (cells, cells)).astype(np.float32)
        return np.asarray(Image.fromarray(small, mode="F").resize((self.w, self.w), Image.Resampling.BICUBIC))

    def mask(self, polygons: list[list[tuple[float, float]]], lines: list[tuple] = (), blur: float = 1.0) -> np.ndarray:
        """Soft 0..1 mask of filled polygons and (points, width) polylines."""
        img = Image.new("L", (self.w, self.w), 0)
        draw = ImageDraw.Draw(img)
        for poly in polygons:
            draw.polygon(poly, fill=255)
        for points, width in lines:
            draw.line(points, fill=255, width=max(1, int(width)), joint="curve")
        out = np.zeros((self.w, self.w), dtype=np.float32)
        box = img.getbbox()
        if box is None:
            return out
        # Blur only around the shape: a full-canvas blur per shape dominated the drawing time.
        pad = int(3 * blur * _SUPERSAMPLE) + 1
        x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
        x1, y1 = min(self.w, box[2] + pad), min(self.w, box[3] + pad)
        patch = img.crop((x0, y0, x1, y1))
        if blur > 0:
            patch = patch.filter(ImageFilter.GaussianBlur(blur * _SUPERSAMPLE))
        out[y0:y1, x0:x1] = np.asarray(patch, dtype=np.float32) / 255.0
        return out

    def paint(self, mask: np.ndarray, colour: np.ndarray, texture: float = 0.0, cells: int = 24) -> None:
        """Blend colour (optionally textured) into the canvas where mask is set."""
        # Noise is drawn even for an empty mask so the random stream, hence every later shape, stays the same.
        grain = self.smooth_noise(cells) if texture else None
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return
        # Blending only the shape's bounding box is ~10x faster than the full canvas for small shapes.
        ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        field = np.asarray(colour, dtype=np.float32)[None, None, :]
        if grain is not None:
            field = field * (1.0 + texture * grain[ys, xs])[:, :, None]
        region = self.rgb[ys, xs]
        self.rgb[ys, xs] = region + (field - region) * mask[ys, xs, None]

    def to_image(self, size: int) -> Image.Image:
        """Downsample, soften and add sensor-like noise and a slight colour cast."""
        img = Image.fromarray(np.clip(self.rgb, 0, 255).astype(np.uint8), "RGB")
        img = img.resize((size, size), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(0.4))
        arr = np.asarray(img, dtype=np.float32) * (1.0 + self.rng.normal(0, 0.015, 3))[None, None, :]
        arr += self.rng.normal(0, 2.5, arr.shape)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _blob(
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float,
    rng: np.random.Generator,
    wobble: float = 0.05,
    dent: tuple[float, float] | None = None,
) -> list[tuple[float, float]]:
    """Irregular rotated ellipse as a polygon; dent=(direction, depth) pushes one side in (kidney shapes)."""
    theta = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        r += rng.normal(0, wobble / k) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    if dent is not None:
        direction, depth = dent
        gap = np.angle(np.exp(1j * (theta - direction)))  # signed angular distance, wrapped to [-pi, pi]
        r -= depth * np.exp(-(gap**2) / 0.35)
    x, y = rx * r * np.cos(theta), ry * r * np.sin(theta)
    ca, sa = math.cos(angle), math.sin(angle)
    return list(zip(cx + x * ca - y * sa, cy + x * sa + y * ca, strict=True))


def _draw(name: str, size: int, rng: np.random.Generator) -> Image.Image:
    w = size * _SUPERSAMPLE
    canvas = _Canvas(w, rng)
    centre = w / 2 + rng.uniform(-0.07, 0.07, 2) * w
    cell_r = w * rng.uniform(*_RADIUS.get(name, (0.2, 0.2)))
    _red_cells(canvas, centre, cell_r if name != "platelet" else 0.0)
    if name == "platelet":
        _platelets(canvas, centre)
    else:
        _white_cell(canvas, name, centre, cell_r)
    image = canvas.to_image(size)
    # Free orientation: cells have no "up", and flips double the variety for free.
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.rotate(90 * int(rng.integers(4)))


def _red_cells(canvas: _Canvas, centre: np.ndarray, keep_clear: float) -> None:
    rng, w = canvas.rng, canvas.w
    for _ in range(int(rng.integers(4, 9))):
        r = w * rng.uniform(0.13, 0.17)
        for _try in range(10):  # prefer spots not hidden under the white cell, as in a good smear field
            pos = rng.uniform(-0.1, 1.1, 2) * w
            if np.hypot(*(pos - centre)) > keep_clear + 0.5 * r:
                break
        angle = rng.uniform(0, math.pi)
        body = _blob(pos[0], pos[1], r, r * rng.uniform(0.88, 1.0), angle, rng, wobble=0.03)
        canvas.paint(canvas.mask([body], blur=0.6), _RBC + rng.normal(0, 6, 3), texture=0.03)
        pallor = _blob(pos[0], pos[1], 0.5 * r, 0.45 * r, angle, rng, wobble=0.08)
        canvas.paint(0.8 * canvas.mask([pallor], blur=1.5), _RBC_PALLOR)


def _white_cell(canvas: _Canvas, name: str, centre: np.ndarray, radius: float) -> None:
    rng = canvas.rng
    cx, cy = centre
    outline = _blob(cx, cy, radius, radius * rng.uniform(0.9, 1.0), rng.uniform(0, math.pi), rng, wobble=0.05)
    cyto = canvas.mask([outline], blur=0.7)
    canvas.paint(cyto, _CYTOPLASM[name] + rng.normal(0, 5, 3), texture=0.04)
    if name == "neutrophil":
        _granules(canvas, centre, radius, count=90, size=0.035, colour=np.array([196.0, 150.0, 196.0]), alpha=0.5)
    elif name == "eosinophil":
        _granules(canvas, centre, radius, count=160, size=0.06, colour=np.array([226.0, 112.0, 62.0]), alpha=0.85)
    elif name == "monocyte":
        for _ in range(int(rng.integers(2, 6))):
            pos = centre + rng.uniform(-0.6, 0.6, 2) * radius
            r = radius * rng.uniform(0.04, 0.08)
            canvas.paint(0.6 * canvas.mask([_blob(pos[0], pos[1], r, r, 0.0, rng)], blur=0.3), np.full(3, 236.0))
    polygons, lines = _nucleus_shape(name, centre, radius, rng)
    colour = _NUCLEUS + rng.normal(0, 8, 3) + (np.array([30.0, 30.0, 25.0]) if name == "monocyte" else 0.0)
    canvas.paint(canvas.mask(polygons, lines, blur=0.5), colour, texture=0.12, cells=int(radius / 3) + 4)


def _nucleus_shape(
    name: str, centre: np.ndarray, radius: float, rng: np.random.Generator
) -> tuple[list[list[tuple[float, float]]], list[tuple]]:
    """Polygons and connecting strands of the nucleus; the shape is what tells the classes apart."""
    cx, cy = centre
    turn = rng.uniform(0, 2 * math.pi)
    if name == "lymphocyte":
        off = rng.uniform(-0.08, 0.08, 2) * radius
        return [_blob(cx + off[0], cy + off[1], 0.8 * radius, 0.76 * radius, turn, rng, wobble=0.04)], []
    if name == "monocyte":
        return [_blob(cx, cy, 0.64 * radius, 0.5 * radius, turn, rng, wobble=0.06, dent=(math.pi / 2, 0.4))], []
    # Segmented nuclei: lobes along an arc, joined by thin chromatin strands.
    lobes = 2 if name == "eosinophil" else int(rng.integers(3, 6))
    span = math.pi * (0.9 if lobes == 2 else rng.uniform(1.0, 1.4))
    arc = radius * (0.42 if lobes == 2 else 0.46)
    lobe_r = radius * (0.32 if lobes == 2 else 0.27)
    angles = [turn + span * (j / (lobes - 1) - 0.5) + rng.normal(0, 0.1) for j in range(lobes)]
    centres = [(cx + arc * math.cos(a), cy + arc * math.sin(a)) for a in angles]
    # Lobes elongated along the arc read as a segmented nucleus rather than beads on a string.
    polygons = [
        _blob(x, y, lobe_r, lobe_r * 0.72, a + math.pi / 2, rng, wobble=0.12)
        for (x, y), a in zip(centres, angles, strict=True)
    ]
    lines = [(centres, 0.12 * radius)]
    return polygons, lines


def _granules(
    canvas: _Canvas, centre: np.ndarray, radius: float, count: int, size: float, colour: np.ndarray, alpha: float
) -> None:
    rng = canvas.rng
    angle = rng.uniform(0, 2 * math.pi, count)
    dist = radius * 0.92 * np.sqrt(rng.uniform(0, 1, count))
    r = radius * size * rng.uniform(0.7, 1.3, count)
    polys = [
        _blob(centre[0] + d * math.cos(a), centre[1] + d * math.sin(a), s, s, 0.0, rng, wobble=0.0)
        for a, d, s in zip(angle, dist, r, strict=True)
    ]
    canvas.paint(alpha * canvas.mask(polys, blur=0.25), colour, texture=0.08)


def _platelets(canvas: _Canvas, centre: np.ndarray) -> None:
    rng, w = canvas.rng, canvas.w
    for _ in range(int(rng.integers(3, 9))):
        pos = centre + rng.normal(0, 0.1, 2) * w
        r = w * rng.uniform(0.025, 0.055)
        body = _blob(pos[0], pos[1], r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi), rng, wobble=0.25)
        canvas.paint(canvas.mask([body], blur=0.4), _PLATELET + rng.normal(0, 10, 3), texture=0.2, cells=16)
