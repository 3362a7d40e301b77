"""One vocabulary: the database's CHECK constraints hold exactly the words of db.vocabulary, on both databases,
and the CLI and pages offer the same words."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text

from db import vocabulary
from db.engine import get_engine

pytestmark = pytest.mark.databases("sqlite", "postgresql")

CONSTRAINTS = {
    "ck_runs_kind": ("runs", vocabulary.JOB_KINDS),
    "ck_runs_status": ("runs", vocabulary.RUN_STATUSES),
    "ck_users_role": ("users", vocabulary.ROLES),
    "ck_users_source": ("users", vocabulary.USER_SOURCES),
    "ck_decisions_verdict": ("decisions", vocabulary.VERDICTS),
    "ck_images_origin": ("images", vocabulary.ORIGINS),
}


def _constraint_text(name: str, table: str) -> str:
    engine = get_engine()
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE type='table' AND name=:t"), {"t": table})
            create = sql.scalar_one()
            match = re.search(rf"CONSTRAINT {name} CHECK \((.*?)\)(,|\s*\n|\s*\))", create, re.S)
            assert match, f"{name} not found in {create}"
            return match.group(1)
        return conn.execute(text("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :n"),
                            {"n": name}).scalar_one()


@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
def test_check_constraints_hold_exactly_the_vocabulary(wbc_home, name):
    table, words = CONSTRAINTS[name]
    found = set(re.findall(r"'([^']+)'", _constraint_text(name, table)))
    assert found == set(words)


def test_the_cli_offers_the_vocabulary_words():
    import argparse

    from wbc_core.cli.main import _parser

    choices: dict[str, set] = {}
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for a in sub._actions:
                    if a.choices and a.dest in ("recipe", "kind", "role"):
                        choices[f"{command}.{a.dest}"] = set(a.choices)
    assert choices["train.recipe"] == set(vocabulary.RECIPES)
    assert choices["runs.kind"] == set(vocabulary.JOB_KINDS)
    assert all(v == set(vocabulary.ROLES) for k, v in choices.items() if k.endswith(".role"))
