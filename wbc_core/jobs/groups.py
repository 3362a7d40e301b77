"""Groups of classifier runs: an ablation over the recipes, or one recipe over several seeds.

A group is created as queued runs that share a group name and are trained one after another by a small
chain process (`python -m wbc_core.jobs.groups RUN_ID...`): two cores cannot train three models at once
without each taking three times as long, and a sequential chain finishes its first arm (the baseline) soonest.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from db import datasets as ds_db
from db import runs as runs_db
from db.vocabulary import ABLATION, RECIPES
from wbc_core import retrain
from wbc_core.auth import User, authorize
from wbc_core.jobs import launcher, state
from wbc_core.mixing import MixConfig
from wbc_core.retrain import RetrainError
from wbc_core.review_model import ConsensusRule, get_review_settings

QUEUED_BEAT_SECONDS = 10.0  # the chain refreshes its waiting runs this often (reconcile reaps silent queued runs)


@dataclass(frozen=True)
class Launched:
    """What a start call created."""

    run_ids: list[int]  # in the order they train
    group_name: str | None  # shared by the runs of an ablation or multi-seed launch; None for a single run


# -- groups: ablation and multi-seed ----------------------------------------------------------------

def parse_seeds(seeds: Sequence[int] | str | int | None, default: int = 0) -> list[int]:
    """Seeds from a list, one int, or text such as "0 1 2" / "0,1,2"; unique, >= 0, order kept."""
    if seeds is None:
        values = [default]
    elif isinstance(seeds, int):
        values = [seeds]
    elif isinstance(seeds, str):
        parts = [p for p in re.split(r"[\s,;]+", seeds.strip()) if p]
        if not all(p.isdigit() for p in parts):
            raise RetrainError(f"seeds must be whole numbers >= 0 separated by spaces or commas, got {seeds!r}")
        values = [int(p) for p in parts] or [default]
    else:
        values = [int(s) for s in seeds]
    if any(s < 0 for s in values):
        raise RetrainError(f"seeds must be >= 0, got {values}")
    if len(set(values)) != len(values):
        raise RetrainError(f"seeds must be distinct, got {values}")
    return values


def _group_name(dataset_id: int, prefix: str) -> str:
    name = f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    taken = {r.group_name for r in runs_db.list_runs(dataset_id=dataset_id, kind="classifier")}
    suffix = 2
    unique = name
    while unique in taken:  # two launches within one second
        unique, suffix = f"{name}-{suffix}", suffix + 1
    return unique


def start_group(dataset: str | int, recipes: Sequence[str], seeds: Sequence[int], prefix: str,
                overrides: dict[str, Any] | None = None, rule: ConsensusRule | None = None,
                synthetic_cap: float | None = None, launch: bool = True, mix: MixConfig | None = None, *,
                user: User) -> Launched:
    """One queued run per (seed, recipe), all with the same settings and group name, trained in sequence.

    mix applies to the recipes with synthetic cells; the real arm stays the plain baseline. user is the acting
    account (the train permission); every run records it as its starter."""
    authorize(user, "train")
    info = ds_db.get_dataset(dataset)
    seeds = parse_seeds(list(seeds))
    rule = rule or get_review_settings(info.id).rule  # one rule for every arm, even if settings change meanwhile
    group = _group_name(info.id, prefix)
    created: list[int] = []
    try:
        for seed in seeds:  # seed-major: the first complete comparison (all arms of seed 0) comes first
            for recipe in recipes:
                created.append(retrain.start_classifier_run(info.id, recipe, {**(overrides or {}), "seed": seed}, rule,
                                                    synthetic_cap, group_name=group, launch=False,
                                                    mix=None if recipe == "real" else mix, user=user))
    except Exception:
        for run_id in created:  # never leave half a group queued
            state.request_stop(run_id, by="system:group-rollback")
        raise
    if launch:
        launcher.launch_chain(created)
    return Launched(created, group)


def start_ablation(dataset: str | int, overrides: dict[str, Any] | None = None,
                   seeds: Sequence[int] | str | None = None, rule: ConsensusRule | None = None,
                   synthetic_cap: float | None = None, launch: bool = True, mix: MixConfig | None = None, *,
                   user: User) -> Launched:
    """real vs curated vs all-synthetic with the same seed(s) and settings, grouped as "ablation-<time>"."""
    authorize(user, "train")
    seed_list = parse_seeds(seeds, default=int((overrides or {}).get("seed", 0)))
    return start_group(dataset, RECIPES, seed_list, ABLATION, overrides, rule, synthetic_cap, launch, mix,
                       user=user)


def start_seeds(dataset: str | int, recipe: str, seeds: Sequence[int] | str,
                overrides: dict[str, Any] | None = None, rule: ConsensusRule | None = None,
                synthetic_cap: float | None = None, launch: bool = True, mix: MixConfig | None = None, *,
                user: User) -> Launched:
    """One run of a recipe per seed, grouped as "seeds-<recipe>-<time>" (mean ± std in the comparison)."""
    authorize(user, "train")
    if recipe not in RECIPES:
        raise RetrainError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if mix is not None and recipe == "real":  # refused here, not dropped as for the real arm of an ablation
        raise RetrainError("the real recipe has no synthetic cells to mix; choose the curated or all-synthetic "
                           "recipe, or no mixing strategy")
    return start_group(dataset, [recipe], parse_seeds(seeds), f"seeds-{recipe}", overrides, rule, synthetic_cap,
                       launch, mix, user=user)


def start_training(dataset: str | int, recipe: str, overrides: dict[str, Any] | None = None,
                   seeds: Sequence[int] | str | None = None, synthetic_cap: float | None = None,
                   launch: bool = True, mix: MixConfig | None = None, *, user: User) -> Launched:
    """The Train page's one call: a single run, a multi-seed group, or an ablation (user: the acting account)."""
    authorize(user, "train")
    seed_list = parse_seeds(seeds, default=int((overrides or {}).get("seed", 0)))
    if recipe == ABLATION:
        return start_ablation(dataset, overrides, seed_list, synthetic_cap=synthetic_cap, launch=launch, mix=mix,
                              user=user)
    if len(seed_list) > 1:
        return start_seeds(dataset, recipe, seed_list, overrides, synthetic_cap=synthetic_cap, launch=launch,
                           mix=mix, user=user)
    run_id = retrain.start_classifier_run(dataset, recipe, {**(overrides or {}), "seed": seed_list[0]},
                                          synthetic_cap=synthetic_cap, launch=launch, mix=mix, user=user)
    return Launched([run_id], None)


