"""bench/options.py's set-up: what each CPU kind's child process is started with, and which variants run."""

from __future__ import annotations

from bench import options


def test_the_avx2_kind_caps_every_library_that_picks_kernels_by_isa():
    _label, env = options.KINDS["avx2"]
    # MKL too: oneDNN's cap alone left matmuls (and the ceiling) on AVX-512, 253 vs 97 GFLOP/s on the Xeon.
    assert env == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                   "WBC_CPU_BF16": "0"}
    assert options.KINDS["native"][1] == {} and options.KINDS["affinity"][1]["OMP_PROC_BIND"] == "close"


def test_focus_keeps_the_reference_and_the_layout_compile_and_optimizer_variants():
    full = options._variants("classifier", bf16=False)
    focus = options._variants("classifier", bf16=False, focus=True)
    assert full[0]["name"] == focus[0]["name"] == "eager fp32"
    assert {v["name"] for v in full} - {v["name"] for v in focus} == {
        "eager fp32 batch 64", "eager fp32 batch 256", "eager fp32 1 thread"}
    assert [v["name"] for v in focus if v.get("fused")] == ["eager fp32 fused AdamW", "compiled fp32 fused AdamW"]
    assert not any(v.get("fused") for v in options._variants("gan", bf16=True))  # the GAN's Adams are the stepper's
    assert "compiled bf16 channels_last" in {v["name"] for v in options._variants("gan", bf16=True, focus=True)}
