"""Command-line interface: everything the UI does, for servers and scripts.

Every command prints one JSON object with --json and exits non-zero with a plain message on error.
Training commands start the same background job the UI starts, then follow it with a progress bar
(--detach returns at once). Ctrl-C while following asks the run to stop at its next checkpoint.

Every command acts as a named local account, checked by the domain like a signed-in user: `--as NAME` (an existing
account; never created), else WBC_USER or "local", which the first command on a database without any account
creates as admin (the owner of the machine). `review --reviewer NAME` is the same as `--as NAME` for that command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from wbc_core.cli import add_compile_flag
from wbc_core.steering import DEFAULT_STEER_GUARD, STEER_GUARDS
from wbc_core.vocabulary import JOB_KINDS, RECIPES, TRAINING_KINDS

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# Each of these modules defines register(subparsers) and COMMANDS = {name: handler(args) -> dict}.
EXTENSION_MODULES: list[str] = ["wbc_core.cli.data", "wbc_core.cli.review_admin", "wbc_core.cli.quality",
                                "wbc_core.cli.results", "wbc_core.cli.doctor", "wbc_core.cli.manage",
                                "wbc_core.cli.feedback", "wbc_core.cli.gan"]
# Errors whose message is meant for the user as it stands; anything else is reported as unexpected, with a log.
PLAIN_ERRORS = (ValueError, LookupError, OSError)
JSON_HELP = "print one JSON object instead of text (accepted before or after the command)"
AS_HELP = ("act as this existing account (default: WBC_USER or 'local', created as admin when the database has no "
           "account at all); accepted before or after the command")


class CliError(Exception):
    """An error to report to the user in plain words (exit code 2)."""


class UsageError(CliError):
    """The command line itself is wrong (unknown option, missing or malformed argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting, so --json still gets one object."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _accept_json_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command its own --json, so the flag may come before or after the command.

    SUPPRESS as the default keeps a subcommand from resetting a --json given before it to False."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--json" in a.option_strings for a in sub._actions):
                    sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
                if not any("--as" in a.option_strings for a in sub._actions):
                    sub.add_argument("--as", dest="acting_as", metavar="NAME", default=argparse.SUPPRESS,
                                     help=AS_HELP)
                _accept_json_everywhere(sub)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="wbc", description="wbc-curate: synthetic white-blood-cell data (also `python -m wbc_core`)")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--as", dest="acting_as", metavar="NAME", default=None, help=AS_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("train-gan", help="train a class-conditional GAN on a dataset's train split")
    s.add_argument("--dataset", required=True)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--size", type=int, default=None)
    s.add_argument("--batch", type=int, default=None)
    s.add_argument("--width", type=int, default=None, help="generator/discriminator base width")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--checkpoint-every", type=int, default=None)
    s.add_argument("--aux-weight", type=float, default=None, help="AC-GAN class-head weight (0 = projection only)")
    add_compile_flag(s, "G and D")
    s.add_argument("--preset", choices=["cpu", "cuda"], default=None,
                   help="start from a preset: cpu (GanConfig defaults) or cuda (CUDA_PRESET: wider, 128 px, 40k "
                        "steps, needs a GPU); the flags above override it")
    s.add_argument("--detach", action="store_true", help="start the job and return at once")

    s = sub.add_parser("resume-gan", help="continue a cancelled or failed GAN run from its last checkpoint")
    s.add_argument("--run", type=int, required=True)
    s.add_argument("--detach", action="store_true")

    s = sub.add_parser("generate", help="sample candidates per class from a GAN run into the review queue")
    s.add_argument("--run", type=int, required=True)
    s.add_argument("--per-class", type=int, required=True)
    s.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--steer", type=int, default=None, metavar="K",
                   help="sample K times as many and keep the best by the dataset's acceptance model")
    s.add_argument("--steer-guard", choices=STEER_GUARDS, default=DEFAULT_STEER_GUARD,
                   help="diversity guard of --steer: coverage (the default: keep as many real cells covered as a "
                        "plain draw), radius (skip near copies) or clusters (best of each k-means cluster of the pool)")
    s.add_argument("--detach", action="store_true", help="queue the job and return at once")

    s = sub.add_parser("review", help="record decisions on candidates")
    s.add_argument("--dataset", required=True)
    s.add_argument("--reviewer", default=None, help="the same as --as: the reviewer or admin account that decides")
    verdict = s.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--accept", action="store_true")
    verdict.add_argument("--reject", action="store_true")
    verdict.add_argument("--relabel", metavar="CLASS")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every candidate still pending for this reviewer")
    which.add_argument("--class", dest="class_name", help="pending candidates of one intended class")
    which.add_argument("--ids", type=int, nargs="+")
    s.add_argument("--reason", default=None, help="reject reason")

    s = sub.add_parser("train", help="train a classifier on a recipe's training set")
    s.add_argument("--dataset", required=True)
    s.add_argument("--recipe", default="real", choices=RECIPES)
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--model", default=None, help="resnet18 (default), small_cnn or any torchvision model name")
    s.add_argument("--batch", type=int, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--val-every", type=int, default=None, help="validate every N epochs and after the last (default 1)")
    s.add_argument("--synthetic-cap", type=float, default=None, help="max synthetic per class, x real count "
                   "(the same as --mix share --mix-share X)")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    s.add_argument("--workers", type=int, default=None, help="data-parallel training processes (DDP; default 1): "
                   "one GPU each on cuda, shares of the cores on cpu")
    s.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="draw every class equally often (default: on when a class is rare, as the Train page)")
    add_compile_flag(s, "the training step")
    add_mix_arguments(s)
    s.add_argument("--detach", action="store_true")

    s = sub.add_parser("runs", help="list runs with kind, status and final metrics")
    s.add_argument("--dataset", default=None)
    s.add_argument("--kind", default=None, choices=JOB_KINDS)

    s = sub.add_parser("cancel", help="ask a running job to stop")
    s.add_argument("run", type=int)
    for module in _extensions():
        module.register(sub)
    _accept_json_everywhere(p)
    return p


