"""List the files of a folder or .zip source safely, without extracting anything, and read them into memory."""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wbc_core.data.records import (
    CORRUPT,
    DUPLICATE,
    FILE_TOO_BIG,
    HIDDEN_FILE,
    READ_ERROR,
    UNSAFE_PATH,
    IngestError,
    SkippedFile,
)

# Operating-system clutter that is never data, compared lower-case.
_CLUTTER = {
    "__macosx": "macOS metadata folder added when zipping; ignored with everything in it",
    ".ds_store": "macOS folder-settings file; ignored",
    "thumbs.db": "Windows thumbnail cache; ignored",
    "desktop.ini": "Windows folder-settings file; ignored",
    "$recycle.bin": "Windows recycle bin; ignored with everything in it",
    "system volume information": "Windows system folder; ignored with everything in it",
}
_DRIVE = re.compile(r"^[A-Za-z]:")
_S_IFLNK = 0o120000


def hidden_reason(name: str) -> str | None:
    """Plain-words reason why a file or folder name is hidden/system clutter, or None for a normal name."""
    lower = name.lower()
    if lower in _CLUTTER:
        return _CLUTTER[lower]
    if name.startswith("._"):
        return "macOS metadata file (AppleDouble '._' file), not an image; ignored"
    if name.startswith("."):
        return "hidden file or folder (name starts with '.'); ignored. Rename it without the dot to import it"
    return None


