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

CHECKPOINT_FORMAT = "wbc-gan"
CHECKPOINT_VERSION = 1
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
REQUIRED_KEYS = ("config", "class_names", "step", "generator", "generator_ema", "discriminator")
# A "light" checkpoint keeps only what sampling and grids need: ~1/7 of a full one at the default width.
LIGHT_KEYS = ("config", "class_names", "step", "generator_ema")


def checkpoint_dir(out_dir: Path) -> Path:
    """Folder holding a run's checkpoints."""
    return Path(out_dir) / "checkpoints"


def checkpoint_path(out_dir: Path, step: int) -> Path:
    """Path of the checkpoint for step under out_dir."""
    return checkpoint_dir(out_dir) / f"step_{step:06d}.pt"


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temp file beside path, then rename it over path, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; other readers (the app, a backup) need to read them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(payload: dict[str, Any], path: Path) -> Path:
    """Atomically torch.save a checkpoint dict (format tag added here)."""
    data = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    return write_atomic(path, lambda tmp: torch.save(data, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a wbc-gan checkpoint; raise ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"GAN checkpoint not found: {path}")
    try:
        # Our checkpoints hold only tensors, dicts, lists, tuples and scalars, so the safe loader suffices;
        # a file that needs arbitrary unpickling is by definition not one of ours and is never executed.
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a wbc-gan checkpoint (unreadable: {str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a wbc-gan checkpoint (no format={CHECKPOINT_FORMAT!r} tag)")
    version = data.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is wbc-gan checkpoint version {version!r}; this code reads {CHECKPOINT_VERSION}")
    missing = [k for k in (LIGHT_KEYS if data.get("light") else REQUIRED_KEYS) if k not in data]
    if missing:
        raise ValueError(f"{path} is a damaged wbc-gan checkpoint: missing {', '.join(missing)}")
    return data


def is_full(data: dict[str, Any]) -> bool:
    """True for a checkpoint that can resume training (D, optimisers, RNG), False for a light one."""
    return not data.get("light")


def lighten_checkpoint(path: Path) -> Path:
    """Rewrite a full checkpoint in place as a light one: EMA generator, config, classes, step and metrics."""
    data = load_checkpoint(path)
    if not is_full(data):
        return Path(path)
    light = {k: data[k] for k in (*LIGHT_KEYS, "metrics") if k in data}
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
