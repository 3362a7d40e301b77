"""The product loop's report: the issue's goals, the markdown tables, and the expert-decisions path.

Goals (reported, never used to choose anything; the strategy is chosen on val):
- rare: basophil F1 >= +5 and ig F1 >= +3, curated vs real, CIs excluding 0;
- curation beats random: curated - matched >= +1 in macro-F1 or a rare class's F1, CI excluding 0, in a regime;
- n50: macro-F1 >= +2 curated vs real; all: macro-F1 >= -0.3 curated vs real.
"""

from __future__ import annotations

from typing import Any

from bench.gain_report import _ci


def _gain(regime: dict[str, Any], key: str, metric: str) -> dict[str, float] | None:
    return (regime.get("gains", {}).get(key) or {}).get(metric)


def goals(results: dict[str, Any], rare_classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per goal: the measured gain (mean and 95% CI, points) and whether it is met."""
    regimes = results.get("regimes", {})
    out: list[dict[str, Any]] = []

    def add(goal: str, regime: str, key: str, metric: str, bound: float, need_ci: bool) -> None:
        r = regimes.get(regime)
        g = None if r is None or not r.get("best_strategy") else _gain(r, key.format(s=r["best_strategy"]), metric)
        met = None if g is None else bool(g["mean"] >= bound and (g["low"] > 0 if need_ci else True))
        out.append({"goal": goal, "regime": regime, "comparison": key.format(s=r.get("best_strategy") if r else "?"),
                    "metric": metric, "gain": g, "met": met})

    bounds = {0: 5.0, 1: 3.0}
    for i, cls in enumerate(rare_classes):
        add(f"rare: {cls} F1 >= +{bounds.get(i, 3.0):g}, curated vs real, CI excludes 0", "rare",
            "curated@{s} - real", f"f1_{cls}", bounds.get(i, 3.0), True)
    for regime in regimes:
        for metric in ("macro_f1", *[f"f1_{c}" for c in rare_classes]):
            add("curation beats random: curated - matched >= +1, CI excludes 0 (one regime suffices)", regime,
                "curated@{s} - matched@{s}", metric, 1.0, True)
    add("n50: macro-F1 >= +2, curated vs real", "n50", "curated@{s} - real", "macro_f1", 2.0, False)
    add("all data: no regression (macro-F1 >= -0.3), curated vs real", "all", "curated@{s} - real", "macro_f1", -0.3,
        False)
    return out


def _budgets(results: dict[str, Any]) -> str:
    """Each regime's image budget per arm ("rare 39,078, n50 10,000"), or the config's cap before any regime ran."""
    per = {name: r["image_budget_per_arm"] for name, r in results.get("regimes", {}).items()
           if "image_budget_per_arm" in r}
    if not per:
        return f"at most {results['config']['cls_images']:,}"
    return ", ".join(f"{name} {n:,}" for name, n in per.items())


def _reference(results: dict[str, Any]) -> str:
    """The scripted reviewer's reference in words (val and test macro-F1), once it is trained."""
    ref = results.get("reference")
    if not ref:
        return ""
    return (f"reference ResNet-18 {ref['epochs']} epochs on all {ref['train_cells']:,} real train cells (val "
            f"macro-F1 {ref['val_macro_f1'] * 100:.1f}, test {ref['test_macro_f1'] * 100:.1f}), ")


def markdown(results: dict[str, Any], rare_classes: tuple[str, ...]) -> str:
    """Headline tables: per regime and arm the absolute scores and paired gains; strategies; curation; goals."""
    c, m = results["config"], results["machine"]
    mode = "smoke run (--quick)" if results["quick"] else "full budgets"
    if results.get("partial"):
        mode += " (PARTIAL)"
    focus = [x for x in rare_classes if x in results.get("data", {}).get("class_names", [])]
    lines = [f"### Product loop: {mode}", "",
             f"Data `{c['data']}`, {c['size']} px, {c['seeds']} seed(s), GAN {c['gan_steps']} steps ({c['device']}), "
             f"{c['per_class']} candidates/class, {_budgets(results)} images per classifier arm, "
             f"{_reference(results)}{results.get('wall_minutes', 0):.1f} min on {m['cpus']} CPUs "
             f"({c['threads']} threads, load {m['load_1min']:.1f} at start).",
             "Gains: paired differences in points, mean over seeds, 95% bootstrap CI over test cells; * = CI "
             "excludes 0.", ""]
    fitted = {name: r["budget"] for name, r in results.get("regimes", {}).items() if r.get("budget")}
    if fitted:  # --budget-minutes: what each regime got, and why
        lines += [f"Budget {c.get('budget_minutes', 0):.0f} min: " + "; ".join(
            f"{name} x{b['scale']:.2f} ({b['gan_steps']} GAN steps, {b['arm_images']:,} images per arm: {b['note']})"
            for name, b in fitted.items()) + ".", ""]
    if results.get("strategy"):
        s = results["strategy"]
        lines += [f"Strategy chosen on the {s['regime']} regime by {s['by']}: **{s['chosen']}**.", ""]
    head = ["regime", "arm", "synthetic", "val macro-F1", "test macro-F1", "Δ macro-F1 vs real",
            *[f"Δ F1 {x}" for x in focus]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.get("regimes", {}).items():
        for key, a in r.get("absolute", {}).items():
            g = r.get("gains", {}).get(f"{key} - real", {})
            cells = [name, key, f"{a['synthetic']:.0f}", f"{a['val_macro_f1'] * 100:.1f}",
                     f"{a['test_macro_f1'] * 100:.1f}", _ci(g.get("macro_f1")) if g else "–",
                     *[_ci(g.get(f"f1_{x}")) if g else "–" for x in focus]]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| regime | comparison | Δ macro-F1 | " + " | ".join(f"Δ F1 {x}" for x in focus) + " |",
              "|---|---|---|" + "---|" * len(focus)]
    for name, r in results.get("regimes", {}).items():
        for key, g in r.get("gains", {}).items():
            if "- real" not in key:
                lines.append(f"| {name} | {key} | {_ci(g['macro_f1'])} | "
                             + " | ".join(_ci(g.get(f"f1_{x}")) for x in focus) + " |")
    lines += ["", "Scripted reviewer (four-rule stand-in): rejections per class and rule.", "",
              "| regime | class | accepted | disagree | unrealistic | memorised | duplicate |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results.get("regimes", {}).items():
        cur = r.get("curation") or {}
        for cls, rules in (cur.get("rejections") or {}).items():
            lines.append(f"| {name} | {cls} | {cur['accepted_per_class'].get(cls, 0)} | " + " | ".join(
                str(rules.get(k, 0)) for k in ("disagree", "unrealistic", "memorised", "duplicate")) + " |")
    lines += ["", "| goal | regime | comparison | metric | gain | met |", "|---|---|---|---|---|---|"]
    for g in results.get("goals", []):
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "no")
        lines.append(f"| {g['goal']} | {g['regime']} | {g['comparison']} | {g['metric']} | {_ci(g['gain'])} | "
                     f"{met} |")
    return "\n".join(lines) + "\n"


# -- --policy expert ------------------------------------------------------------------------------------------

def expert_curation(dataset_id: int, size: int | None = None) -> dict[str, Any]:
    """What ExpertDecisionsPolicy makes of a dataset's candidates: accepted and rejections per class and rule."""
    from db import datasets as ds_db
    from wbc_core import store
    from wbc_core.curation import CurationContext, ExpertDecisionsPolicy

    info = ds_db.get_dataset(dataset_id)
    rows = ds_db.candidates(dataset_id)
    cells = store.labelled(dataset_id, rows, info.class_names, size or info.image_size)
    decisions = ExpertDecisionsPolicy(dataset_id).explain(
        cells, CurationContext(info.class_names, candidate_ids=[r.id for r in rows]))
    accepted = decisions.accepted.tolist()
    return {"policy": "expert", "candidates": len(rows), "accepted": int(sum(accepted)),
            "accepted_per_class": {c: sum(a for r, a in zip(rows, accepted, strict=True) if r.class_name == c)
                                   for c in info.class_names},
            "rejections": decisions.rejections, "stats": decisions.stats}


def run_expert(cfg: Any) -> dict[str, Any]:  # noqa: ANN401 - a product_loop.LoopConfig
    """--policy expert: the arms of one dataset whose candidates experts already decided (no GAN, no scripted review).

    Runs in cfg.expert_home (its database and files): the classifier runs it adds there are ordinary runs of that
    dataset, as if started from the Train page. The strategy is cfg.strategies[0]."""
    from bench import gain_report as gr
    from bench import loop_arms as la
    from db import datasets as ds_db
    from db import users as users_db
    from wbc_core import context

    if not cfg.expert_home or not cfg.expert_dataset:
        raise SystemExit("--policy expert needs --expert-home (a WBC_HOME) and --expert-dataset (a dataset name)")
    ctx = context.build("cli", home=cfg.expert_home)
    try:
        with context.using(ctx):
            info = ds_db.get_dataset(cfg.expert_dataset)
            user = users_db.get_user("bench-admin") or users_db.insert_user("bench-admin", "", "admin", None, "local")
            out: dict[str, Any] = {"curation": expert_curation(info.id)}
            test = ds_db.real_images(info.id, split="test")
            runner = la.ArmRunner(info.id, user, {"batch_size": cfg.cls_batch, "device": cfg.device,
                                                  "num_threads": cfg.threads}, cfg.cls_images,
                                  la.StrategyParams(cfg.share, cfg.fill_target, cfg.synthetic_weight),
                                  gr.boot_index(len(test), cfg.bootstrap, cfg.split_seed))
            strategy, records = cfg.strategies[0], []
            for seed in range(cfg.seeds):
                records.append(runner.run("real", "none", seed))
                cur = runner.run("curated", strategy, seed)
                records.append(cur)
                for arm in ("unfiltered", "matched"):
                    records.append(runner.run(arm, strategy, seed, curated_counts=cur["synthetic_per_class"]))
            out.update(la.summarise(records, info.class_names))
            out["runs"] = [la.public(r) for r in records]
            return out
    finally:
        ctx.close()
