"""How rank 0 of a DDP classifier run reads the end of its spawned ranks (wbc_core.classifier.distributed).

Real spawned processes, as in training: a rank that dies by a signal leaves no Python traceback, so the run's
message must quote what the rank printed (its RANK_LOG), and a rank that dies after training has finished must not
fail a run whose model rank 0 already holds (CI once lost a finished run to a SIGABRT during a rank's teardown).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from wbc_core.classifier import distributed as ddp

LAST_WORDS = "terminate called after throwing an instance of 'gloo::IoException'"


def _abort_after_last_words(index: int, out_dir: str) -> None:
    """A spawned rank that logs like the real one, says what a C++ abort says, then aborts."""
    ddp._output_to(Path(out_dir) / ddp.RANK_LOG.format(rank=index + 1))
    print("rank started", flush=True)
    os.write(2, (LAST_WORDS + "\n").encode())
    os.abort()


def _end_cleanly(index: int, out_dir: str) -> None:
    ddp._output_to(Path(out_dir) / ddp.RANK_LOG.format(rank=index + 1))
    print("rank done", flush=True)
    sys.stdout.flush()


def _spawn(fn, out_dir: Path):  # noqa: ANN001, ANN202
    with ddp._plain_main():
        return mp.start_processes(fn, args=(str(out_dir),), nprocs=1, join=False, start_method="spawn")


def test_a_rank_killed_by_a_signal_after_training_is_a_warning_that_quotes_its_log(tmp_path):
    problem = ddp.wait_for_ranks(_spawn(_abort_after_last_words, tmp_path), tmp_path, world=2)
    assert problem is not None and problem.startswith("warning: training rank 1 of 2 failed")
    assert "SIGABRT" in problem and LAST_WORDS in problem and "rank started" in problem
    assert "the model is complete" in problem
    assert (tmp_path / "rank1.log").read_text().count(LAST_WORDS) == 1  # the rank's stderr, at the fd level


def test_ranks_that_end_cleanly_give_no_warning_and_keep_their_log(tmp_path):
    assert ddp.wait_for_ranks(_spawn(_end_cleanly, tmp_path), tmp_path, world=2) is None
    assert "rank done" in (tmp_path / "rank1.log").read_text()


def test_a_failed_rank_without_a_log_says_so(tmp_path):
    exc = mp.ProcessExitedException("process 2 terminated with signal SIGKILL", error_index=2, error_pid=1,
                                    exit_code=-9, signal_name="SIGKILL")
    message = ddp.rank_failure(exc, tmp_path, world=4)
    assert message == (f"training rank 3 of 4 failed: process 2 terminated with signal SIGKILL; it left nothing in "
                       f"{tmp_path / 'rank3.log'}")


@pytest.mark.parametrize("lines", [3, ddp.LOG_TAIL_LINES + 10])
def test_a_failed_rank_quotes_only_the_end_of_a_long_log(tmp_path, lines):
    (tmp_path / "rank1.log").write_text("".join(f"line {i}\n" for i in range(lines)))
    exc = mp.ProcessRaisedException("Traceback ...\nValueError: bad shard", error_index=0, error_pid=1)
    message = ddp.rank_failure(exc, tmp_path, world=2)
    assert "ValueError: bad shard" in message and f"line {lines - 1}" in message
    assert ("line 0\n" in message) == (lines <= ddp.LOG_TAIL_LINES)
