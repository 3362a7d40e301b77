"""The CLI as people type it, and bad values fed to it: `--json` before or after every command, every failure a
one-line message with a non-zero exit code (its traceback in a log file), never a traceback on the terminal.

In-process: `wbc_core.cli.main.main([...])` against the `wbc_home` fixture's database.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from db import runs as runs_db
from wbc_core.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


# -- --json anywhere, for every command ----------------------------------------------------------------------------


def _value(action: argparse.Action) -> list[str]:
    """A value argparse accepts for one argument (the first choice, a number for numbers, else a word)."""
    if action.choices:
        word = str(next(iter(action.choices)))
    elif action.type in (int, float):
        word = "1"
    else:
        word = "x"
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return [word] * (action.nargs if isinstance(action.nargs, int) else 1)
    return [word]


def _minimal_argv(parser: argparse.ArgumentParser) -> list[list[str]]:
    """Shortest command lines that parse: required positionals and options (one of each required group);
    a nested command (`user add`) gives one line per subcommand."""
    argv: list[str] = []
    chosen_groups = set()
    for group in parser._mutually_exclusive_groups:
        if group.required:
            first = group._group_actions[0]
            chosen_groups.add(id(first))
    nested: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested += [[name, *rest] for rest in _minimal_argv(sub)]
            continue
        if not action.option_strings:
            argv += _value(action)
        elif action.required or id(action) in chosen_groups:
            flag = action.option_strings[-1]
            argv += [flag] if action.nargs == 0 else [flag, *_value(action)]
    return [argv + rest for rest in nested] if nested else [argv]


def _all_commands() -> list[list[str]]:
    return _minimal_argv(cli_main._parser())


def test_the_command_list_covers_every_module():
    firsts = {argv[0] for argv in _all_commands()}
    expected = set(cli_main.COMMANDS)
    for module in cli_main._extensions():
        expected |= set(module.COMMANDS)
    assert firsts == expected
    assert {"export", "user", "quality", "ablation", "review-settings"} <= firsts  # the extension modules' too
    assert sum(1 for argv in _all_commands() if argv[0] == "user") >= 5  # user add, list, role, ...


@pytest.mark.parametrize("argv", _all_commands(), ids=lambda a: " ".join(a))
def test_json_is_accepted_before_and_after_every_command(argv):
    parser = cli_main._parser()
    assert parser.parse_args(argv).json is False
    assert parser.parse_args(["--json", *argv]).json is True
    assert parser.parse_args([*argv, "--json"]).json is True
    # Right after the command word (also between `user` and `add`), and given twice, it means the same.
    assert parser.parse_args([argv[0], "--json", *argv[1:]]).json is True
    assert parser.parse_args(["--json", *argv, "--json"]).json is True


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    """Exit code, stdout lines and stderr lines of one in-process CLI call."""
    code = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def test_json_after_the_command_prints_one_object(wbc_home, capsys):
    for argv in (["--json", "datasets"], ["datasets", "--json"], ["user", "list", "--json"]):
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert len(out) == 1 and isinstance(json.loads(out[0]), dict)


# -- bad values: a plain line, a non-zero exit, no traceback ----------------------------------------------------


@pytest.fixture()
def tiny(wbc_home, tiny_folder, capsys):
    """Dataset 'tiny': 3 classes x 12 cells at 32 px (24 train cells)."""
    code, _, err = run(capsys, "import", str(tiny_folder), "--name", "tiny", "--size", "32", "--json")
    assert code == 0, err
    return "tiny"


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run argv with --json; assert a plain refusal (exit 2, one JSON line, one stderr line, no traceback)."""
    code, out, err = run(capsys, *argv, "--json")
    assert code == cli_main.EXIT_ERROR, (out, err)
    assert len(out) == 1, out
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in "\n".join(out + err)
    return json.loads(out[0])["error"]


def test_generate_refuses_an_absurd_number_of_candidates(tiny, capsys):
    # Was: a 51 TB allocation traceback in the sampler.
    message = refused(capsys, "generate", "--run", "1", "--per-class", "99999999999")
    assert "candidates per class must be a whole number from 1 to 5,000, got 99,999,999,999" in message
    assert "candidates per class must be" in refused(capsys, "generate", "--run", "1", "--per-class", "0")


