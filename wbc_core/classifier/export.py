"""Export a trained classifier as a standalone TorchScript file: uint8 images in, class probabilities out."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wbc_core.classifier.checkpoint import load_classifier

META_FILE = "wbc_meta.json"  # TorchScript extra file carrying class names and input conventions
EXPORT_FORMAT = "wbc-classifier-torchscript"


class ProbabilityModel(nn.Module):
    """Self-contained inference module: uint8 RGB [N,3,S,S] (0..255) -> probabilities [N,K]."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        # Buffers (not Python lists) so the traced graph carries the statistics as constants of the file.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a uint8 batch."""
        x = (x.float() / 255.0 - self.mean) / self.std
        return torch.softmax(self.net(x), dim=1)


def export_torchscript(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Trace the checkpoint's model into out_path (atomic write); usable with plain torch.jit.load."""
    loaded = load_classifier(checkpoint, "cpu")
    size, k = loaded.image_size, len(loaded.class_names)
    module = ProbabilityModel(loaded.model.net, loaded.normalization["mean"], loaded.normalization["std"]).eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=gen)
    # Tracing (not scripting) works for every torchvision architecture; torch marks torch.jit as deprecated
    # in favour of torch.export, but TorchScript is still what plain `torch.jit.load` users can open.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    _verify(module, traced, size, gen)
    meta = {"format": EXPORT_FORMAT, "class_names": loaded.class_names, "num_classes": k, "image_size": size,
            "input": "uint8 RGB tensor [N,3,S,S], values 0..255", "output": "float32 probabilities [N,K]",
            "normalization": loaded.normalization, "model": loaded.config.model, "epoch": loaded.epoch,
            "best_val_macro_f1": loaded.best_val_macro_f1}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.jit.save(traced, str(tmp), _extra_files={META_FILE: json.dumps(meta)})
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load an exported file: (module taking uint8 [N,3,S,S] and returning probabilities, metadata dict)."""
    extra = {META_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra[META_FILE] or "{}")
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an exported wbc classifier")
    return module.eval(), meta


@torch.no_grad()
def _verify(eager: nn.Module, traced: torch.jit.ScriptModule, size: int, gen: torch.Generator) -> None:
    # A different batch size than the trace example proves the batch dimension stayed dynamic.
    x = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen).expand(5, -1, -1, -1).clone()
    x[1:] = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=gen)
    diff = (eager(x) - traced(x)).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"traced model disagrees with the eager model (max |diff| {diff:.2e}); export aborted")
