"""Scoring and reporting for the augmentation-gain benchmark: paired bootstrap gains, goals, markdown, PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ARM_COLOURS = {"unfiltered": (150, 150, 150), "curated": (40, 120, 200), "matched": (230, 150, 40)}


def _metrics_from_cm(cm: np.ndarray) -> np.ndarray:
    """[..., K, K] confusion counts -> [..., 2 + K]: macro-F1, accuracy, F1 per class (sklearn zero_division=0)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support, predicted = cm.sum(-1).astype(np.float64), cm.sum(-2).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    # Macro-F1 over classes present in truth or predictions, the same convention as wbc_core.classifier.metrics.
    present = (support > 0) | (predicted > 0)
    macro = (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)
    acc = tp.sum(-1) / np.maximum(cm.sum((-1, -2)), 1)
    return np.concatenate([macro[..., None], acc[..., None], f1], axis=-1)


def metric_names(class_names: list[str]) -> list[str]:
    """Names of the columns _metrics_from_cm returns."""
    return ["macro_f1", "accuracy", *[f"f1_{c}" for c in class_names]]


def boot_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] test-cell resamples, shared by every arm and seed so differences stay paired."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def scores(y_true: np.ndarray, y_pred: np.ndarray, k: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point metrics [M], bootstrap metrics [B, M]) of one prediction vector on the test cells."""
    flat = y_true * k + y_pred
    point = _metrics_from_cm(np.bincount(flat, minlength=k * k).reshape(k, k))
    codes = flat[index]  # [B, n]
    offsets = (np.arange(index.shape[0]) * k * k)[:, None]
    cms = np.bincount((codes + offsets).ravel(), minlength=index.shape[0] * k * k).reshape(-1, k, k)
    return point, _metrics_from_cm(cms)


def paired_gain(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]],
                names: list[str], confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Mean over seeds of metric(a_s) - metric(b_s), in points, with a percentile bootstrap CI over test cells."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same, non-zero number of seeds on both sides, got {len(a)} and {len(b)}")
    point = np.mean([pa - pb for (pa, _), (pb, _) in zip(a, b, strict=True)], axis=0) * 100
    boots = np.mean([ba - bb for (_, ba), (_, bb) in zip(a, b, strict=True)], axis=0) * 100
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha], axis=0)
    return {n: {"mean": round(float(point[i]), 3), "low": round(float(low[i]), 3), "high": round(float(high[i]), 3)}
            for i, n in enumerate(names)}


def _ci(g: dict[str, float] | None) -> str:
    if g is None:
        return "–"
    mark = "*" if g["low"] > 0 or g["high"] < 0 else ""
    return f"{g['mean']:+.1f} [{g['low']:+.1f}, {g['high']:+.1f}]{mark}"