def test_train_gan_refuses_huge_batches_and_steps(tiny, capsys):
    # Was: accepted, then the worker was OOM-killed at 13 GB ("killed or crashed").
    assert "batch_size must be a whole number from 2 to 1,024, got 100,000" in refused(
        capsys, "train-gan", "--dataset", tiny, "--batch", "100000")
    assert "a batch of 512 cells is larger than the 24 train cells" in refused(
        capsys, "train-gan", "--dataset", tiny, "--batch", "512")
    assert "steps must be a whole number from 1 to 1,000,000" in refused(
        capsys, "train-gan", "--dataset", tiny, "--steps", "100000000000000000000000")
    # 1e23 is not a whole number as typed: argparse's own refusal, as one line with --json too.
    assert "argument --steps: invalid int value: '1e23'" in refused(
        capsys, "train-gan", "--dataset", tiny, "--steps", "1e23")
    assert "aux_weight must be a number from 0 to 10, got nan" in refused(
        capsys, "train-gan", "--dataset", tiny, "--aux-weight", "nan")
    assert "g_width must be a whole number from 8 to 1,024" in refused(
        capsys, "train-gan", "--dataset", tiny, "--width", "4096")
    assert runs_db.list_runs() == []  # nothing was queued


def test_train_gan_refuses_a_run_that_cannot_fit_in_memory(tiny, capsys, monkeypatch):
    from wbc_core import limits

    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 512 * 1024**2)
    message = refused(capsys, "train-gan", "--dataset", tiny, "--batch", "16", "--width", "8")
    assert "needs about" in message and "GiB of memory, but this machine has 0.5 GiB available" in message
    assert runs_db.list_runs() == []


def test_train_refuses_nan_and_out_of_range_synthetic_caps(tiny, capsys):
    # Was: NaN stored in the run's config JSON, which later broke queries.
    for cap in ("nan", "inf", "-1", "1e9"):
        message = refused(capsys, "train", "--dataset", tiny, "--synthetic-cap", cap)
        assert "synthetic cap (times the real cells per class) must be a number from 0 to 100" in message
    assert "epochs must be a whole number from 1 to 1,000" in refused(
        capsys, "train", "--dataset", tiny, "--epochs", "100000")
    assert "batch_size must be a whole number from 2 to 4,096" in refused(
        capsys, "train", "--dataset", tiny, "--batch", "1000000")
    assert "val_every must be a whole number from 1 to 1,000" in refused(
        capsys, "train", "--dataset", tiny, "--val-every", "0")
    assert runs_db.list_runs() == []


def test_review_settings_refuse_quotas_beyond_the_limit(tiny, capsys):
    # Was: stored, then the Admin page (widget max 1,000,000) and the Review page (1e20) crashed.
    for quota in ("2000000", "100000000000000000000"):
        message = refused(capsys, "review-settings", "--dataset", tiny, "--quota", f"platelet={quota}")
        assert "the quota of platelet must be a whole number from 0 to 1,000,000" in message
    assert "reviewers who must agree must be a whole number from 1 to 20" in refused(
        capsys, "review-settings", "--dataset", tiny, "--min-agreeing", "1000")
    code, out, _ = run(capsys, "review-settings", "--dataset", tiny, "--quota", "platelet=1000000", "--json")
    assert code == 0 and json.loads(out[0])["quotas"] == {"platelet": 1_000_000}


def test_stored_out_of_range_review_settings_read_back_in_range(tiny, capsys):
    from db import datasets as ds_db
    from db import decisions as decisions_db

    ds = ds_db.get_dataset(tiny).id
    decisions_db.set_review_settings(ds, {"min_agreeing": 50, "min_votes": 3,
                                          "quotas": {"platelet": 10**20, "neutrophil": 2_000_000, "lymphocyte": -4}})
    code, out, err = run(capsys, "review-settings", "--dataset", tiny, "--json")
    assert code == 0, err
    shown = json.loads(out[0])
    assert (shown["min_agreeing"], shown["min_votes"]) == (20, 20)
    assert shown["quotas"] == {"platelet": 1_000_000, "neutrophil": 1_000_000}


def test_blind_fraction_beyond_the_limit_is_refused(tiny, capsys):
    assert "blind fraction must be above 0 and at most 0.5" in refused(
        capsys, "blind-test", "--dataset", tiny, "--reviewer", "ann", "--fraction", "nan")


