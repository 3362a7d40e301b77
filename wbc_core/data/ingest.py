"""Scan a labelled source (folder or .zip with one subfolder per class), validate every image, report the rest."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from wbc_core.data.decode import Rejected, decode_image
from wbc_core.data.records import (
    DUPLICATE,
    FILE_TOO_BIG,
    NO_CLASS_FOLDER,
    UNSAFE_PATH,
    UNSUPPORTED_EXTENSION,
    IngestConfig,
    IngestedImage,
    IngestError,
    IngestReport,
    SkippedFile,
)
from wbc_core.data.sources import Entry, Listing, ReadFailure, open_source

__all__ = ["IngestConfig", "IngestError", "IngestReport", "IngestedImage", "SkippedFile", "ingest", "ingest_stream"]

ProgressCallback = Callable[[int, int], None]
_PROGRESS_EVERY = 200  # files between progress calls: often enough for a progress bar, cheap for the caller


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
) -> tuple[IngestReport, Iterator[IngestedImage]]:
    """Like ingest, but yields images one by one (bounded memory); the report is complete once the stream ends."""
    listing = open_source(Path(source))
    try:
        # Layout problems (no class folders, ...) raise here, before the caller starts consuming.
        report = IngestReport(skipped=list(listing.skipped))
        extensions = tuple(e.lower() for e in config.extensions)
        prefix = _find_root(listing, extensions)
        classes = _class_folders(listing, prefix, extensions, report)
        work = _assign_files(listing, prefix, classes, extensions, report)
        report.classes = {name: 0 for name in classes}
        report.empty_classes = list(classes)  # shrinks as images arrive; final once the stream is exhausted
    except BaseException:
        listing.close()
        raise
    return report, _run(listing, report, work, config, extensions, progress)


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


def _class_folders(
    listing: Listing, prefix: tuple[str, ...], extensions: tuple[str, ...], report: IngestReport
) -> dict[str, list[tuple[str, ...]]]:
    """Class name -> folders holding it, sorted by class name; raises IngestError when there are none."""
    depth = len(prefix) + 1
    found: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for d in sorted(listing.dirs):
        if len(d) != depth or d[: len(prefix)] != prefix:
            continue
        name = d[-1].strip()
        if not name:
            msg = "a class folder needs a name; rename it to the class it holds"
            report.skipped.append(SkippedFile(_display(listing, d) + "/", UNSAFE_PATH, msg))
            continue
        # "Lymphocyte " and "Lymphocyte" would be the same class to any reader, so they are merged.
        found[name].append(d)
    if found:
        return {name: found[name] for name in sorted(found)}
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
    raise IngestError(f"expected one subfolder per class, found none in {where}{hint}")


def _display(listing: Listing, parts: tuple[str, ...]) -> str:
    name = "/".join(parts)
    return f"{Path(listing.label).name}!{name}" if listing.label.lower().endswith(".zip") else name


def _assign_files(
    listing: Listing,
    prefix: tuple[str, ...],
    classes: dict[str, list[tuple[str, ...]]],
    extensions: tuple[str, ...],
    report: IngestReport,
) -> list[tuple[str, Entry]]:
    """(class, entry) for every file inside a class folder, in class then path order; reports files outside."""
    owner = {d[-1]: name for name, dirs in classes.items() for d in dirs}
    depth = len(prefix) + 1
    per_class: dict[str, list[Entry]] = {name: [] for name in classes}
    for entry in listing.files:
        inside = entry.parts[: len(prefix)] == prefix and len(entry.parts) > depth
        class_name = owner.get(entry.parts[depth - 1]) if inside else None
        if class_name is not None:
            # Nested folders inside a class folder (e.g. lymphocyte/batch1/x.jpg) belong to that class.
            per_class[class_name].append(entry)
        elif _is_image_name(entry.parts[-1], extensions):
            msg = "this image is not inside a class folder, so its class is unknown; move it into its class folder"
            report.skipped.append(SkippedFile(entry.source, NO_CLASS_FOLDER, msg))
        else:
            suffix = PurePosixPath(entry.parts[-1]).suffix.lower()
            msg = _not_an_image_name(suffix, extensions)
            report.skipped.append(SkippedFile(entry.source, UNSUPPORTED_EXTENSION, msg))
    return [(name, e) for name in classes for e in sorted(per_class[name], key=lambda e: e.parts)]
