"""Export a trained classifier as a standalone TorchScript or ONNX file: uint8 images in, class probabilities out.

Both files carry the same metadata (class names, image size, normalisation): TorchScript as an extra file,
ONNX as metadata properties of the model (onnxruntime: `session.get_modelmeta().custom_metadata_map`).
Each export is checked against the eager model on a batch size other than the example's before it is kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wbc_core.classifier.checkpoint import load_classifier

META_FILE = "wbc_meta.json"  # TorchScript extra file carrying class names and input conventions
EXPORT_FORMAT = "wbc-classifier-torchscript"
ONNX_FORMAT = "wbc-classifier-onnx"
ONNX_META_KEY = "wbc_meta"  # ONNX metadata property holding the same JSON as META_FILE
ONNX_OPSET = 18  # supported by onnxruntime >= 1.14 and by torch's dynamo exporter
TOLERANCE = 1e-4  # max |probability difference| an export may show against the eager model


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


def _prepare(checkpoint: str | Path) -> tuple[ProbabilityModel, dict[str, Any], torch.Generator, torch.Tensor]:
    """The eager probability module, the metadata both formats carry, and a seeded uint8 example batch."""
    loaded = load_classifier(checkpoint, "cpu")
    size, k = loaded.image_size, len(loaded.class_names)
    module = ProbabilityModel(loaded.model.net, loaded.normalization["mean"], loaded.normalization["std"]).eval()
    meta = {"class_names": loaded.class_names, "num_classes": k, "image_size": size,
            "input": "uint8 RGB tensor [N,3,S,S], values 0..255", "output": "float32 probabilities [N,K]",
            "normalization": loaded.normalization, "model": loaded.config.model, "epoch": loaded.epoch,
            "best_val_macro_f1": loaded.best_val_macro_f1}
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=gen)
    return module, meta, gen, example


def _atomic(out_path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary file beside out_path, then rename: no half-written model under the name."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def export_torchscript(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Trace the checkpoint's model into out_path (atomic write); usable with plain torch.jit.load."""
    module, meta, gen, example = _prepare(checkpoint)
    # Tracing (not scripting) works for every torchvision architecture; torch marks torch.jit as deprecated
    # in favour of torch.export, but TorchScript is still what plain `torch.jit.load` users can open.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    _verify(module, traced, meta["image_size"], gen, "traced")
    extra = {META_FILE: json.dumps({"format": EXPORT_FORMAT, **meta})}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.jit.save(traced, str(tmp), _extra_files=extra)

    return _atomic(out_path, write)


def export_onnx(checkpoint: str | Path, out_path: str | Path) -> Path:
    """Export the checkpoint's model as ONNX (dynamic batch, opset ONNX_OPSET), checked with onnxruntime."""
    import onnx

    module, meta, gen, example = _prepare(checkpoint)
    with warnings.catch_warnings(), torch.no_grad(), tempfile.TemporaryDirectory() as tmp_dir:
        for noisy in (FutureWarning, DeprecationWarning, UserWarning):  # the exporter's notes on its own internals
            warnings.filterwarnings("ignore", category=noisy)
        # torch's dynamo exporter (torch.export + onnxscript); the batch dimension stays symbolic.
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["images"], output_names=["probabilities"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
                                    optimize=True, verbose=False)
        staged = Path(tmp_dir) / "model.onnx"
        program.save(str(staged))  # weights inline: one self-contained file
        model = onnx.load(str(staged))
    onnx.checker.check_model(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, json.dumps({"format": ONNX_FORMAT, **meta})
    blob = model.SerializeToString()
    session = _onnx_session(blob)
    _verify(module, lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), meta["image_size"],
            gen, "ONNX")
    return _atomic(out_path, lambda tmp: tmp.write_bytes(blob))


def _onnx_session(model: bytes | str | Path):  # noqa: ANN202 - onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warns about unused initialisers and the like
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def load_onnx(path: str | Path) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Load an exported ONNX file: (function uint8 [N,3,S,S] numpy -> probabilities [N,K] numpy, metadata dict)."""
    try:
        session = _onnx_session(path)
    except Exception as exc:  # onnxruntime raises its own exception types for anything it cannot parse
        raise ValueError(f"{str(path)!r} is not an ONNX model ({type(exc).__name__})") from exc
    meta = json.loads(session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY) or "{}")
    if meta.get("format") != ONNX_FORMAT:
        raise ValueError(f"{str(path)!r} is an ONNX model but not an exported wbc classifier")
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(images, dtype=np.uint8)})[0]

    return run, meta


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
def _verify(eager: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor], size: int, gen: torch.Generator,
            what: str) -> None:
    # A different batch size than the export example proves the batch dimension stayed dynamic.
    x = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen).expand(5, -1, -1, -1).clone()
    x[1:] = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=gen)
    diff = (eager(x) - exported(x)).abs().max().item()
    if diff > TOLERANCE:
        raise RuntimeError(f"{what} model disagrees with the eager model (max |diff| {diff:.2e}); export aborted")
