"""Checkpoint files: atomic writes, format checks and discovery under a run folder."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wbc_core.diskspace import DiskFull, ensure_free, is_disk_full, payload_bytes

CHECKPOINT_FORMAT = "wbc-gan"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
REQUIRED_KEYS = ("config", "class_names", "step", "generator", "generator_ema", "discriminator")
# A "light" checkpoint keeps only what sampling and grids need: ~1/7 of a full one at the default width.
LIGHT_KEYS = ("config", "class_names", "step", "generator_ema")
# Kept too when a checkpoint is lightened, where present: its metrics and what it was fine-tuned from (gan_finetune).
DESCRIBING_KEYS = ("metrics", "finetune")


def checkpoint_dir(out_dir: Path) -> Path:
    """Folder holding a run's checkpoints."""
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: Path, step: int) -> Path:
    """Path of the checkpoint for step under out_dir."""
    return checkpoint_dir(out_dir) / f"step_{step:06d}.pt"


def write_atomic(path: Path, write: Callable[[Path], None], expected_bytes: int = 0) -> Path:
    """Call write(tmp) on a temp file beside path, then rename it over path, so readers never see half a file.

    With expected_bytes, the free space is checked first; a disk that fills during the write raises DiskFull
    (plain words, how much is needed and free) after the half-written temp file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if expected_bytes:
            ensure_free(path.parent, expected_bytes)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    except DiskFull:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(path.parent, expected_bytes) from exc
        raise
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; other readers (the app, a backup) need to read them
        os.replace(tmp, path)
    except BaseException as exc:
        full = is_disk_full(exc, path.parent)  # asked before the temp file goes, while the disk is still full
        # Removed first, so that the space is free again and the database can still record the failure.
        Path(tmp).unlink(missing_ok=True)
        if full and not isinstance(exc, DiskFull):
            raise DiskFull(path.parent, expected_bytes) from exc
        raise
    return path


def save_checkpoint(payload: dict[str, Any], path: Path) -> Path:
    """Atomically torch.save a checkpoint dict (format tag added here); DiskFull when it cannot fit."""
    data = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    return write_atomic(path, lambda tmp: torch.save(data, tmp), expected_bytes=payload_bytes(data))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a wbc-gan checkpoint; raise ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GAN checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(damaged_message("GAN", path, "it is empty (0 bytes)"))
    try:
        # Our checkpoints hold only tensors, dicts, lists, tuples and scalars, so the safe loader suffices;
        # a file that needs arbitrary unpickling is by definition not one of ours and is never executed.
        data = torch.load(path, map_location=map_location, weights_only=True)
    except EOFError as exc:
        raise ValueError(damaged_message("GAN", path, "it ends too early")) from exc
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, AttributeError, IndexError) as exc:
        detail = first_line(exc)
        if "failed finding central directory" in detail or "failed reading" in detail:  # a cut-off torch zip
            raise ValueError(damaged_message("GAN", path, "it is cut off")) from exc
        raise ValueError(f"{path} is not a wbc-gan checkpoint (unreadable: {detail})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a wbc-gan checkpoint (no format={CHECKPOINT_FORMAT!r} tag)")
    version = data.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is wbc-gan checkpoint version {version!r}; this code reads {CHECKPOINT_VERSION}")
    missing = [k for k in (LIGHT_KEYS if data.get("light") else REQUIRED_KEYS) if k not in data]
    if missing:
        raise ValueError(f"{path} is a damaged wbc-gan checkpoint: missing {', '.join(missing)}")
    return data


def damaged_message(kind: str, path: Path, what: str) -> str:
    """The plain message for an empty or cut-off checkpoint file (a full disk or a killed writer leaves those)."""
    return (f"the {kind} checkpoint file {path} is empty or damaged ({what}), probably because the disk was full "
            "or the run was killed while writing it; use an earlier checkpoint of the run, or train again")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold NaN or infinite values."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def is_full(data: dict[str, Any]) -> bool:
    """True for a checkpoint that can resume training (D, optimisers, RNG), False for a light one."""
    return not data.get("light")


def lighten_checkpoint(path: Path) -> Path:
    """Rewrite a full checkpoint in place as a light one: EMA generator, config, classes, step and metrics."""
    data = load_checkpoint(path)
    if not is_full(data):
        return Path(path)
    light = {k: data[k] for k in (*LIGHT_KEYS, *DESCRIBING_KEYS) if k in data}
    return save_checkpoint({**light, "light": True}, path)


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) for every step_NNNNNN.pt under out_dir/checkpoints, sorted by step."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_FILE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The highest-step checkpoint under out_dir/checkpoints (full or light), or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def latest_full_checkpoint(out_dir: Path) -> Path | None:
    """The highest-step checkpoint that can resume training, or None."""
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            if is_full(load_checkpoint(path)):
                return path
        except ValueError:  # a damaged file is skipped; an older full one may still resume the run
            continue
    return None
