"""Scan a labelled source (folder or .zip with one subfolder per class), validate every image, report the rest."""

from __future__ import annotations

import hashlib
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from wbc_core.data.decode import Rejected, decode_image
from wbc_core.data.records import (
    DUPLICATE,
    FILE_TOO_BIG,
    HIDDEN_FILE,
    NO_CLASS_FOLDER,
    TOO_COMPRESSED,
    UNSAFE_PATH,
    UNSUPPORTED_EXTENSION,
    IngestConfig,
    IngestedImage,
    IngestError,
    IngestReport,
    SkippedFile,
)
from wbc_core.data.sources import Entry, Listing, ReadFailure, hidden_reason, open_source

__all__ = [
    "ImageStream",
    "IngestConfig",
    "IngestError",
    "IngestReport",
    "IngestedImage",
    "SkippedFile",
    "ingest",
    "ingest_stream",
]

ProgressCallback = Callable[[int, int], None]
_PROGRESS_EVERY = 200  # files between progress calls: often enough for a progress bar, cheap for the caller
_RATIO_ENTRY_FLOOR = 2**20  # smaller zip entries cost nothing to unpack, whatever their compression ratio
_RATIO_ARCHIVE_FLOOR = 64 * 2**20  # below this, a whole zip unpacks in a fraction of a second


class ImageStream(Iterator[IngestedImage]):
    """The accepted images of a source, one at a time; what it will read is known before the first one."""

    def __init__(self, images: Iterator[IngestedImage], files: int, bytes_to_read: int) -> None:
        self._images = images
        self.files = files  # files that will be read and decoded (image names inside class folders)
        self.bytes_to_read = bytes_to_read  # their declared sizes (unpacked, for a zip): what storing them takes

    def __next__(self) -> IngestedImage:
        return next(self._images)

    def close(self) -> None:
        """Stop early and release the source (an open zip)."""
        close = getattr(self._images, "close", None)
        if close is not None:
            close()


def ingest(
    source: Path,
    config: IngestConfig = IngestConfig(),
    progress: ProgressCallback | None = None,
) -> tuple[list[IngestedImage], IngestReport]:
    """Read every image of a labelled folder or .zip; return the accepted images and a report of the rest."""
    report, stream = ingest_stream(source, config, progress)
    images = list(stream)
    return images, report


def ingest_stream(
    source: Path,
    config: IngestConfig = IngestConfig(),
    progress: ProgressCallback | None = None,
) -> tuple[IngestReport, ImageStream]:
    """Like ingest, but yields images one by one (bounded memory); the report is complete once the stream ends."""
    listing = open_source(Path(source))
    try:
        # Layout problems (no class folders, a zip bomb, ...) raise here, before the caller starts consuming.
        report = IngestReport(skipped=list(listing.skipped))
        extensions = tuple(e.lower() for e in config.extensions)
        prefix = _find_root(listing, extensions)
        classes, refused = _class_folders(listing, prefix, extensions, report)
        work = _assign_files(listing, prefix, classes, refused, extensions, report)
        to_read = [e for _, e in work if _is_image_name(e.parts[-1], extensions) and e.size <= config.max_file_bytes]
        _check_archive(listing, to_read, config)
        report.classes = {name: 0 for name in classes}
        report.empty_classes = list(classes)  # shrinks as images arrive; final once the stream is exhausted
    except BaseException:
        listing.close()
        raise
    images = _run(listing, report, work, config, extensions, progress)
    return report, ImageStream(images, len(to_read), sum(e.size for e in to_read))


