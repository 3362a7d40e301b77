"""Resuming a stopped product-loop run (bench/product_loop.py --resume).

A full CPU run is planned at 120 minutes but took longer than a working session on a slower CPU (the Xeon of
2026-12-02: 145 minutes for the reference, rare and n50; the machine went away during the all-data regime). Its
results file already holds every finished arm, so a resumed run keeps each regime that finished, redoes the one
that did not, from its GAN on (a regime's arms all read its one GAN and one review), and the rest.

What makes the resumed numbers comparable with the kept ones, checked before anything runs:
- the same LoopConfig (every knob but `resume`), or a plain error listing what differs;
- the same real test cells: the fresh import's test split must hash as the kept regimes' did (the app's split is
  seeded, so it does; a changed data folder is refused);
- the same scripted reviewer: the reference checkpoint the first run kept beside its results
  (<results>.reference.pt, never committed). Without it the reference is retrained, and the resumed part says so.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any


class ResumeError(ValueError):
    """A results file that cannot be resumed; the message says why and what to do."""


def reference_checkpoint(results_json: Path) -> Path:
    """Where a run keeps its scripted reviewer's reference checkpoint: beside its results (git-ignored)."""
    return results_json.with_suffix(".reference.pt")


def keep_reference(model_path: Path, results_json: Path) -> Path:
    """Copy the reference checkpoint beside the results (via a temp name: a stopped copy is never mistaken for
    a finished one)."""
    target = reference_checkpoint(results_json)
    partial = target.with_suffix(".pt.tmp")
    shutil.copyfile(model_path, partial)
    partial.replace(target)
    return target


def load_partial(results_json: Path, config: Any) -> dict[str, Any]:  # noqa: ANN401 (a LoopConfig)
    """The stopped run's results, checked to be resumable with this config."""
    if not results_json.is_file():
        raise ResumeError(f"nothing to resume: {results_json} does not exist. Run without --resume first.")
    try:
        previous = json.loads(results_json.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"cannot read {results_json} ({exc}); it is not a product-loop results file.") from exc
    if previous.get("benchmark") != "product_loop" or "config" not in previous:
        raise ResumeError(f"{results_json} is not a product-loop results file.")
    if not previous.get("partial", False):
        raise ResumeError(f"{results_json} is a finished run; there is nothing to resume. Use another --tag.")
    now = {k: v for k, v in dataclasses.asdict(config).items() if k != "resume"}
    kept = {k: v for k, v in previous["config"].items() if k != "resume"}
    differ = sorted(k for k in set(now) | set(kept) if _plain(now.get(k)) != _plain(kept.get(k)))
    if differ:
        detail = ", ".join(f"{k}: {kept.get(k)!r} then, {now.get(k)!r} now" for k in differ)
        raise ResumeError(f"the run in {results_json} had another configuration ({detail}). Resume with the same "
                          "options, or start a new run with another --tag.")
    return previous


def _plain(value: Any) -> Any:  # noqa: ANN401
    """Tuples and lists compare equal (the JSON file holds lists)."""
    return list(value) if isinstance(value, tuple) else value


def finished_regimes(previous: dict[str, Any], seeds: int) -> list[str]:
    """Regimes whose last arm (matched, best strategy, last seed) was written: every stage of theirs is done."""
    done = []
    for name, regime in previous.get("regimes", {}).items():
        best = regime.get("best_strategy")
        if best and f"{name}: matched {best} seed {seeds - 1}" in previous.get("stages", {}):
            done.append(name)
    return done


def check_test_cells(previous: dict[str, Any], test_cells_hash: str) -> None:
    """The fresh import's test cells must be those every kept arm was scored on."""
    kept = {r["audit"]["test_cells_hash"] for r in previous.get("regimes", {}).values() if "audit" in r}
    if kept and kept != {test_cells_hash}:
        raise ResumeError(f"the data's test cells hash {test_cells_hash} now, {sorted(kept)} in the stopped run: "
                          "the data folder changed. Start a new run with another --tag.")


def resumed_state(previous: dict[str, Any], seeds: int) -> dict[str, Any]:
    """The results to carry on from: the finished regimes and the stages, config, data and strategy that go with
    them; the unfinished regime's partial entries are dropped (it is redone from its GAN)."""
    done = finished_regimes(previous, seeds)
    state = {k: v for k, v in previous.items() if k not in ("regimes", "stages", "goals")}
    state["regimes"] = {name: previous["regimes"][name] for name in done}
    state["stages"] = {k: v for k, v in previous["stages"].items()
                       if k in ("import", "reference") or k.split(":")[0] in done}
    state["sessions"] = [*previous.get("sessions", [{"machine": previous.get("machine"),
                                                     "wall_minutes": previous.get("wall_minutes"),
                                                     "stages": list(previous["stages"])}])]
    return state
