"""Scoring and reporting for the augmentation-gain benchmark: paired bootstrap gains, goals, markdown, chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from wbc_core.classifier import metrics as cls_metrics

ARM_COLOURS = {"unfiltered": "#969696", "curated": "#2878c8", "matched": "#e69628"}


def _columns(scored: dict[str, np.ndarray]) -> np.ndarray:
    """scores_from_confusion's dict -> [..., 2 + K]: macro-F1, accuracy, F1 per class (the metric_names order)."""
    return np.concatenate([scored["macro_f1"][..., None], scored["accuracy"][..., None], scored["per_class_f1"]],
                          axis=-1)


def metric_names(class_names: list[str]) -> list[str]:
    """Names of the columns `scores` returns."""
    return ["macro_f1", "accuracy", *[f"f1_{c}" for c in class_names]]


def boot_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] test-cell resamples, shared by every arm and seed so differences stay paired."""
    return cls_metrics.resample_index(n, n_boot, seed)


def scores(y_true: np.ndarray, y_pred: np.ndarray, k: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point metrics [M], bootstrap metrics [B, M]) of one prediction vector on the test cells."""
    point = _columns(cls_metrics.scores_from_confusion(cls_metrics.confusion_matrix(y_true, y_pred, k)))
    return point, _columns(cls_metrics.bootstrap_scores(y_true, y_pred, k, index))


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


def chart_figure(results: dict[str, Any]) -> go.Figure:
    """Plotly bars: macro-F1 gain vs real only per regime and share, one bar per arm, 95% CI error bars."""
    groups = [(regime, share, by) for regime, r in results["regimes"].items() for share, by in r["gains"].items()]
    x = [f"{regime} ×{share}" for regime, share, _ in groups]
    fig = go.Figure()
    for arm, colour in ARM_COLOURS.items():
        gains = [by[arm]["macro_f1"] for _, _, by in groups]
        fig.add_bar(name=arm, x=x, y=[g["mean"] for g in gains], marker_color=colour,
                    error_y={"type": "data", "symmetric": False, "array": [g["high"] - g["mean"] for g in gains],
                             "arrayminus": [g["mean"] - g["low"] for g in gains], "color": "black", "width": 3},
                    hovertemplate="%{x} " + arm + ": %{y:+.1f}<extra></extra>")
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(template="plotly_white", barmode="group", title="macro-F1 gain vs real only (points), 95% CI",
                      yaxis_title="Δ macro-F1 (points)", xaxis_title="regime × synthetic share", legend_title_text="",
                      height=440, width=max(520, 140 + 90 * len(groups)), margin={"t": 50, "b": 40})
    return fig


def chart(results: dict[str, Any], path: Path) -> Path:
    """The chart as a PNG (Plotly through kaleido, which drives Debian's chromium: no browser download)."""
    import plotly.io as pio

    fig = chart_figure(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pio.write_image(fig, path, format="png", scale=2)
    except Exception as exc:  # kaleido raises its own types when no browser is found or it crashes
        raise RuntimeError(f"could not render {path.name} ({type(exc).__name__}: {exc}); kaleido needs a Chromium: "
                           "install Debian's package 'chromium' (or set BROWSER_PATH to a Chrome binary)") from exc
    return path