def group_runs(group_name: str) -> list[runs_db.RunInfo]:
    """Runs of a group in creation (= training) order."""
    return sorted((r for r in runs_db.list_runs(kind="classifier", limit=100_000) if r.group_name == group_name),
                  key=lambda r: r.id)


def cancel_group(group_name: str, user: User) -> list[int]:
    """Ask every active run of a group to stop (queued ones end at once) on behalf of user; returns their ids.

    Each run must be one user may cancel (jobs.state.check_cancel), checked for all before any is stopped."""
    active = [r for r in group_runs(group_name) if r.active]
    for run in active:
        state.check_cancel(run, user)
    # Queued runs first, so the chain cannot start the next arm between two of our cancels.
    for run in sorted(active, key=lambda r: r.status != "queued"):
        state.cancel(run.id, user)
    return [r.id for r in active]


def run_chain(run_ids: Sequence[int]) -> int:
    """Body of the chain process: launch each still-queued run and wait for it to end before the next."""
    from wbc_core import context

    context.current("worker")
    host = socket.gethostname()
    for run_id in run_ids:
        # The chain answers for its waiting runs: if it dies, state.reconcile marks them failed. Set here, before
        # any launch, so this can never overwrite the pid of a worker that already started.
        if runs_db.get_run(run_id).status == "queued":
            runs_db.set_pid(run_id, os.getpid(), host)
    for i, run_id in enumerate(run_ids):
        if runs_db.get_run(run_id).status != "queued":
            print(f"run {run_id} is no longer queued; skipped", flush=True)
            continue
        pid = launcher.launch(run_id)
        print(f"run {run_id} launched, pid {pid}", flush=True)
        info = state.wait(run_id, poll=1.0, on_poll=_WaitingBeat(run_id, list(run_ids[i + 1:])))
        deadline = time.monotonic() + 30
        while state.pid_alive(pid) and time.monotonic() < deadline:  # let it exit before the next one starts
            time.sleep(0.2)
        print(f"run {run_id} {info.status}", flush=True)
    return 0


class _WaitingBeat:
    """jobs.wait callback of the chain: keeps the heartbeat of the runs still waiting fresh (rate-limited)."""

    def __init__(self, current: int, waiting: list[int]) -> None:
        self.current, self.waiting, self.last = current, waiting, 0.0

    def __call__(self, _info: runs_db.RunInfo) -> None:
        if time.monotonic() - self.last < QUEUED_BEAT_SECONDS:
            return
        self.last = time.monotonic()
        for other in self.waiting:
            if runs_db.get_run(other).status == "queued":
                runs_db.heartbeat(other, 0.0, f"queued: waits for run {self.current}")


if __name__ == "__main__":
    sys.exit(run_chain([int(a) for a in sys.argv[1:]]))
