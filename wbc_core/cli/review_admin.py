"""CLI for review administration: users, adjudication, agreement, review settings, blind test, export.

Loaded by wbc_core.cli through EXTENSION_MODULES: register(subparsers) adds the commands and COMMANDS
maps each name to handler(args) -> dict (printed as JSON with --json; "_text" is the human form).
The CLI is trusted like the database file itself: it acts without a login, but records real names.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from wbc_core.vocabulary import ROLES


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the main parser."""
    s = sub.add_parser("export", help="write the curated dataset as an ImageFolder zip with manifest.csv, "
                       "or as a Hugging Face imagefolder folder with metadata.csv")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="the .zip file (zip) or the new, empty folder (hf) to write")
    # No argparse choices: wbc_core.export.EXPORT_FORMATS checks the word, and importing it here would load
    # the database layer for every command's start-up.
    s.add_argument("--format", default="zip",
                   help="zip: ImageFolder zip (default); hf: folder for datasets.load_dataset('imagefolder', ...)")

    s = sub.add_parser("user", help="manage users: add, list, role, disable, password, unlock")
    users = s.add_subparsers(dest="user_command", required=True)
    u = users.add_parser("add", help="create a local user (password from --password-stdin or a prompt)")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=ROLES)
    u.add_argument("--display-name", default=None)
    u.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    users.add_parser("list", help="list users with role and source")
    u = users.add_parser("role", help="change a user's role")
    u.add_argument("name")
    u.add_argument("role", choices=ROLES)
    u = users.add_parser("disable", help="block a user from signing in (their decisions stay)")
    u.add_argument("name")
    u.add_argument("--enable", action="store_true", help="re-enable instead")
    u = users.add_parser("password", help="set a local user's password")
    u.add_argument("name")
    u.add_argument("--password-stdin", action="store_true")
    u = users.add_parser("unlock", help="clear a user's failed sign-ins, so they can sign in again at once")
    u.add_argument("name")

    s = sub.add_parser("adjudicate", help="an admin's ruling on candidates; overrides the reviewers' consensus")
    s.add_argument("--dataset", required=True)
    s.add_argument("--ids", type=int, nargs="+", required=True)
    s.add_argument("--admin", required=True, help="user name of the admin who rules")
    verdict = s.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--accept", action="store_true")
    verdict.add_argument("--reject", action="store_true")
    verdict.add_argument("--relabel", metavar="CLASS")
    verdict.add_argument("--withdraw", action="store_true", help="withdraw the standing adjudication")
    s.add_argument("--reason", default=None, help="reject reason")

    s = sub.add_parser("agreement", help="Cohen's kappa per reviewer pair and Fleiss' kappa per class")
    s.add_argument("--dataset", required=True)

    s = sub.add_parser("review-settings", help="show or change a dataset's consensus rule and per-class quotas")
    s.add_argument("--dataset", required=True)
    s.add_argument("--min-agreeing", type=int, default=None)
    s.add_argument("--min-votes", type=int, default=None)
    s.add_argument("--quota", action="append", default=[], metavar="CLASS=N",
                   help="target accepted candidates for a class (repeatable; 0 removes it)")
    s.add_argument("--retrain-every", type=int, default=None, metavar="N",
                   help="new decisions between automatic acceptance-model retrains (0 = never; default 50)")

    s = sub.add_parser("blind-test", help="mix real val cells unannounced into a reviewer's queue")
    s.add_argument("--dataset", required=True)
    s.add_argument("--reviewer", required=True)
    s.add_argument("--fraction", type=float, default=0.1, help="share of real cells in the reviewer's queue")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("realism", help="blinded realism test results per reviewer and class")
    s.add_argument("--dataset", required=True)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _user_payload(user) -> dict[str, Any]:  # noqa: ANN001
    return {"username": user.username, "role": user.role, "display_name": user.display_name,
            "source": user.source, "disabled": user.disabled}


def _user(args: argparse.Namespace) -> dict[str, Any]:
    from wbc_core import auth
    from wbc_core.cli.main import acting_user

    cmd = args.user_command
    if cmd == "list":
        items = [_user_payload(u) for u in auth.list_users()]
        lines = [f"{u['username']:<32} {u['role']:<9} {u['source']:<6}" + (" disabled" if u["disabled"] else "")
                 for u in items]
        empty = "no users yet: `python -m wbc_core user add NAME --role admin`"
        return {"users": items, "_text": "\n".join(lines) or empty}
    acting = acting_user(args)
    if not (cmd == "password" and args.name == acting.username):  # refused before a password is asked for
        auth.authorize(acting, "manage_users")
    if cmd == "add":
        user = auth.create_user(args.name, _read_password(args.password_stdin), args.role, args.display_name,
                                user=acting)
        text = f"created {user.role} {user.username!r}"
    elif cmd == "role":
        user = auth.set_role(args.name, args.role, user=acting)
        text = f"{user.username!r} is now {user.role}"
    elif cmd == "disable":
        user = auth.disable_user(args.name, disabled=not args.enable, user=acting)
        text = f"{user.username!r} " + ("disabled" if user.disabled else "enabled")
    elif cmd == "unlock":
        user = auth.unlock_user(args.name, user=acting)
        text = f"{user.username!r} may sign in again at once (failed sign-ins cleared)"
    else:
        user = auth.set_password(args.name, _read_password(args.password_stdin), user=acting)
        text = f"changed the password of {user.username!r}"
    return {**_user_payload(user), "_text": text}


