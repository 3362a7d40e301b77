"""Value types of the import step: config, accepted images, skipped files and the report shown to the user."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Stable reason codes for SkippedFile.reason; the UI and the database may key on them, so never rename one.
NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt"
TOO_LARGE = "too_large"
TOO_SMALL = "too_small"
DUPLICATE = "duplicate"
UNSUPPORTED_EXTENSION = "unsupported_extension"
UNSAFE_PATH = "unsafe_path"
HIDDEN_FILE = "hidden_file"
READ_ERROR = "read_error"
FILE_TOO_BIG = "file_too_big"
NO_CLASS_FOLDER = "no_class_folder"  # an image lying next to the class folders instead of inside one
TOO_COMPRESSED = "too_compressed"  # a zip entry that unpacks far beyond what any image compresses (a zip bomb)

REASONS = (
    NOT_AN_IMAGE,
    CORRUPT,
    TOO_LARGE,
    TOO_SMALL,
    DUPLICATE,
    UNSUPPORTED_EXTENSION,
    UNSAFE_PATH,
    HIDDEN_FILE,
    READ_ERROR,
    FILE_TOO_BIG,
    NO_CLASS_FOLDER,
    TOO_COMPRESSED,
)


class IngestError(ValueError):
    """The source as a whole cannot be imported; the message says why in plain words."""


@dataclass(frozen=True)
class IngestConfig:
    """Limits applied to every file of a labelled source."""

    max_side: int = 4096  # images with a longer side are skipped as "too_large" (checked before decoding pixels)
    min_side: int = 8  # images with a shorter side are skipped as "too_small"
    max_file_bytes: int = 50 * 2**20  # files (or zip entries, uncompressed) above this are skipped as "file_too_big"
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")  # lower-case, with the dot
    # A zip's images may unpack to at most this much in total; checked from the zip directory before unpacking.
    max_archive_bytes: int = 8 * 2**30
    # Unpacked size / packed size above which a zip entry (over 1 MiB), or a whole zip (over 64 MiB), is refused
    # without unpacking: photos and even flat BMPs of cells stay far below it, zeros reach about 1000.
    max_compression_ratio: float = 100.0

    def __post_init__(self) -> None:
        if self.min_side < 1 or self.max_side < self.min_side:
            raise ValueError(f"need 1 <= min_side <= max_side, got min_side={self.min_side} max_side={self.max_side}")
        if self.max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be positive, got {self.max_file_bytes}")
        if self.max_archive_bytes < 1:
            raise ValueError(f"max_archive_bytes must be positive, got {self.max_archive_bytes}")
        if not self.max_compression_ratio >= 1:  # also refuses NaN
            raise ValueError(f"max_compression_ratio must be at least 1, got {self.max_compression_ratio}")


@dataclass(frozen=True)
class IngestedImage:
    """One accepted image, ready to be stored."""

    class_name: str  # class folder name in Unicode NFC with surrounding whitespace stripped (case kept)
    source: str  # posix path relative to the source root, or "archive.zip!path/in/zip"
    sha256: str  # hex sha256 of the original file bytes (provenance and duplicate detection)
    content: bytes  # bytes to store: the original file if it was 8-bit RGB JPEG/PNG, else a PNG re-encode
    extension: str  # ".jpg" or ".png", matching content
    width: int  # pixels, after EXIF orientation was applied
    height: int  # pixels, after EXIF orientation was applied
    note: str | None = None  # what was changed on the way in, e.g. "converted from RGBA to RGB (...)"; None if nothing


@dataclass(frozen=True)
class SkippedFile:
    """One file that was not imported, with a stable reason code and a plain-words message."""

    source: str  # same naming as IngestedImage.source
    reason: str  # one of REASONS
    message: str  # what is wrong and what to do about it


@dataclass
class IngestReport:
    """What an import found: per-class counts, skipped files and conversions."""

    classes: dict[str, int] = field(default_factory=dict)  # accepted images per class, empty classes included as 0
    empty_classes: list[str] = field(default_factory=list)  # class folders with no usable image
    skipped: list[SkippedFile] = field(default_factory=list)  # every file not imported, in scan order
    converted: list[tuple[str, str]] = field(default_factory=list)  # (source, note) for each changed image

    @property
    def total(self) -> int:
        """Number of accepted images over all classes."""
        return sum(self.classes.values())

    def skipped_by_reason(self) -> dict[str, int]:
        """Count of skipped files per reason code, most frequent first."""
        return dict(Counter(s.reason for s in self.skipped).most_common())

    def summary(self) -> str:
        """A few plain lines for the user: what was imported, what was skipped and why."""
        per_class = ", ".join(f"{name} {n:,}" for name, n in self.classes.items())
        lines = [f"Imported {_count(self.total, 'image')} in {_count(len(self.classes), 'class')} ({per_class})."]
        if self.empty_classes:
            lines.append(f"No usable images in: {', '.join(self.empty_classes)}.")
        if self.skipped:
            reasons = ", ".join(f"{n:,} {reason}" for reason, n in self.skipped_by_reason().items())
            lines.append(f"Skipped {_count(len(self.skipped), 'file')}: {reasons}.")
            # Show a few concrete examples so the user knows where to look without reading the full list.
            for s in self.skipped[:5]:
                lines.append(f"  - {s.source}: {s.message}")
            if len(self.skipped) > 5:
                lines.append(f"  - ... and {len(self.skipped) - 5:,} more")
        if self.converted:
            kinds = Counter(note for _, note in self.converted).most_common(3)
            examples = "; ".join(f"{n:,}x {note}" for note, n in kinds)
            lines.append(f"Converted {_count(len(self.converted), 'image')}: {examples}.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for storing next to the dataset version)."""
        return {
            "classes": dict(self.classes),
            "empty_classes": list(self.empty_classes),
            "skipped": [{"source": s.source, "reason": s.reason, "message": s.message} for s in self.skipped],
            "converted": [{"source": src, "note": note} for src, note in self.converted],
            "total": self.total,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngestReport:
        """Inverse of to_dict."""
        return cls(
            classes=dict(data["classes"]),
            empty_classes=list(data["empty_classes"]),
            skipped=[SkippedFile(s["source"], s["reason"], s["message"]) for s in data["skipped"]],
            converted=[(c["source"], c["note"]) for c in data["converted"]],
        )


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n:,} {noun if n == 1 else plural}"