def _extensions() -> list:
    """CLI modules of larger areas (quality, review admin, results): each has register(sub) and COMMANDS."""
    import importlib

    return [importlib.import_module(name) for name in EXTENSION_MODULES]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code. Every error becomes one line on stderr (and {"error": ...} on
    stdout with --json) and exit code 2, its full traceback a log file; only --help exits through SystemExit."""
    argv = sys.argv[1:] if argv is None else list(argv)
    wants_json = "--json" in argv  # before parsing succeeds, an error must still honour --json
    args: argparse.Namespace | None = None
    try:
        args = _parser().parse_args(argv)
        from wbc_core import context, jobs

        context.current("cli")  # this process's context: home, database (schema applied), caches
        jobs.reconcile_if_due()  # runs whose worker died are marked failed before anything reads them
        handlers = dict(COMMANDS)
        for module in _extensions():
            handlers.update(module.COMMANDS)
        out = handlers[args.command](args)
        text = out.pop("_text", None)
    except KeyboardInterrupt:
        _emit(wants_json, {"error": "interrupted"}, "interrupted", sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the top level: everything becomes a plain message and an exit code
        return _report(exc, argv, wants_json)
    wants_json = bool(getattr(args, "json", False))
    _emit(wants_json, out, text, sys.stdout)
    return 1 if out.get("status") in ("failed",) else 0


def acting_user(args: argparse.Namespace) -> Any:  # noqa: ANN401 - a wbc_core.auth.User (imported lazily)
    """The account this command acts as: --as NAME (it must exist; never created), else the context's local user,
    created as admin when the database has no account at all. Resolved once per command, on first need."""
    from wbc_core import auth
    from wbc_core.context import current

    if getattr(args, "_acting_user", None) is not None:
        return args._acting_user
    named = getattr(args, "acting_as", None)
    if named is not None:
        user = auth.get_user(named.strip())
        if user is None:
            raise CliError(f"no account {named!r}: --as names an existing account (see `wbc user list`)")
    else:
        try:
            user = auth.claim_local_account(current().settings.local_user)
        except auth.AlreadySetUp as exc:
            raise CliError(f"{exc} with --as NAME (or WBC_USER)") from None
    if user.disabled:
        raise CliError(f"the account {user.username!r} is disabled; ask an admin to enable it")
    args._acting_user = user
    return user


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).strip('"')
    return text or type(exc).__name__


def _report(exc: Exception, argv: list[str], wants_json: bool) -> int:
    """Print exc as one plain line (and one JSON object with --json); log its traceback unless it is a usage
    error. Unexpected kinds of error name the log on that line; plain ones (a missing dataset, a bad value) do
    not clutter it, but their traceback is kept all the same."""
    message = _one_line(exc) + _flag_hint(exc, argv)
    log = None if isinstance(exc, CliError) else _write_log(exc, argv)
    if not isinstance(exc, (CliError, *PLAIN_ERRORS)):
        message = f"unexpected {type(exc).__name__}: {message}" + (f" (traceback in {log})" if log else "")
    payload: dict[str, Any] = {"error": message}
    if log:
        payload["log"] = str(log)
    if wants_json:
        print(json.dumps(payload, default=str))
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _flag_hint(exc: Exception, argv: list[str]) -> str:
    """The CLI's own words for a domain error that speaks of what the user gave (the domain names no flags)."""
    from db.datasets import DatasetExists, DatasetNotFound

    if isinstance(exc, DatasetExists) and "--name" in argv:
        return " (pass another --name)"
    if isinstance(exc, DatasetNotFound):
        return " (see `python -m wbc_core datasets`)"
    if isinstance(exc, LookupError) and "there is no run" in str(exc):
        return " (see `python -m wbc_core runs`)"
    if "working size" in str(exc) and "--size" in argv:
        return " (--size)"
    return ""


