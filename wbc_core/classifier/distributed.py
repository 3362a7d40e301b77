"""Data-parallel classifier training: config.workers processes in one DistributedDataParallel group.

The job's own process is rank 0: it keeps the job's progress and cancel callbacks (the database stays the one
channel: only rank 0 writes metrics, heartbeat and checkpoints, and its cancel flag is broadcast to every rank at
each step). Ranks 1..N-1 are spawned here (torch.multiprocessing, spawn start method) and load the same frozen
training set, written once to the run folder, so the training-set hash and the sample order are those of the run.
The group meets over TCP on 127.0.0.1 (the env:// contract of torchrun, without a separate launcher): gloo on CPU,
nccl on CUDA with one GPU per rank (`cuda:<rank>`), so a Ray job asks for `workers` GPUs on one node.

Why not Ray Train: the trainer keeps the uint8 cells on the device and reports through the job's callbacks; Ray
Train would run every rank, rank 0 included, as an actor away from the job process (a second channel for metrics
and cancel) and needs a Ray cluster even when jobs run locally. Multi-node DDP is not covered here.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from wbc_core.classifier.config import ClassifierConfig
from wbc_core.classifier.models import resolve_device
from wbc_core.classifier.sampling import steps_per_epoch
from wbc_core.types import LabelledImages, ProgressEvent, ProgressFn, ShouldStopFn

SHARD_FILE = "ddp_data.pt"  # the frozen train/val tensors the spawned ranks load (removed when training ends)
RANK_LOG = "rank{rank}.log"  # a spawned rank's stdout and stderr, C++ aborts included (kept in the run folder)
LOG_TAIL_LINES = 15  # lines of a failed rank's log quoted in the run's error
GROUP_TIMEOUT = datetime.timedelta(minutes=10)  # a rank that vanished makes the others fail after this at the latest
JOIN_POLL_SECONDS = 0.2  # how often rank 0 checks, while the group forms, that the spawned ranks are still alive


class RankDied(RuntimeError):
    """A spawned rank ended before the group formed (it could not start: import error, memory, a signal)."""


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(config: ClassifierConfig, rank: int) -> torch.device:
    """The device of one rank: cuda:<rank> when the run trains on CUDA, else the CPU."""
    device = resolve_device(config.device)
    if device.type != "cuda":
        return torch.device("cpu")
    return torch.device("cuda", rank)


def check_world(config: ClassifierConfig, train_cells: int) -> None:
    """ValueError in plain words when config.workers processes cannot train this set or find their GPUs."""
    world = config.workers
    smallest = train_cells // steps_per_epoch(train_cells, config.batch_size)  # the smallest batch of an epoch
    if smallest < 2 * world:
        raise ValueError(f"{world} workers need batches of at least {2 * world} cells (2 each for batch norm), but "
                         f"{train_cells} train cells in batches of {config.batch_size} give batches of {smallest}: "
                         f"choose fewer workers or a larger batch")
    if resolve_device(config.device).type == "cuda" and torch.cuda.device_count() < world:
        raise ValueError(f"{world} workers train on one GPU each, but this machine shows "
                         f"{torch.cuda.device_count()} CUDA GPU(s): choose at most that many workers")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_distributed(train: LabelledImages, val: LabelledImages, class_names: list[str], config: ClassifierConfig,
                      out_dir: Path, progress: ProgressFn, should_stop: ShouldStopFn,
                      train_weights: torch.Tensor | None):  # noqa: ANN201 - ClassifierResult (train imports us)
    """Train with config.workers DDP ranks; this process is rank 0 and returns the run's ClassifierResult."""
    import torch.multiprocessing as mp

    check_world(config, len(train))
    world = config.workers
    shared = out_dir / SHARD_FILE
    torch.save({"train": (train.images, train.labels), "val": (val.images, val.labels), "weights": train_weights},
               shared)
    port = _free_port()
    with _plain_main():
        ranks = mp.start_processes(_rank_main, args=(world, port, str(shared), class_names, config.to_dict(),
                                                     str(out_dir)), nprocs=world - 1, join=False, start_method="spawn")

    def dead_rank() -> str | None:
        for index, process in enumerate(ranks.processes):
            if process.exitcode is not None:
                return f"training rank {index + 1} of {world} ended (exit code {process.exitcode}) before it joined"
        return None

    try:
        try:
            result = _rank(0, world, port, train, val, class_names, config, out_dir, progress, should_stop,
                           train_weights, dead_rank=dead_rank)
        except Exception:
            try:
                ranks.join(timeout=5)  # a rank that failed first is the cause: raise its error instead
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
                raise RuntimeError(rank_failure(exc, out_dir, world)) from exc
            raise
        problem = wait_for_ranks(ranks, out_dir, world)
        if problem:
            progress(ProgressEvent(step=result.epochs_done, total=config.epochs, message=problem))
        return result
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.terminate()
        with contextlib.suppress(OSError):
            shared.unlink()


