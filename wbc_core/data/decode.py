"""Decode one image file from bytes, check it, and bring it to 8-bit RGB with a precise note of what changed."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from wbc_core.data.records import CORRUPT, NOT_AN_IMAGE, TOO_LARGE, TOO_SMALL, IngestConfig

# Decoders Pillow may try. Restricting them keeps exotic parsers away from untrusted bytes; WEBP and GIF are here only
# so that a misnamed file gets imported instead of being called "not an image".
_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")  # JPEG includes MPO (multi-picture JPEG)
# Formats whose original bytes are stored unchanged when the pixels are already plain 8-bit RGB.
_KEEP_AS_IS = {"JPEG": ".jpg", "PNG": ".png"}
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class Decoded:
    """An image that passed every check."""

    content: bytes  # original bytes, or a PNG re-encode when anything had to change
    extension: str  # ".jpg" or ".png"
    width: int  # pixels, upright
    height: int  # pixels, upright
    note: str | None  # "; "-joined list of changes, None when the original bytes are kept


@dataclass(frozen=True)
class Rejected:
    """An image that failed a check."""

    reason: str  # reason code from records
    message: str  # plain words: what is wrong, what to do


class _UnsupportedMode(Exception):
    pass


def decode_image(data: bytes, config: IngestConfig) -> Decoded | Rejected:
    """Validate image bytes and return storable 8-bit RGB content, or why it was rejected."""
    if not data:
        return Rejected(NOT_AN_IMAGE, "the file is empty (0 bytes); remove it or copy it again from the original")
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; as an error it becomes a clean "too_large".
    # catch_warnings is process-global, not per-thread; the worst a concurrent thread can see is that one warning
    # type raised as an error for a moment. Truncated files are only caught while ImageFile.LOAD_TRUNCATED_IMAGES
    # stays False (Pillow's default): nothing in wbc_core may set it.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode(data, config)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return Rejected(TOO_LARGE, f"{exc} Downscale the image before importing it.")
        except MemoryError:
            return Rejected(TOO_LARGE, "not enough memory to decode this image; downscale it before importing it")


def _decode(data: bytes, config: IngestConfig) -> Decoded | Rejected:
    try:
        probe = Image.open(io.BytesIO(data), formats=_FORMATS)
    except UnidentifiedImageError:
        return Rejected(
            NOT_AN_IMAGE,
            "not a readable JPEG, PNG, BMP or TIFF image (probably another kind of file with an image name); "
            "remove it or export it again as an image",
        )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:  # Pillow raises many types on malformed headers (SyntaxError, struct.error, ...)
        return Rejected(CORRUPT, f"the image header is damaged ({_describe(exc)}); export the file again")
    fmt = probe.format or "unknown"
    width, height = probe.size
    # Size checks come before any pixel decoding so a huge image never gets allocated.
    if max(width, height) > config.max_side:
        return Rejected(
            TOO_LARGE,
            f"image is {width}x{height} pixels; the longest side allowed is {config.max_side}. "
            "Crop or downscale it to single cells before importing.",
        )
    if min(width, height) < config.min_side:
        return Rejected(
            TOO_SMALL,
            f"image is {width}x{height} pixels; the shortest side allowed is {config.min_side}. "
            "It is too small to show a cell; remove it.",
        )
    try:
        probe.verify()  # checksums and structure (PNG CRCs etc.); the object is unusable afterwards
        im = Image.open(io.BytesIO(data), formats=_FORMATS)
        im.load()  # the one full decode; catches truncated pixel data that verify() does not see
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:
        return Rejected(
            CORRUPT,
            f"the image data is damaged or truncated ({_describe(exc)}); copy or export it again from the original",
        )

    notes: list[str] = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        notes.append(f"multi-frame {fmt} ({frames} frames): kept the first frame only")
    im, turned = _upright(im)
    if turned:
        notes.append(turned)
    sixteen_bit = fmt == "PNG" and len(data) > 24 and data[24] == 16  # IHDR bit depth; Pillow hides it for RGB(A)
    try:
        rgb, converted = _to_rgb(im, sixteen_bit)
    except _UnsupportedMode:
        return Rejected(NOT_AN_IMAGE, f"pixel format {im.mode!r} is not supported; convert the image to 8-bit RGB")
    if converted:
        notes.append(converted)

    if not notes and fmt in _KEEP_AS_IS:
        return Decoded(data, _KEEP_AS_IS[fmt], rgb.width, rgb.height, None)
    if fmt != "PNG":
        # PNG, because a re-encode must not add JPEG loss on top of whatever was done to the pixels.
        notes.append(f"stored as PNG (was {fmt})")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return Decoded(buf.getvalue(), ".png", rgb.width, rgb.height, "; ".join(notes))


def _upright(im: Image.Image) -> tuple[Image.Image, str | None]:
    """Apply EXIF orientation; return the image and a note if it changed."""
    try:
        orientation = int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a malformed EXIF block should not cost the image; treat it as "no orientation"
        return im, None
    if orientation not in range(2, 9):
        return im, None
    return ImageOps.exif_transpose(im), f"rotated/flipped upright using EXIF orientation {orientation}"


def _to_rgb(im: Image.Image, sixteen_bit: bool) -> tuple[Image.Image, str | None]:
    """Convert any supported mode to 8-bit RGB; return (image, note or None when nothing changed)."""
    mode = im.mode
    has_key = "transparency" in im.info  # PNG tRNS colour key (L, RGB) or transparent palette entries (P)
    depth = "16-bit " if sixteen_bit else ""
    if mode == "RGB" and not has_key:
        # Pillow already reduced 16-bit RGB to the high byte of each sample, which is a scale, not a clip.
        return im, ("converted from 16-bit RGB to 8-bit RGB (scaled 0-65535 to 0-255)" if sixteen_bit else None)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        label = {"RGBa": "RGBA (premultiplied)", "La": "LA (premultiplied)", "PA": "palette with alpha (PA)"}
        name = label.get(mode, "grayscale with alpha (LA)" if mode == "LA" else mode)
        return _on_white(im), f"converted from {depth}{name} to RGB (alpha composited on white)"
    if mode in ("RGB", "L", "P") and has_key:
        name = {"RGB": "RGB", "L": "8-bit grayscale (L)", "P": "palette (P)"}[mode]
        return _on_white(im), f"converted from {name} with transparency to RGB (transparent pixels set to white)"
    if mode == "P":
        if im.palette is not None and im.palette.mode == "RGBA":
            return _on_white(im), "converted from palette with alpha (P) to RGB (alpha composited on white)"
        return im.convert("RGB"), "converted from palette (P) to RGB"
    if mode == "L":
        return im.convert("RGB"), "converted from 8-bit grayscale (L) to RGB"
    if mode == "1":
        return im.convert("RGB"), "converted from 1-bit black-and-white to RGB"
    if mode.startswith("I;16"):
        gray = _scale_16bit(np.asarray(im))
        return _gray_to_rgb(gray), "converted from 16-bit grayscale to 8-bit RGB (scaled 0-65535 to 0-255)"
    if mode in ("I", "F"):
        return _wide_gray_to_rgb(np.asarray(im), mode)
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB"), f"converted from {mode} to RGB"
    raise _UnsupportedMode(mode)


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 linearly onto 0..255 with rounding (65535 -> 255, 32768 -> 128)."""
    v = values.astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.stack([gray] * 3, axis=-1)), mode="RGB")


