"""What this machine has, found without importing torch (the page server must not pay for it)."""

from __future__ import annotations

import shutil
from pathlib import Path


def cuda_visible() -> bool:
    """Whether an NVIDIA GPU appears to be present (driver files or nvidia-smi); the worker checks for real."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()