def rank_failure(exc: Exception, out_dir: Path, world: int) -> str:
    """A spawned rank's failure in plain words, with the end of its log: a rank killed by a signal (a C++ abort, the
    out-of-memory killer) leaves no Python traceback, only what it printed before it died."""
    index = getattr(exc, "error_index", 0) + 1
    how = str(exc).strip() or type(exc).__name__  # a Python error's traceback, or "terminated with signal ..."
    log = out_dir / RANK_LOG.format(rank=index)
    try:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        tail = []
    quoted = ("; the end of its log (" + str(log) + "):\n" + "\n".join(tail)) if any(tail) else \
        f"; it left nothing in {log}"
    return f"training rank {index} of {world} failed: {how}{quoted}"


def wait_for_ranks(ranks: Any, out_dir: Path, world: int) -> str | None:  # noqa: ANN401 - torch's ProcessContext
    """Wait until every spawned rank has ended, once rank 0 holds the trained model. A rank can only end badly now
    after its last collective (a rank that failed earlier fails rank 0's collectives with it), so its part is in
    rank 0's weights already: such an ending (seen in CI as a SIGABRT while a rank's process tore itself down)
    becomes a warning for the run's log, not a failed run. None when every rank ended cleanly."""
    import torch.multiprocessing as mp

    try:
        while not ranks.join():
            pass
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        return f"warning: {rank_failure(exc, out_dir, world)}\n(after training had finished: the model is complete)"
    return None


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """An empty __main__ while the ranks are spawned. The spawn start method re-runs the parent's __main__ script in
    every child; whoever started this process may have put a script there that must not run twice (Streamlit's
    AppTest puts the page script there, which then failed in the rank and left it dead before the rendezvous).
    The ranks need nothing from __main__: their entry point lives in this module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _rank_main(index: int, world: int, port: int, shared: str, class_names: list[str], config: dict[str, Any],
               out_dir: str) -> None:
    """A spawned rank (1..N-1): load the frozen tensors, train its shards, report nothing itself. Its output goes to
    RANK_LOG in the run folder, where rank 0 finds it when this rank fails (a Ray job's log is not a file here)."""
    _output_to(Path(out_dir) / RANK_LOG.format(rank=index + 1))
    data = torch.load(shared, weights_only=True)
    train, val = LabelledImages(*data["train"]), LabelledImages(*data["val"])
    _rank(index + 1, world, port, train, val, class_names, ClassifierConfig.from_dict(config), Path(out_dir),
          lambda _event: None, lambda: False, data["weights"])
    # Skip the interpreter's teardown: this rank's part is done and it owns no file to close, while C++ destructors
    # of the process group and thread pools running at exit are where a rank was seen to abort.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _output_to(log: Path) -> None:
    """Send this process's stdout and stderr, at the file-descriptor level (C++ messages too), to log."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _join(rank: int, world: int, port: int, dead_rank: Callable[[], str | None] | None):  # noqa: ANN202 - TCPStore
    """The group's key-value store on 127.0.0.1:port. Rank 0 hosts it and waits for every rank to check in, and
    stops waiting with RankDied as soon as a spawned rank has ended: without this, a rank that could not start
    left rank 0 blocked in the rendezvous for the whole GROUP_TIMEOUT."""
    import time

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0, timeout=GROUP_TIMEOUT,
                          wait_for_workers=False)
    store.set(f"joined/{rank}", "1")
    if rank == 0:
        waiting = [f"joined/{r}" for r in range(1, world)]
        deadline = time.monotonic() + GROUP_TIMEOUT.total_seconds()
        while not store.check(waiting):
            problem = dead_rank() if dead_rank is not None else None
            if problem:
                raise RankDied(problem + ": see the run's log for its error")
            if time.monotonic() > deadline:
                raise RankDied(f"the {world - 1} other training rank(s) did not join within {GROUP_TIMEOUT}")
            time.sleep(JOIN_POLL_SECONDS)
    return store


def _rank(rank: int, world: int, port: int, train: LabelledImages, val: LabelledImages, class_names: list[str],
          config: ClassifierConfig, out_dir: Path, progress: ProgressFn, should_stop: ShouldStopFn,
          train_weights: torch.Tensor | None,
          dead_rank: Callable[[], str | None] | None = None):  # noqa: ANN202
    import torch.distributed as dist

    from wbc_core.classifier.train import _Run
    from wbc_core.threads import torch_threads

    device = rank_device(config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the group meets on the loopback only
    store = _join(rank, world, port, dead_rank)
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world, timeout=GROUP_TIMEOUT)
    # On the CPU the ranks share the cores: without a thread count each would take all of them.
    threads = config.num_threads or (0 if device.type == "cuda" else max(1, (os.cpu_count() or 1) // world))
    try:
        with torch_threads(threads), torch.random.fork_rng(devices=[device.index or 0]
                                                                       if device.type == "cuda" else []):
            torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
            run = _Run(train, val, class_names, config, out_dir, device, progress, should_stop, train_weights,
                       rank=rank, world=world)
            return run.fit()
    finally:
        dist.destroy_process_group()
