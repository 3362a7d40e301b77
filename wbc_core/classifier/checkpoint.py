"""The self-describing classifier checkpoint (model.pt): writing it atomically and loading it back."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wbc_core.classifier.config import ClassifierConfig
from wbc_core.classifier.models import WBCClassifier, build_model, resolve_device
from wbc_core.diskspace import DiskFull, ensure_free, is_disk_full, payload_bytes

FORMAT = "wbc-classifier"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "model.pt"


def cpu_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copy of net's state dict (safe to keep while training goes on)."""
    # contiguous() also undoes channels_last, so the file loads into a plain torchvision model anywhere.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}


def make_checkpoint(config: ClassifierConfig, class_names: Sequence[str], epoch: int, best_val_macro_f1: float,
                    state_dict: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float],
                    val_report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict; only plain containers and tensors so torch.load(weights_only=True) accepts it."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "class_names": [str(n) for n in class_names],
        "epoch": int(epoch),
        "best_val_macro_f1": float(best_val_macro_f1),
        # Raw network weights (no wrapper prefix): torchvision.models.get_model(name, num_classes=K) loads them.
        "state_dict": state_dict,
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "scale": "0..1"},
        "image_size": int(config.image_size),
        "val_report": val_report or {},
        "torch_version": str(torch.__version__),  # TorchVersion is not weights_only-safe
    }


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace, so readers never see half a file.

    The free space is checked first against the tensors' size; a disk that fills anyway raises DiskFull (how much
    is needed and free, in plain words) after the partial file is removed.
    """
    path = Path(path)
    expected = payload_bytes(obj)
    ensure_free(path.parent, expected)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except Exception as exc:
        full = is_disk_full(exc, path.parent)  # asked while the partial file still fills the disk
        tmp.unlink(missing_ok=True)
        if full and not isinstance(exc, DiskFull):
            raise DiskFull(path.parent, expected) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a wbc-classifier checkpoint dict (on CPU); ValueError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"classifier checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(_damaged(path, "it is empty (0 bytes)"))
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except EOFError as exc:
        raise ValueError(_damaged(path, "it ends too early")) from exc
    except Exception as exc:  # noqa: BLE001 - pickle, zip and unpickler errors all mean "not ours"
        lines = str(exc).strip().splitlines()
        detail = (lines[0] if lines else type(exc).__name__)[:200]
        if "failed finding central directory" in detail or "failed reading" in detail:  # a cut-off torch zip
            raise ValueError(_damaged(path, "it is cut off")) from exc
        raise ValueError(f"{str(path)!r} is not a wbc-classifier checkpoint: {detail}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a wbc-classifier checkpoint (missing format marker {FORMAT!r})")
    if blob.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has checkpoint format_version {blob.get('format_version')!r}; "
                         f"this code reads version {FORMAT_VERSION}")
    missing = [k for k in ("config", "class_names", "state_dict", "normalization", "epoch") if k not in blob]
    if missing:
        raise ValueError(f"{str(path)!r} is a damaged wbc-classifier checkpoint: missing {missing}")
    return blob


def _damaged(path: Path, what: str) -> str:
    return (f"the classifier checkpoint file {path} is empty or damaged ({what}), probably because the disk was "
            "full or the run was killed while writing it; train the run again")


@dataclass(frozen=True)
class LoadedClassifier:
    """A trained classifier ready for inference, with what is needed to interpret it."""

    model: WBCClassifier  # in eval mode; takes uint8 [N,3,S,S] (or float 0..1) and returns logits
    config: ClassifierConfig  # the training configuration
    class_names: list[str]  # index -> class name, as used for training labels
    epoch: int  # epoch whose weights these are (0 = stopped before the first epoch finished)
    best_val_macro_f1: float  # validation macro-F1 of these weights during training
    normalization: dict[str, list[float]]  # {"mean": [r, g, b], "std": [r, g, b]} on the 0..1 scale
    image_size: int  # expected input side in pixels
    val_report: dict[str, Any]  # classification_report on the validation set at that epoch
    path: Path  # the checkpoint file


def load_classifier(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedClassifier:
    """Rebuild the model from a wbc-classifier checkpoint, on `device`, in eval mode."""
    blob = read_checkpoint(checkpoint)
    config = ClassifierConfig.from_dict(blob["config"])
    class_names = list(blob["class_names"])
    norm = blob["normalization"]
    net = build_model(config.model, len(class_names), config.image_size)
    net.load_state_dict(blob["state_dict"])
    model = WBCClassifier(net, norm["mean"], norm["std"], len(class_names), config.image_size)
    model.to(resolve_device(device)).eval()
    return LoadedClassifier(
        model=model, config=config, class_names=class_names, epoch=int(blob["epoch"]),
        best_val_macro_f1=float(blob.get("best_val_macro_f1", 0.0)),
        normalization={"mean": list(norm["mean"]), "std": list(norm["std"])},
        image_size=int(blob.get("image_size", config.image_size)), val_report=dict(blob.get("val_report", {})),
        path=Path(checkpoint),
    )