def _export(args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import get_dataset
    from wbc_core.cli.main import acting_user
    from wbc_core.export import export_curated

    info = get_dataset(args.dataset)
    summary = export_curated(info.id, args.out, args.format, user=acting_user(args))
    per_split = {split: sum(c.values()) for split, c in summary.counts.items()}
    return {"dataset": info.name, "format": args.format, "path": str(summary.path), "files": summary.files,
            "candidates": summary.candidates, "counts": summary.counts, "bytes": summary.size_bytes,
            "_text": f"wrote {summary.path}: {summary.files} images ({summary.candidates} accepted candidates); "
                     + ", ".join(f"{k} {v}" for k, v in per_split.items())}


def _adjudicate(args: argparse.Namespace) -> dict[str, Any]:
    from db import decisions as decisions_db
    from db.datasets import get_dataset
    from wbc_core import auth, review_model

    info = get_dataset(args.dataset)
    admin = auth.get_user(args.admin)
    if admin is None:
        raise LookupError(f"no user {args.admin!r}; see `python -m wbc_core user list`")
    owners = decisions_db.dataset_of_images(args.ids)
    foreign = [i for i in args.ids if owners.get(i) != info.id]
    if foreign:
        raise ValueError(f"ids {foreign[:10]} are not images of dataset {info.name!r}")
    verdict = ("accept" if args.accept else "reject" if args.reject else "undo" if args.withdraw else "relabel")
    ids = review_model.adjudicate(args.ids, admin, verdict, new_class=args.relabel, reason=args.reason)
    return {"dataset": info.name, "admin": admin.username, "verdict": verdict, "adjudicated": len(ids),
            "image_ids": args.ids, "_text": f"{admin.username}: adjudicated {verdict} x {len(ids)}"}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _agreement(args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import get_dataset
    from wbc_core.agreement import agreement_report

    info = get_dataset(args.dataset)
    report = agreement_report(info.id)
    lines = [f"Cohen's kappa  {p['reviewer_a']} / {p['reviewer_b']}: {_fmt(p['kappa'])} over {p['n']} candidates"
             for p in report["pairs"]]
    lines += [f"Fleiss' kappa  {c['class_name']}: {_fmt(c['kappa'])} over {c['items']} candidates"
              for c in report["classes"]]
    lines.append(f"Fleiss' kappa  all classes: {_fmt(report['overall']['kappa'])}")
    return {"dataset": info.name, **report, "_text": "\n".join(lines)}


def _review_settings(args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import get_dataset
    from wbc_core import review_model
    from wbc_core.cli.main import acting_user

    info = get_dataset(args.dataset)
    current = review_model.get_review_settings(info.id)
    changed = (args.min_agreeing is not None or args.min_votes is not None or args.quota
               or args.retrain_every is not None)
    if changed:
        quotas = dict(current.quotas)
        for item in args.quota:
            name, sep, value = item.rpartition("=")
            if not sep or not name or not value.strip().isdigit():
                raise ValueError(f"--quota takes CLASS=N with N a whole number, got {item!r}")
            quotas[name] = int(value)
        rule = review_model.ConsensusRule(
            args.min_agreeing if args.min_agreeing is not None else current.rule.min_agreeing,
            args.min_votes if args.min_votes is not None else current.rule.min_votes)
        every = args.retrain_every if args.retrain_every is not None else current.retrain_every
        current = review_model.set_review_settings(info.id, review_model.ReviewSettings(rule, quotas, every),
                                                    acting_user(args))
    out = current.to_dict()
    quota_text = ", ".join(f"{c}={n}" for c, n in out["quotas"].items()) or "none"
    return {"dataset": info.name, **out, "changed": bool(changed),
            "_text": f"{info.name}: accepted when {out['min_agreeing']} agree out of at least {out['min_votes']} "
                     f"votes; quotas: {quota_text}"}


def _blind_test(args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import get_dataset
    from wbc_core import review_model
    from wbc_core.cli.main import acting_user

    info = get_dataset(args.dataset)
    added = review_model.enable_blind_test(info.id, args.reviewer, args.fraction, args.seed, user=acting_user(args))
    return {"dataset": info.name, "reviewer": args.reviewer, "added": added,
            "_text": f"mixed {sum(added.values())} real val cells into {args.reviewer}'s queue (not announced)"}


def _realism(args: argparse.Namespace) -> dict[str, Any]:
    from db.datasets import get_dataset
    from wbc_core.agreement import realism_report

    info = get_dataset(args.dataset)
    report = realism_report(info.id)
    lines = [f"{r['reviewer']}: rejected {r['real_rejected']} of {r['real_decided']} real cells as fake "
             f"({_fmt(r['rejected_as_fake_rate'])}); {r['real_shown']} shown" for r in report["reviewers"]]
    lines += [f"{c['class_name']}: candidates pass as real {_fmt(c['candidate_pass_rate'])}, "
              f"real cells {_fmt(c['real_accept_rate'])}" for c in report["classes"]]
    return {"dataset": info.name, **report, "_text": "\n".join(lines) or "no blind test on this dataset"}


COMMANDS = {"export": _export, "user": _user, "adjudicate": _adjudicate, "agreement": _agreement,
            "review-settings": _review_settings, "blind-test": _blind_test, "realism": _realism}
