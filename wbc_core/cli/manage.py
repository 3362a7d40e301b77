"""CLI for everyday management: rename or delete (archive) a dataset, delete (archive) a run.

Loaded by wbc_core.cli through EXTENSION_MODULES. Deleting asks for confirmation: at a terminal, type the
dataset's name or the run's id; in scripts, pass --yes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add `dataset rename|delete` and `run delete`."""
    s = sub.add_parser("dataset", help="rename or delete a dataset (deleting archives it; decisions are kept)")
    actions = s.add_subparsers(dest="dataset_action", required=True)
    a = actions.add_parser("rename", help="give a dataset a new name")
    a.add_argument("name")
    a.add_argument("new_name")
    a = actions.add_parser("delete", help="archive a dataset and its runs: hidden everywhere, kept for the audit")
    a.add_argument("name")
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    s = sub.add_parser("run", help="delete a run (archives it: hidden from lists, files and metrics kept)")
    actions = s.add_subparsers(dest="run_action", required=True)
    a = actions.add_parser("delete", help="archive an ended run")
    a.add_argument("run", type=int)
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def confirm(expected: str, what: str, yes: bool) -> None:
    """Go on only with --yes, or when the user types expected at a terminal."""
    from wbc_core.cli.main import CliError

    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"deleting {what} needs confirmation: add --yes")
    print(f"Delete {what}? It is archived: hidden everywhere, its decisions kept. Type {expected!r} to confirm: ",
          end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip() != expected:
        raise CliError("not confirmed; nothing was deleted")


def _dataset(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core import archive
    from wbc_core.cli.main import acting_user

    user = acting_user(args)
    if args.dataset_action == "rename":
        info = archive.rename_dataset(args.name, args.new_name, user=user)
        return {"dataset_id": info.id, "name": info.name, "_text": f"dataset {args.name!r} is now {info.name!r}"}
    from db.datasets import get_dataset

    get_dataset(args.name)  # a missing name fails before the question
    confirm(args.name, f"dataset {args.name!r} and all its runs", args.yes)
    out = archive.delete_dataset(args.name, user=user)
    runs = out["runs_archived"]
    out["_text"] = (f"deleted dataset {args.name!r} (archived as {out['archived_as']!r}"
                    + (f", with runs {', '.join(map(str, runs))}" if runs else "") + "); its decisions are kept")
    return out


def _run(args: argparse.Namespace) -> dict[str, Any]:
    from db.runs import get_run
    from wbc_core import archive
    from wbc_core.cli.main import acting_user

    user = acting_user(args)
    info = get_run(args.run)
    confirm(str(info.id), f"run {info.id} ({info.kind}{', ' + info.recipe if info.recipe else ''})", args.yes)
    out = archive.delete_run(args.run, user=user)
    out["_text"] = f"deleted run {args.run} (archived: hidden from lists, files and metrics kept)"
    return out


COMMANDS = {"dataset": _dataset, "run": _run}