# -- the top level: any error, a usage error, Ctrl-C -------------------------------------------------------------


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_a_named_log(wbc_home, capsys, monkeypatch):
    def broken(_args):  # noqa: ANN001, ANN202
        raise ZeroDivisionError("something deep went wrong")

    monkeypatch.setitem(cli_main.COMMANDS, "runs", broken)
    code, out, err = run(capsys, "runs")
    assert code == cli_main.EXIT_ERROR and out == []
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("error: unexpected ZeroDivisionError: something deep went wrong (traceback in ")
    log = Path(err[0].rsplit("(traceback in ", 1)[1].rstrip(")"))
    assert log.parent == wbc_home / "logs" and log.name.startswith("cli-") and log.suffix == ".log"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "def broken" not in text and "broken" in text
    assert '"runs"' in text  # the command line that failed
    code, out, _ = run(capsys, "runs", "--json")
    payload = json.loads(out[0])
    assert payload["error"].startswith("unexpected ZeroDivisionError") and Path(payload["log"]).is_file()


def test_the_log_falls_back_to_a_temp_folder_when_the_home_is_unwritable(wbc_home, capsys, monkeypatch, tmp_path):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (wbc_home / "logs").rmdir() if (wbc_home / "logs").is_dir() else None
    (wbc_home / "logs").write_text("a file where the folder should be")  # mkdir and writes inside it fail

    def broken(_args):  # noqa: ANN001, ANN202
        raise RuntimeError("boom")

    monkeypatch.setitem(cli_main.COMMANDS, "runs", broken)
    code, _, err = run(capsys, "runs")
    assert code == cli_main.EXIT_ERROR
    log = Path(err[0].rsplit("(traceback in ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "tmp" / "wbc-logs" and "RuntimeError: boom" in log.read_text()


def test_plain_errors_keep_their_message_and_log_quietly(wbc_home, capsys):
    code, out, err = run(capsys, "train-gan", "--dataset", "nope", "--json")
    assert code == cli_main.EXIT_ERROR
    payload = json.loads(out[0])
    assert payload["error"] == err[0].removeprefix("error: ") and "no dataset 'nope'" in payload["error"]
    assert "unexpected" not in payload["error"] and Path(payload["log"]).is_file()


def test_usage_errors_are_one_line_and_honour_json(wbc_home, capsys):
    for argv in (["nonsense", "--json"], ["--json", "train-gan"], ["generate", "--run", "x", "--json"]):
        code, out, err = run(capsys, *argv)
        assert code == cli_main.EXIT_ERROR
        assert len(out) == 1 and "error" in json.loads(out[0]) and len(err) == 1, (out, err)
    code, out, err = run(capsys, "nonsense")
    assert code == cli_main.EXIT_ERROR and out == [] and "invalid choice: 'nonsense'" in err[0]


def test_ctrl_c_exits_130(wbc_home, capsys, monkeypatch):
    def interrupted(_args):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setitem(cli_main.COMMANDS, "runs", interrupted)
    code, out, _ = run(capsys, "runs", "--json")
    assert code == 130 and json.loads(out[0]) == {"error": "interrupted"}


def test_python_dash_m_and_the_entry_point_agree(tmp_path):
    """`python -m wbc_core` (and the `wbc` script, which calls the same entry()) in a real process."""
    import os

    env = {**os.environ, "WBC_HOME": str(tmp_path / "home")}
    env.pop("WBC_DB_URL", None)
    for argv in (["-m", "wbc_core", "datasets", "--json"],
                 ["-c", "import sys; sys.argv = ['wbc', '--json', 'datasets']; "
                        "from wbc_core.cli.main import entry; entry()"]):
        out = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip()) == {"datasets": []}


def test_domain_errors_name_no_flags_and_the_cli_adds_its_own(wbc_home, capsys):
    from wbc_core.cli.main import main as cli_main

    assert cli_main(["demo", "--name", "d", "--per-class", "4", "--size", "32"]) == 0
    capsys.readouterr()
    assert cli_main(["demo", "--name", "d", "--per-class", "4", "--size", "32", "--json"]) == 2
    error = capsys.readouterr().err
    assert "a dataset named 'd' already exists; choose another name (pass another --name)" in error
    from db import datasets as ds_db

    with pytest.raises(ds_db.DatasetExists) as caught:
        ds_db.create_dataset("d", "real", "", ["a"], {}, "", {}, [], image_size=32)
    assert "--" not in str(caught.value)  # the domain's own words name no flag