def _check_archive(listing: Listing, to_read: list[Entry], config: IngestConfig) -> None:
    """Refuse a zip whose images would unpack to too much in total, or at a ratio no image reaches.

    Everything here comes from the zip directory, so a zip bomb is refused before a single byte is inflated.
    """
    packed = [e for e in to_read if e.packed is not None]
    if not packed:
        return
    unpacked = sum(e.size for e in packed)
    compressed = sum(max(e.packed or 0, 1) for e in packed)
    where = Path(listing.label).name
    ratio = unpacked / compressed
    if unpacked > _RATIO_ARCHIVE_FLOOR and ratio > config.max_compression_ratio:
        raise IngestError(
            f"{where} would unpack {_gib(compressed)} into {_gib(unpacked)} ({ratio:,.0f} times its packed size, "
            f"above the {config.max_compression_ratio:,.0f} limit); no real image compresses that well, so this "
            "looks like a zip bomb and nothing was unpacked. Check where the archive came from"
        )
    if unpacked > config.max_archive_bytes:
        raise IngestError(
            f"{where} would unpack to {_gib(unpacked)} of images, above the {_gib(config.max_archive_bytes)} limit "
            "for one import; nothing was unpacked. Split it into smaller archives, one import each"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _run(
    listing: Listing,
    report: IngestReport,
    work: list[tuple[str, Entry]],
    config: IngestConfig,
    extensions: tuple[str, ...],
    progress: ProgressCallback | None,
) -> Iterator[IngestedImage]:
    kept: dict[str, tuple[str, str]] = {}  # sha256 -> (class, source) of the accepted copy
    total = len(work)
    try:
        if progress:
            progress(0, total)
        for done, (class_name, entry) in enumerate(work, start=1):
            result = _ingest_one(class_name, entry, listing, config, extensions, kept)
            if isinstance(result, SkippedFile):
                report.skipped.append(result)
            else:
                report.classes[class_name] += 1
                if report.classes[class_name] == 1:
                    report.empty_classes.remove(class_name)
                kept[result.sha256] = (class_name, result.source)
                if result.note:
                    report.converted.append((result.source, result.note))
                yield result
            # A progress callback may raise (e.g. to cancel); that ends the stream and closes the source.
            if progress and (done % _PROGRESS_EVERY == 0 or done == total):
                progress(done, total)
    finally:
        listing.close()


def _ingest_one(
    class_name: str,
    entry: Entry,
    listing: Listing,
    config: IngestConfig,
    extensions: tuple[str, ...],
    kept: dict[str, tuple[str, str]],
) -> IngestedImage | SkippedFile:
    suffix = PurePosixPath(entry.parts[-1]).suffix.lower()
    if suffix not in extensions:
        return SkippedFile(entry.source, UNSUPPORTED_EXTENSION, _not_an_image_name(suffix, extensions))
    if entry.size > config.max_file_bytes:
        msg = f"is {entry.size / 2**20:.1f} MiB, above the {config.max_file_bytes / 2**20:.0f} MiB limit; skipped"
        return SkippedFile(entry.source, FILE_TOO_BIG, msg)
    if entry.packed is not None and entry.size > _RATIO_ENTRY_FLOOR:
        ratio = entry.size / max(entry.packed, 1)
        if ratio > config.max_compression_ratio:
            msg = (f"would unpack {entry.packed:,} bytes into {entry.size / 2**20:.1f} MiB ({ratio:,.0f} times; the "
                   f"limit is {config.max_compression_ratio:,.0f}); no real image compresses that well, so it was "
                   "not unpacked")
            return SkippedFile(entry.source, TOO_COMPRESSED, msg)
    try:
        data = listing.read(entry, config.max_file_bytes)
    except ReadFailure as exc:
        return SkippedFile(entry.source, exc.reason, exc.message)
    sha = hashlib.sha256(data).hexdigest()
    if sha in kept:
        # Checked before decoding: a copy costs a hash, not a decode. Only accepted files count as "kept", so a
        # second copy of a corrupt file is reported as corrupt, which is the more useful message.
        kept_class, kept_source = kept[sha]
        if kept_class == class_name:
            msg = f"identical to {kept_source}, which was kept; remove one of the copies"
        else:
            msg = (
                f"the same image is also in class '{kept_class}' ({kept_source}); the label conflicts "
                f"('{kept_class}' vs '{class_name}'). Kept the '{kept_class}' copy: check which label is right"
            )
        return SkippedFile(entry.source, DUPLICATE, msg)
    decoded = decode_image(data, config)
    if isinstance(decoded, Rejected):
        return SkippedFile(entry.source, decoded.reason, decoded.message)
    return IngestedImage(
        class_name=class_name,
        source=entry.source,
        sha256=sha,
        content=decoded.content,
        extension=decoded.extension,
        width=decoded.width,
        height=decoded.height,
        note=decoded.note,
    )


def _is_image_name(name: str, extensions: tuple[str, ...]) -> bool:
    return PurePosixPath(name).suffix.lower() in extensions


def _not_an_image_name(suffix: str, extensions: tuple[str, ...]) -> str:
    kind = f"'{suffix}' files" if suffix else "files without an extension"
    return f"{kind} are not imported (only {', '.join(extensions)}); ignored"


def _find_root(listing: Listing, extensions: tuple[str, ...]) -> tuple[str, ...]:
    """The folder that holds the class folders: the root, or its single subfolder when that is a wrapper."""
    top_dirs = sorted(d for d in listing.dirs if len(d) == 1)
    top_images = [f for f in listing.files if len(f.parts) == 1 and _is_image_name(f.parts[0], extensions)]
    if len(top_dirs) != 1 or top_images:
        return ()
    wrapper = top_dirs[0]
    has_subdirs = any(len(d) == 2 and d[0] == wrapper[0] for d in listing.dirs)
    direct_images = any(
        len(f.parts) == 2 and f.parts[0] == wrapper[0] and _is_image_name(f.parts[1], extensions) for f in listing.files
    )
    # "data.zip/cells/<class>/..." is common; a lone folder holding images itself is a single class instead.
    return wrapper if has_subdirs and not direct_images else ()


def class_name_problem(name: str) -> tuple[str, str] | None:
    """(reason, message) when a normalised class name cannot be a class (or a folder on disk), else None."""
    if not name:
        return UNSAFE_PATH, "a class folder needs a name; rename it to the class it holds"
    if name in (".", ".."):
        return UNSAFE_PATH, (f"'{name}' cannot be a class name (it means a folder itself, or the one above it); "
                             "rename the folder to the class it holds")
    if "/" in name or "\\" in name:
        return UNSAFE_PATH, "a class name cannot contain '/' or '\\'; rename the folder to the class it holds"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return UNSAFE_PATH, ("the folder name contains control or invisible characters; rename the folder to the "
                             "class it holds")
    hidden = hidden_reason(name)
    if hidden:
        return HIDDEN_FILE, hidden
    return None


def normalise_class_name(raw: str) -> str:
    """The class a folder name stands for: Unicode NFC (macOS zips spell 'é' as 'e' + accent), spaces stripped."""
    return unicodedata.normalize("NFC", raw).strip()


def _class_folders(
    listing: Listing, prefix: tuple[str, ...], extensions: tuple[str, ...], report: IngestReport
) -> tuple[dict[str, list[tuple[str, ...]]], dict[tuple[str, ...], tuple[str, str]]]:
    """Class name -> folders holding it, sorted by class name, and the refused folders with (reason, message).

    Raises IngestError when there is no class at all.
    """
    depth = len(prefix) + 1
    found: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    refused: dict[tuple[str, ...], tuple[str, str]] = {}
    for d in sorted(listing.dirs):
        if len(d) != depth or d[: len(prefix)] != prefix:
            continue
        # "Lymphocyte " and "Lymphocyte", or an NFC and an NFD "Lymphozytär", are the same class to any
        # reader, so they are merged; the name is checked after that, so " .." cannot become the class "..".
        name = normalise_class_name(d[-1])
        problem = class_name_problem(name)
        if problem:
            refused[d] = problem
            continue
        found[name].append(d)
    if found:
        return {name: found[name] for name in sorted(found)}, refused
    where = listing.label + ("/" + "/".join(prefix) if prefix else "")
    loose = [f for f in listing.files if len(f.parts) == depth and f.parts[: len(prefix)] == prefix]
    images = [f for f in loose if _is_image_name(f.parts[-1], extensions)]
    if images:
        raise IngestError(
            f"found {len(images)} images directly in {where} but no class subfolders; put each class's images in "
            f"its own subfolder named after the class (e.g. lymphocyte/{images[0].parts[-1]})"
        )
    zips = [f.parts[-1] for f in loose if f.parts[-1].lower().endswith(".zip")]
    hint = f" (it contains {zips[0]}: import that .zip itself)" if zips else ""
    if refused and not hint:
        d, (_, msg) = next(iter(refused.items()))
        hint = f" (the folder {d[-1]!r} cannot be a class: {msg})"
    raise IngestError(f"expected one subfolder per class, found none in {where}{hint}")


def _display(listing: Listing, parts: tuple[str, ...]) -> str:
    name = "/".join(parts)
    return f"{Path(listing.label).name}!{name}" if listing.label.lower().endswith(".zip") else name


def _assign_files(
    listing: Listing,
    prefix: tuple[str, ...],
    classes: dict[str, list[tuple[str, ...]]],
    refused: dict[tuple[str, ...], tuple[str, str]],
    extensions: tuple[str, ...],
    report: IngestReport,
) -> list[tuple[str, Entry]]:
    """(class, entry) for every file inside a class folder, in class then path order; reports files outside."""
    owner = {d[-1]: name for name, dirs in classes.items() for d in dirs}
    depth = len(prefix) + 1
    per_class: dict[str, list[Entry]] = {name: [] for name in classes}
    in_refused: dict[tuple[str, ...], int] = dict.fromkeys(refused, 0)
    for entry in listing.files:
        inside = entry.parts[: len(prefix)] == prefix and len(entry.parts) > depth
        class_name = owner.get(entry.parts[depth - 1]) if inside else None
        if inside and entry.parts[:depth] in in_refused:
            in_refused[entry.parts[:depth]] += 1  # reported once, with the folder
        elif class_name is not None:
            # Nested folders inside a class folder (e.g. lymphocyte/batch1/x.jpg) belong to that class.
            per_class[class_name].append(entry)
        elif _is_image_name(entry.parts[-1], extensions):
            msg = "this image is not inside a class folder, so its class is unknown; move it into its class folder"
            report.skipped.append(SkippedFile(entry.source, NO_CLASS_FOLDER, msg))
        else:
            suffix = PurePosixPath(entry.parts[-1]).suffix.lower()
            msg = _not_an_image_name(suffix, extensions)
            report.skipped.append(SkippedFile(entry.source, UNSUPPORTED_EXTENSION, msg))
    for d, (reason, msg) in refused.items():
        files = in_refused[d]
        tail = f"; {'its file was' if files == 1 else f'its {files:,} files were'} not imported" if files else ""
        report.skipped.append(SkippedFile(_display(listing, d) + "/", reason, msg + tail))
    return [(name, e) for name in classes for e in sorted(per_class[name], key=lambda e: e.parts)]
