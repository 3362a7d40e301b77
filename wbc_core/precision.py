"""Which mixed precision a device gets: one decision shared by the classifier, the GAN and their benchmarks."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

from wbc_core.context import process_settings

CPU_BF16_ENV = "WBC_CPU_BF16"  # "0" turns CPU bf16 autocast off everywhere (e.g. to compare against fp32)
CUDA_AMP_ENV = "WBC_CUDA_AMP_DTYPE"  # "fp16" or "bf16" overrides the CUDA choice (e.g. to test the GradScaler path)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU runs bf16 matmuls/convolutions natively (AVX512-BF16 or AMX), so autocast pays off."""
    return process_settings().cpu_bf16 and cpu_bf16_hardware()


def cpu_bf16_hardware() -> bool:
    """True when the CPU has bf16 units (AVX512-BF16 or AMX), whatever the settings say (cheap: not cached)."""
    # Why not torch.ops.mkldnn._is_mkldnn_bf16_supported(): it is also True on plain AVX512, where bf16 is
    # emulated and slower than fp32. Measured on a 2-core AMD EPYC with AVX512-BF16: ResNet-18 64 px training
    # steps 1.7x faster, GAN steps 1.9x faster than fp32 (bench/train.py, bench/gan.py).
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def cuda_has_native_bf16() -> bool:
    """True on GPUs with bf16 tensor cores (Ampere and later); False where bf16 would only be emulated."""
    # Why including_emulation=False: torch's default also answers True on Turing/Volta (T4, V100), where bf16 is
    # emulated and far slower than fp16 with loss scaling.
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the argument: its answer already meant native support
        return bool(torch.cuda.is_bf16_supported())


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training on `device`, or None where mixed precision would not help."""
    if device.type == "cuda":
        forced = process_settings().cuda_amp_dtype
        if forced in ("fp16", "bf16"):
            return torch.float16 if forced == "fp16" else torch.bfloat16
        if forced:
            raise ValueError(f"{CUDA_AMP_ENV} must be 'fp16' or 'bf16', got {forced!r}")
        # bf16 has fp32's range, so no loss scaling is needed; older GPUs get fp16 plus GradScaler.
        return torch.bfloat16 if cuda_has_native_bf16() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for `device` in `dtype`, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """The precision's short name ("fp32" without mixed precision, "bf16", "fp16"), as wbc_core.compile keys it."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def precision_label(device: torch.device, enabled: bool) -> str:
    """Human-readable precision for logs and run pages, e.g. "cpu bf16" or "cuda:0 fp32"."""
    return f"{device} {precision_name(amp_dtype(device) if enabled else None)}"
