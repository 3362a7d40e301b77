"""Classifier networks, the normalising wrapper the rest of the app uses, and penultimate-feature extraction."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wbc_core.classifier.config import SMALL_CNN, available_models
from wbc_core.classifier.presets import normalize
from wbc_core.precision import amp_dtype
from wbc_core.precision import autocast as precision_autocast


class SmallCNN(nn.Module):
    """Four conv blocks + global average pooling: seconds per epoch on CPU, good enough for tests and smoke runs."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                       nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))  # halve three times: 64 px -> 8 px before pooling
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, num_classes] for normalised float images [N,3,H,W]."""
        return self.fc(self.dropout(self.features(x)))


def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Untrained network `name` producing logits [N, num_classes] from normalised float [N,3,S,S]."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    # small_cnn is checked first: the torchvision name list imports torchvision (about 0.25 s once torch._dynamo,
    # which every torch.optim optimiser imports, is in), which a small_cnn process never needs.
    if name == SMALL_CNN:
        net: nn.Module = SmallCNN(num_classes)
    elif name not in available_models():
        raise ValueError(f"unknown model {name!r}; use 'small_cnn' or a torchvision classification model name")
    else:
        import torchvision

        kwargs: dict[str, Any] = {}
        # Transformers bake the input size into their position embeddings; convnets (resnet18 included)
        # are used exactly as torchvision defines them so compute matches the reference runs.
        if name.startswith("vit_"):
            kwargs["image_size"] = image_size
        elif name == "maxvit_t":
            kwargs["input_size"] = (image_size, image_size)
        if name in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False  # aux heads return tuples during training and only help at 299 px
            kwargs["init_weights"] = True  # silences torchvision's warning about the default changing
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    _dry_run(net, name, num_classes, image_size)
    return net


def _dry_run(net: nn.Module, name: str, num_classes: int, image_size: int) -> None:
    # A two-image forward in eval mode catches "input too small for this architecture" at build time,
    # with a message naming the model, instead of deep inside the first training step.
    try:
        with torch.no_grad(), eval_mode(net):
            out = _logits(net(torch.zeros(2, 3, image_size, image_size)))
    except RuntimeError as exc:
        raise ValueError(f"model {name!r} cannot run on {image_size}x{image_size} images: {exc}") from exc
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(f"model {name!r} produced shape {tuple(out.shape)}, expected (2, {num_classes})")


class WBCClassifier(nn.Module):
    """A network plus its input normalisation: takes uint8 (0..255) or float (0..1) [N,3,S,S], returns logits."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], num_classes: int,
                 image_size: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.image_size = image_size  # the training size, when known; inference checks inputs against it
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, K]; normalisation happens here so callers never need to know the statistics."""
        return _logits(self.net(normalize(x, self.mean, self.std)))


def _logits(out: Any) -> torch.Tensor:
    # Some torchvision models return named tuples (e.g. with aux logits); the main output is `.logits`.
    return out if isinstance(out, torch.Tensor) else out.logits


def classifier_head(net: nn.Module, num_classes: int | None = None) -> nn.Linear:
    """The final nn.Linear of `net` (the last one with out_features == num_classes when given)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if num_classes is not None:
        linears = [m for m in linears if m.out_features == num_classes]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no final nn.Linear; feature extraction is not supported for it")
    return linears[-1]


class FeatureExtractor(nn.Module):
    """Wraps a WBCClassifier; forward returns the penultimate features (the classifier head's input) [N, D]."""

    def __init__(self, model: WBCClassifier) -> None:
        super().__init__()
        self.model = model
        self.head = classifier_head(model.net, model.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features for uint8 or float (0..1) images."""
        captured: list[torch.Tensor] = []
        # A temporary forward-pre-hook works for any architecture with a linear head (resnet fc,
        # mobilenet classifier[-1], vit heads.head ...) without knowing its layout; removed right after.
        handle = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[-1].flatten(1)


def feature_extractor(model: Any) -> FeatureExtractor:
    """FeatureExtractor for a WBCClassifier or a LoadedClassifier."""
    return FeatureExtractor(as_wbc_classifier(model))


def extract_features(model: Any, images_uint8: torch.Tensor, batch_size: int = 256,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Penultimate features [N, D] (float32, on CPU) of uint8 images [N,3,S,S]; moves the model to `device`."""
    return batched_forward(feature_extractor(model), images_uint8, batch_size, device)


def as_wbc_classifier(model: Any) -> WBCClassifier:
    """Accept a WBCClassifier or anything with a `.model` WBCClassifier (LoadedClassifier)."""
    inner = getattr(model, "model", model)
    if not isinstance(inner, WBCClassifier):
        raise TypeError(f"expected a WBCClassifier or LoadedClassifier (which normalise uint8 input), got "
                        f"{type(model).__name__}; wrap a raw network with WBCClassifier(net, mean, std, num_classes)")
    return inner


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put `module` in eval mode, restoring its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch.device."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def batched_forward(module: nn.Module, images: torch.Tensor, batch_size: int = 256,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Run `module` in eval mode over uint8 images in batches; float32 output on CPU."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N,3,S,S], got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    module.to(dev)
    outs: list[torch.Tensor] = []
    # Scoring stays fp32 on CPU even where training uses bf16: val/test metrics must not depend on which CPU
    # instruction set a lab's server happens to have. CUDA keeps AMP, where eval is the hot path for large sets.
    with eval_mode(module), precision_autocast(dev, amp_dtype(dev) if dev.type == "cuda" else None):
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].to(dev, non_blocking=True)
            if dev.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            outs.append(module(batch).float().cpu())
    if not outs:
        # Zero images: ask the module for its output width with an empty batch of the right size.
        with eval_mode(module):
            return module(images.to(dev)).float().cpu()
    return torch.cat(outs)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Training mixed-precision context: CUDA bf16/fp16, CPU bf16 where native (see wbc_core.precision)."""
    return precision_autocast(device, amp_dtype(device) if enabled else None)


def load_pretrained_weights(net: nn.Module, path: str | Path) -> int:
    """Copy matching tensors from a local state dict or wbc checkpoint into `net`; returns how many were copied."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pretrained_path {str(path)!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        raise ValueError(f"pretrained_path {str(path)!r} is not a loadable state dict: {exc}") from exc
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"pretrained_path {str(path)!r} holds no state dict")
    own = net.state_dict()
    # Shape-mismatched tensors (typically the class head when the class list differs) keep their fresh init.
    matched = {k: v for k, v in state.items() if k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape}
    if not matched:
        raise ValueError(f"pretrained_path {str(path)!r} shares no tensors with {type(net).__name__}")
    net.load_state_dict(matched, strict=False)
    return len(matched)