def _wide_gray_to_rgb(values: np.ndarray, mode: str) -> tuple[Image.Image, str]:
    """32-bit int or float grayscale: the value range decides the scale, because the mode alone does not say it."""
    vmin = float(values.min()) if values.size else 0.0
    vmax = float(values.max()) if values.size else 0.0
    kind = "32-bit integer" if mode == "I" else "floating-point"
    if mode == "F" and vmin >= 0.0 and vmax <= 1.0:
        gray = np.rint(values * 255.0).astype(np.uint8)
        return _gray_to_rgb(gray), f"converted from {kind} grayscale 0-1 to 8-bit RGB (scaled to 0-255)"
    if vmin >= 0.0 and vmax <= 255.0:
        gray = np.rint(values).astype(np.uint8)
        return _gray_to_rgb(gray), f"converted from {kind} grayscale with values 0-255 to 8-bit RGB (values kept)"
    if mode == "I" and vmin >= 0.0 and vmax <= 65535.0:
        gray = _scale_16bit(values)
        return _gray_to_rgb(gray), f"converted from {kind} grayscale to 8-bit RGB (scaled 0-65535 to 0-255)"
    span = vmax - vmin if vmax > vmin else 1.0
    gray = np.rint((values.astype(np.float64) - vmin) * (255.0 / span)).astype(np.uint8)
    return _gray_to_rgb(gray), (
        f"converted from {kind} grayscale to 8-bit RGB (stretched its range {vmin:g}..{vmax:g} to 0-255)"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