def _log_dirs() -> list[Path]:
    """Where CLI error logs go: the home's logs/ folder, else a temp folder (an unwritable or missing home)."""
    from wbc_core import context

    dirs: list[Path] = []
    try:
        home_logs = context.current().paths.logs if context.is_current() else (
            context.Settings.from_environ().home / "logs")
        dirs.append(home_logs)
    except Exception:  # noqa: BLE001 - a broken environment must not hide the original error
        pass
    dirs.append(Path(tempfile.gettempdir()) / "wbc-logs")
    return dirs


def _write_log(exc: BaseException, argv: list[str]) -> Path | None:
    """Write exc's full traceback to <logs>/cli-<timestamp>.log; the path, or None when nowhere is writable."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    body = (f"wbc CLI error at {datetime.now().isoformat(timespec='seconds')}\n"
            f"argv: {json.dumps(argv)}\npython: {sys.version.split()[0]}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for folder in _log_dirs():
        path = folder / f"cli-{stamp}-{os.getpid()}.log"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(body, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def entry() -> None:
    """The `wbc` console script (pyproject.toml) and `python -m wbc_core`."""
    sys.exit(main())


def _emit(as_json: bool, payload: dict[str, Any], text: str | None, stream: Any) -> None:
    """Print the result; a reader that stops early (`runs | head`) ends the output quietly, not with a traceback."""
    target = sys.stdout if as_json else stream
    try:
        if as_json:
            print(json.dumps(payload, default=str), file=target)
        else:
            print(text if text is not None else json.dumps(payload, indent=2, default=str), file=target)
        target.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit and would report the closed pipe there: point it at devnull.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, target.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # a stream without a file descriptor (tests): nothing is flushed at exit
            pass


# -- commands ----------------------------------------------------------------------------------------

def _follow(run_id: int, detach: bool, label: str, user: Any = None) -> dict[str, Any]:  # noqa: ANN401
    """Follow a run with a progress bar; Ctrl-C asks it to stop, as user (the acting account) when given."""
    from db import runs
    from wbc_core import jobs

    if detach:
        return {"run_id": run_id, "status": runs.get_run(run_id).status, "_text": f"started run {run_id}"}
    bar = tqdm(total=1000, desc=label, disable=None, file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")

    def on_poll(info: runs.RunInfo) -> None:
        bar.n = int(info.progress_fraction * 1000)
        bar.set_postfix_str(info.progress_message[:60], refresh=True)

    try:
        info = jobs.wait(run_id, on_poll=on_poll)
    except KeyboardInterrupt:
        if user is not None:
            jobs.cancel(run_id, user)
        else:
            jobs.request_stop(run_id, by="system:cli-interrupt")
        print(f"\ncancelling run {run_id}; it saves a checkpoint and stops", file=sys.stderr)
        info = jobs.wait(run_id, timeout=120)
    finally:
        bar.close()
    payload: dict[str, Any] = {"run_id": run_id, "status": info.status, "device": info.device,
                               "train_set_hash": info.train_set_hash, "config": info.config, **info.result}
    if info.error:
        payload["error"] = info.error.splitlines()[0]
    payload["_text"] = f"run {run_id} {info.status}" + (f": {payload['error']}" if info.error else "")
    return payload


def _train_gan(args: argparse.Namespace) -> dict[str, Any]:
    from db import datasets as ds_db
    from wbc_core import options
    from wbc_core.gan_runs import start_gan_run

    given = {"steps": args.steps, "image_size": args.size, "batch_size": args.batch, "width": args.width,
             "seed": args.seed, "checkpoint_every": args.checkpoint_every, "aux_weight": args.aux_weight,
             "compile": args.compile}
    config = options.gan_config(ds_db.get_dataset(args.dataset).image_size, args.preset, given)
    user = acting_user(args)
    return _follow(start_gan_run(args.dataset, config.to_dict(), user=user), args.detach, "GAN", user)


def _resume_gan(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.gan_runs import resume_gan_run

    user = acting_user(args)
    return _follow(resume_gan_run(args.run, user=user), args.detach, "GAN", user)


def _generate(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core.generation import start_generation

    user = acting_user(args)
    job = start_generation(args.run, args.per_class, step=args.step, seed=args.seed, user=user, steer=args.steer,
                           steer_guard=args.steer_guard)
    out = _follow(job, args.detach, "generating", user)
    if out.get("status") == "succeeded":
        out["_text"] = (f"added {out['candidates']} candidates from run {args.run} step {out['checkpoint_step']} "
                        f"(seed {out['seed']}) to the review queue")
    return out


def _review(args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import get_dataset
    from wbc_core.review_model import decide, queue_page, wait_for_retrain_checks

    user = _reviewer(args)
    reviewer = user.username
    info = get_dataset(args.dataset)
    if args.ids:
        ids = args.ids
    else:
        classes = [args.class_name] if args.class_name else info.class_names
        if args.class_name and args.class_name not in info.class_names:
            raise CliError(f"unknown class {args.class_name!r}; classes: {', '.join(info.class_names)}")
        ids = [row["id"] for c in classes
               for row in queue_page(info.id, c, reviewer, page_size=10**9)[0]]
    verdict = "accept" if args.accept else "reject" if args.reject else "relabel"
    if verdict == "relabel" and args.relabel not in info.class_names:
        raise CliError(f"unknown class {args.relabel!r}; classes: {', '.join(info.class_names)}")
    decision_ids = decide(ids, reviewer, verdict, new_class=args.relabel, reason=args.reason, user=user)
    wait_for_retrain_checks()  # before the process ends: the check may queue the acceptance model's retrain
    return {"dataset": info.name, "reviewer": reviewer, "verdict": verdict, "decided": len(decision_ids),
            "image_ids": ids, "_text": f"{reviewer}: {verdict} x {len(decision_ids)}"}


def _reviewer(args: argparse.Namespace) -> Any:  # noqa: ANN401 - a wbc_core.auth.User
    """The account that reviews: --reviewer NAME (an alias of --as), else the acting account; it must exist and
    hold the reviewer or admin role, so no vote is ever recorded for an unknown name or a viewer."""
    from wbc_core import auth

    named = (args.reviewer or "").strip() or None
    given = getattr(args, "acting_as", None)
    if named is not None and given is not None and given.strip() != named:
        raise CliError(f"--reviewer {named!r} and --as {given.strip()!r} name different accounts; give one")
    if named is not None:
        found = auth.get_user(named)
        if found is None:
            raise CliError(f"no reviewer account {named!r}: decisions are recorded only for existing reviewer "
                           "or admin accounts (see `wbc user list`; an admin adds one with `wbc user add`)")
        args.acting_as = named
    user = acting_user(args)
    if not auth.can(user, "review"):
        raise CliError(f"{user.role} {user.username!r} may not review: only reviewer and admin accounts record "
                       "decisions; ask an admin for the reviewer role")
    return user


def add_mix_arguments(s: argparse.ArgumentParser) -> None:
    """The mixing-strategy options of a classifier command (train; ablation and seeds may share them)."""
    from wbc_core.mixing import MIX_STRATEGIES

    s.add_argument("--mix", default=None, choices=MIX_STRATEGIES,
                   help="how synthetic cells join the real ones: share (x real per class), fill (top every class up "
                   "to a target), weight (synthetic cells count less), two-stage (then fine-tune on real only)")
    s.add_argument("--mix-share", type=float, default=None,
                   help="share: synthetic cells per class, x its real count; caps weight and two-stage")
    s.add_argument("--mix-target", type=int, default=None, help="fill: cells per class after topping up")
    s.add_argument("--mix-weight", type=float, default=None, help="weight: how much a synthetic cell counts (0-1]")
    s.add_argument("--finetune-epochs", type=int, default=None,
                   help="two-stage: the last epochs, on real cells only")


def mix_from_args(args: argparse.Namespace) -> Any:  # noqa: ANN401 - a MixConfig or None (imported lazily)
    """The MixConfig of --mix and its numbers (None without --mix)."""
    from wbc_core.mixing import mix_from_options

    numbers = {"--mix-share": args.mix_share, "--mix-target": args.mix_target, "--mix-weight": args.mix_weight,
               "--finetune-epochs": args.finetune_epochs}
    given = [flag for flag, value in numbers.items() if value is not None]
    if args.mix is None and given:
        raise CliError(f"{given[0]} needs --mix (share, fill, weight or two-stage)")
    return mix_from_options(args.mix, args.mix_share, args.mix_target, args.mix_weight, args.finetune_epochs)


def _train(args: argparse.Namespace) -> dict[str, Any]:
    from db import runs
    from db.datasets import get_dataset
    from wbc_core import options
    from wbc_core.retrain import class_balance_advice, start_classifier_run

    info = get_dataset(args.dataset)
    advice = class_balance_advice(info.id) if args.balanced is None else None
    given = {"epochs": args.epochs, "model": args.model, "batch_size": args.batch, "seed": args.seed,
             "device": args.device, "workers": args.workers, "compile": args.compile, "val_every": args.val_every,
             "balanced_sampling": args.balanced if args.balanced is not None else (True if advice else None)}
    config = options.classifier_config(info.image_size, given)
    mix = mix_from_args(args)
    user = acting_user(args)
    run_id = start_classifier_run(args.dataset, args.recipe, config.to_dict(), synthetic_cap=args.synthetic_cap,
                                  mix=mix, user=user)
    out = _follow(run_id, args.detach, f"classifier ({args.recipe}{', ' + mix.describe() if mix else ''})", user)
    if advice:
        out["balanced_sampling"], out["advice"] = True, advice
        out["_text"] = f"{advice} (--no-balanced turns it off)\n{out.get('_text', '')}"
    test = out.get("test")
    if isinstance(test, dict):
        out["test"] = {k: test[k] for k in ("accuracy", "macro_f1", "per_class_f1", "confusion") if k in test}
        from wbc_core import results

        info = runs.get_run(run_id)
        caveats = results.test_caveats(info.result)
        out["test_cells"], out["caveats"] = caveats["test_cells"], caveats["warnings"]
        out["_text"] += "; test " + results.headline(info.result)
        out["_text"] += "".join(f"\n  warning: {w}" for w in caveats["warnings"])
    return out


def _runs(args: argparse.Namespace) -> dict[str, Any]:
    from db import runs
    from db.datasets import get_dataset
    from wbc_core import jobs, results

    jobs.reconcile()
    dataset_id = get_dataset(args.dataset).id if args.dataset else None
    items = []
    for r in runs.list_runs(dataset_id=dataset_id, kind=args.kind):
        if args.kind is None and r.kind not in TRAINING_KINDS:  # jobs such as "generate" only when asked for
            continue
        test = r.result.get("test") or {}
        caveats = results.test_caveats(r.result) if test else {"test_cells": None, "near_chance": False,
                                                                  "warnings": []}
        items.append({"id": r.id, "kind": r.kind, "dataset": r.dataset_name, "status": r.status, "recipe": r.recipe,
                      "device": r.device, "seed": r.seed, "created_at": r.created_at.isoformat(timespec="seconds"),
                      "train_set_hash": r.train_set_hash, "train_set_size": r.train_set_size,
                      "test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
                      "test_cells": caveats["test_cells"], "near_chance": caveats["near_chance"],
                      "caveats": caveats["warnings"],
                      "steps_done": r.result.get("steps_done"), "started_by": r.started_by,
                      "cancelled_by": r.cancelled_by,
                      "error": r.error.splitlines()[0] if r.error else None})
    lines = [f"{i['id']:>4} {i['kind']:<10} {i['status']:<9} {i['dataset'] or '':<16} {i['recipe'] or '':<13}"
             + (f" macro-F1 {i['test_macro_f1']:.4f} on {i['test_cells']} test cells"
                if i["test_macro_f1"] is not None else "")
             + ("  NEAR CHANCE" if i["near_chance"] else "")
             + ("  few test cells in some classes" if any(w.startswith("few test") for w in i["caveats"]) else "")
             + (f"  started by {i['started_by']}" if i["started_by"] else "")
             + (f", cancelled by {i['cancelled_by']}" if i["cancelled_by"] else "")
             for i in items]
    return {"runs": items, "_text": "\n".join(lines) or "no runs yet"}


def _cancel(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core import jobs

    ok = jobs.cancel(args.run, acting_user(args))
    return {"run_id": args.run, "cancel_requested": ok,
            "_text": f"asked run {args.run} to stop" if ok else f"run {args.run} had already ended"}


COMMANDS = {
    "train-gan": _train_gan, "resume-gan": _resume_gan, "generate": _generate, "review": _review, "train": _train,
    "runs": _runs, "cancel": _cancel,
}