class ReadFailure(Exception):
    """Reading one entry failed; carries the skip reason code and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Entry:
    """One regular file of a source."""

    parts: tuple[str, ...]  # path components below the source root
    source: str  # the name used in reports
    size: int  # size in bytes as the file system or zip directory declares it
    ref: object  # Path (folder source) or zipfile.ZipInfo (zip source)
    packed: int | None = None  # compressed size a zip directory declares; None for a folder's files


@dataclass
class Listing:
    """Everything found in a source before any file is read."""

    label: str  # how messages name the source
    files: list[Entry] = field(default_factory=list)  # regular files, in scan order
    dirs: set[tuple[str, ...]] = field(default_factory=set)  # every folder below the root, implied ones included
    skipped: list[SkippedFile] = field(default_factory=list)  # hidden, unsafe or unreadable items met while listing
    read: Callable[[Entry, int], bytes] = lambda entry, limit: b""  # (entry, max bytes) -> content
    close: Callable[[], None] = lambda: None  # release the open archive, if any


def open_source(source: Path) -> Listing:
    """List a folder or a .zip; raise IngestError when the path itself is unusable."""
    if not source.exists():
        raise IngestError(f"{source} does not exist; check the path (it must be a folder or a .zip file)")
    if source.is_dir():
        return _list_folder(source)
    if zipfile.is_zipfile(source):
        return _list_zip(source)
    if source.suffix.lower() == ".zip":
        raise IngestError(f"{source} is not a valid .zip archive (damaged or incomplete download?); create it again")
    raise IngestError(
        f"{source} is a file, not a folder or a .zip archive; point to a folder with one subfolder per class "
        "(or a .zip of such a folder)"
    )


def _read_capped(read: Callable[[int], bytes], limit: int, size_hint: str) -> bytes:
    data = read(limit + 1)
    if len(data) > limit:
        # The declared size can lie (zip bombs, growing files), so the cap is enforced on the bytes actually read.
        raise ReadFailure(FILE_TOO_BIG, f"{size_hint} is larger than the {limit / 2**20:.0f} MiB limit; skipped")
    return data


def _list_folder(root: Path) -> Listing:
    root_real = Path(os.path.realpath(root))
    listing = Listing(label=str(root))
    visited = {root_real}

    def walk(real_dir: Path, parts: tuple[str, ...]) -> None:
        try:
            with os.scandir(real_dir) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            name = "/".join(parts) + "/"
            listing.skipped.append(SkippedFile(name, READ_ERROR, f"could not open this folder ({exc.strerror})"))
            return
        for item in items:
            here = parts + (item.name,)
            name = "/".join(here)
            hidden = hidden_reason(item.name)
            if hidden:
                is_dir = item.is_dir(follow_symlinks=False)
                listing.skipped.append(SkippedFile(name + ("/" if is_dir else ""), HIDDEN_FILE, hidden))
                continue
            target = Path(item.path)
            if item.is_symlink():
                target = Path(os.path.realpath(item.path))
                # A link out of the chosen folder could pull arbitrary files of this machine into the dataset.
                if not target.is_relative_to(root_real):
                    listing.skipped.append(
                        SkippedFile(name, UNSAFE_PATH, "is a link to a place outside the imported folder; not followed")
                    )
                    continue
            try:
                st = os.stat(target)
            except OSError as exc:
                listing.skipped.append(SkippedFile(name, READ_ERROR, f"could not be read ({exc.strerror})"))
                continue
            if stat.S_ISDIR(st.st_mode):
                real = Path(os.path.realpath(target))
                if real in visited:
                    msg = "links to a folder that is already being imported; not followed"
                    listing.skipped.append(SkippedFile(name, UNSAFE_PATH, msg))
                    continue
                visited.add(real)
                listing.dirs.add(here)
                walk(real, here)
            elif stat.S_ISREG(st.st_mode):
                listing.files.append(Entry(here, name, st.st_size, target))
            else:  # reading a FIFO or device would block or never end
                listing.skipped.append(SkippedFile(name, READ_ERROR, "is not a regular file; ignored"))

    walk(root_real, ())

    def read(entry: Entry, limit: int) -> bytes:
        path = entry.ref
        assert isinstance(path, Path)
        try:
            with open(path, "rb") as f:
                return _read_capped(f.read, limit, "the file")
        except OSError as exc:
            raise ReadFailure(READ_ERROR, f"could not be read ({exc.strerror or exc}); check its permissions") from exc

    listing.read = read
    return listing


def _zip_parts(raw: str) -> tuple[tuple[str, ...], str | None]:
    """Normalised path components of a zip entry name, or a problem that makes it unsafe."""
    if any(ord(c) < 32 for c in raw):
        return (), "has control characters in its name"
    # Windows tools sometimes write backslashes; treat them as separators so "..\\x" cannot slip through.
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        return (), "has an absolute path"
    if _DRIVE.match(name):
        return (), "has a drive letter in its path"
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        return (), "has '..' in its path, which could write outside the destination"
    return parts, None


def _list_zip(path: Path) -> Listing:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise IngestError(f"{path} could not be opened as a .zip archive ({exc}); create it again") from exc
    listing = Listing(label=str(path), close=zf.close)
    prefix = path.name + "!"
    seen: set[tuple[str, ...]] = set()
    hidden_seen: set[tuple[str, ...]] = set()
    for info in zf.infolist():
        parts, problem = _zip_parts(info.filename)
        if problem:
            msg = f"{problem}; never extracted. The archive may be malicious or made by a faulty tool"
            listing.skipped.append(SkippedFile(prefix + info.filename, UNSAFE_PATH, msg))
            continue
        if not parts:
            continue
        hidden_at = next((i for i, p in enumerate(parts) if hidden_reason(p)), None)
        if hidden_at is not None:
            # Report a hidden folder (e.g. __MACOSX/) once, not once per file inside it.
            key = parts[: hidden_at + 1]
            if key not in hidden_seen:
                hidden_seen.add(key)
                is_dir = hidden_at < len(parts) - 1 or info.is_dir()
                name = prefix + "/".join(key) + ("/" if is_dir else "")
                listing.skipped.append(SkippedFile(name, HIDDEN_FILE, hidden_reason(parts[hidden_at]) or ""))
            continue
        source = prefix + "/".join(parts)
        for i in range(1, len(parts)):
            listing.dirs.add(parts[:i])
        if info.is_dir():
            listing.dirs.add(parts)
            continue
        if (info.external_attr >> 16) & 0o170000 == _S_IFLNK:
            msg = "is a symbolic link inside the archive; links are never followed"
            listing.skipped.append(SkippedFile(source, UNSAFE_PATH, msg))
            continue
        if parts in seen:
            msg = "the archive holds this path more than once; kept the first copy"
            listing.skipped.append(SkippedFile(source, DUPLICATE, msg))
            continue
        seen.add(parts)
        listing.files.append(Entry(parts, source, info.file_size, info, packed=info.compress_size))

    def read(entry: Entry, limit: int) -> bytes:
        info = entry.ref
        assert isinstance(info, zipfile.ZipInfo)
        if info.flag_bits & 0x1:
            raise ReadFailure(READ_ERROR, "is password-protected; make the archive without a password")
        try:
            with zf.open(info) as f:
                return _read_capped(f.read, limit, "the unpacked file")
        except ReadFailure:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ReadFailure(CORRUPT, f"is damaged inside the archive ({exc}); create the .zip again") from exc
        except NotImplementedError as exc:
            raise ReadFailure(READ_ERROR, f"uses an unsupported zip compression ({exc}); re-zip it") from exc
        except (OSError, RuntimeError, ValueError) as exc:
            raise ReadFailure(READ_ERROR, f"could not be read from the archive ({exc})") from exc

    listing.read = read
    return listing