def goals(results: dict[str, Any], rare_classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """The issue's targets, checked against the measured gains (reported, never used to tune anything)."""
    out: list[dict[str, Any]] = []
    regimes = results["regimes"]

    def add(goal: str, regime: str, key: str, metric: str, bound: float, need_ci: bool) -> None:
        if regime not in regimes:
            out.append({"goal": goal, "regime": regime, "share": None, "gain": None, "met": None,
                        "note": "regime not run"})
            return
        for share, by in regimes[regime]["gains"].items():
            g = by[key].get(metric)
            if g is None:
                continue
            met = g["mean"] >= bound and (g["low"] > 0 if need_ci else True)
            out.append({"goal": goal, "regime": regime, "share": share, "gain": g, "met": bool(met)})

    add("+3 macro-F1 at 50 real cells/class, curated vs real, CI excludes 0", "n50", "curated", "macro_f1", 3.0, True)
    for cls in rare_classes[:1]:
        add(f"+5 F1 for {cls} in the rare-class regime, curated vs real", "rare", "curated", f"f1_{cls}", 5.0, False)
    for regime in regimes:
        add("curated beats unfiltered by >= 1 macro-F1 point", regime, "curated_vs_unfiltered", "macro_f1", 1.0, False)
    add("no regression with all data (curated vs real >= -0.5)", "all", "curated", "macro_f1", -0.5, False)
    return out


def markdown(results: dict[str, Any], focus_classes: tuple[str, ...]) -> str:
    """Markdown tables: absolute scores per arm, gains vs real-only with 95% CIs, and the goals."""
    budgets = "smoke run (--quick budgets)" if results["quick"] else "full budgets"
    m, c = results["machine"], results["config"]
    load = f"load avg {m['load_avg_start'][0]:.1f} at start, {m.get('load_avg_end', [float('nan')])[0]:.1f} at end"
    if results.get("partial"):
        budgets += f" (PARTIAL: {len(results['regimes'])} of {len(c['regimes'])} regimes finished)"
    precision = "mixed precision where native" if c.get("amp", False) else "fp32"
    gan = f"GAN {c['gan_steps']} steps, width {c['gan_width']}"
    if c.get("gan_aux_weight"):
        gan += f", AC-GAN weight {c['gan_aux_weight']}"
    if c.get("gan_lr_g", 2e-4) != c.get("gan_lr_d", 2e-4):
        gan += f", lr G/D {c['gan_lr_g']:g}/{c['gan_lr_d']:g}"
    lines = [f"### Augmentation gain: {budgets}, regimes {', '.join(results['regimes'])}", "",
             f"Data `{c['data']}`, {c['size']} px, {c['seeds']} seed(s), {gan}, "
             f"{results['seconds'] / 60:.1f} min on a {m['cpus']}-core CPU ({c['threads']} torch thread(s), "
             f"{precision}), {load}.",
             "Gains are paired differences to arm 1 (real only) in F1/accuracy points, mean over seeds, with a 95% "
             "bootstrap CI over test cells; * marks a CI that excludes 0.", ""]
    focus = [c for c in focus_classes if c in results["data"]["class_names"]]
    head = ["regime", "share", "arm", "synthetic", "macro-F1", "Δ macro-F1", "Δ accuracy",
            *[f"Δ F1 {c}" for c in focus]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for regime, r in results["regimes"].items():
        real = r["absolute"]["real"]
        cells = [regime, "–", "real only", "0", f"{real['macro_f1'] * 100:.1f}", "", "", *[""] * len(focus)]
        lines.append("| " + " | ".join(cells) + " |")
        for share, by in r["gains"].items():
            for arm in ("unfiltered", "curated", "matched"):
                g, absolute = by[arm], r["absolute"][f"{arm}@{share}"]
                cells = [regime, share, arm, f"{absolute['synthetic']:.0f}", f"{absolute['macro_f1'] * 100:.1f}",
                         _ci(g["macro_f1"]), _ci(g["accuracy"]), *[_ci(g.get(f"f1_{c}")) for c in focus]]
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Curation contrasts (macro-F1 points): curated − unfiltered, curated − matched (same count).", "",
              "| regime | share | acceptance | curated − unfiltered | curated − matched |", "|---|---|---|---|---|"]
    for regime, r in results["regimes"].items():
        for share, by in r["gains"].items():
            acc = r["acceptance"].get(share)
            acc_text = f"{acc * 100:.0f}%" if acc is not None else "–"
            lines.append(f"| {regime} | {share} | {acc_text} | {_ci(by['curated_vs_unfiltered']['macro_f1'])} | "
                         f"{_ci(by['curated_vs_matched']['macro_f1'])} |")
    lines += ["", "| goal | regime | share | gain | met |", "|---|---|---|---|---|"]
    for g in results["goals"]:
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "no")
        lines.append(f"| {g['goal']} | {g['regime']} | {g['share'] or '–'} | {_ci(g['gain'])} | {met} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> Path:
    """Bar chart (Pillow only): macro-F1 gain vs real only per regime and share, one bar per arm, 95% CI whiskers."""
    groups = [(regime, share, by) for regime, r in results["regimes"].items() for share, by in r["gains"].items()]
    arms = list(ARM_COLOURS)
    values = [by[a]["macro_f1"] for _, _, by in groups for a in arms]
    lo = min([0.0] + [v["low"] for v in values]) - 1
    hi = max([0.0] + [v["high"] for v in values]) + 1
    bar, gap, left, top, height = 18, 26, 70, 40, 320
    width = left + 20 + max(1, len(groups)) * (len(arms) * bar + gap)
    img = Image.new("RGB", (max(width, 420), top + height + 70), "white")
    draw = ImageDraw.Draw(img)

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * height

    for tick in np.linspace(lo, hi, 6):
        draw.line([(left - 4, y(tick)), (img.width - 10, y(tick))], fill=(232, 232, 232))
        draw.text((6, y(tick) - 6), f"{tick:+.1f}", fill="black")
    draw.line([(left, y(0)), (img.width - 10, y(0))], fill="black")
    draw.text((left, 8), "macro-F1 gain vs real only (points), 95% CI", fill="black")
    for gi, (regime, share, by) in enumerate(groups):
        x0 = left + 10 + gi * (len(arms) * bar + gap)
        for ai, arm in enumerate(arms):
            g = by[arm]["macro_f1"]
            xa = x0 + ai * bar
            draw.rectangle([xa, min(y(0), y(g["mean"])), xa + bar - 3, max(y(0), y(g["mean"]))], fill=ARM_COLOURS[arm])
            xm = xa + (bar - 3) / 2
            draw.line([(xm, y(g["low"])), (xm, y(g["high"]))], fill="black", width=1)
            for v in (g["low"], g["high"]):
                draw.line([(xm - 3, y(v)), (xm + 3, y(v))], fill="black")
        draw.text((x0, top + height + 8), f"{regime}", fill="black")
        draw.text((x0, top + height + 22), f"x{share}", fill="black")
    for ai, arm in enumerate(arms):
        xl = left + ai * 110
        draw.rectangle([xl, top + height + 46, xl + 10, top + height + 56], fill=ARM_COLOURS[arm])
        draw.text((xl + 14, top + height + 45), arm, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
