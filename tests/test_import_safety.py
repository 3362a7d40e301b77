"""Nothing lost, nothing left behind: interrupted and racing imports, full disks, zip bombs, unsafe class names."""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import unicodedata
import weakref
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import account, context_on, small_disk, wait_for

from db import datasets as ds_db
from wbc_core import context, importing
from wbc_core.data.ingest import IngestConfig, IngestError, ingest
from wbc_core.diskspace import DiskFull
from wbc_core.staging import OWNER_FILE, clean_stale_staging

ROOT = Path(__file__).resolve().parents[1]
ingest_module = importlib.import_module("wbc_core.data.ingest")  # the module; wbc_core.data.ingest is the function
IMAGE_SUFFIXES = {".png", ".jpg"}


def noise_png(path: Path, seed: int, size: int = 16, mode: str = "RGB") -> Path:
    """A small unique image (noise: no two seeds give the same bytes)."""
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, compress_level=1)
    return path


def cells_folder(root: Path, per_class: int, classes: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for k, name in enumerate(classes):
        for i in range(per_class):
            noise_png(root / name / f"{i:04d}.png", 10_000 * k + i)
    return root


def image_files(folder: Path) -> list[Path]:
    """Every stored cell file below a folder."""
    return sorted(p for p in folder.rglob("*") if p.suffix in IMAGE_SUFFIXES and p.is_file())


def stored_paths(home: Path) -> set[Path]:
    """The files the database knows, as absolute paths."""
    return {home / r.path for info in ds_db.list_datasets() for r in ds_db.real_images(info.id)}


def assert_nothing_left_behind(home: Path) -> None:
    """Every cell file under the home belongs to a dataset row, and no staging folder is left."""
    assert set(image_files(home)) == stored_paths(home)
    staging = home / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


# --- an import killed with SIGKILL, and two racing for one name ----------------------------------------------

_SLOW_IMPORT = """
import pathlib, sys, time
from wbc_core import auth, context
from wbc_core.importing import import_folder

_write = pathlib.Path.write_bytes
def slow_write(self, data):  # a slow disk: gives the test time to kill the import half-way
    time.sleep(0.02)
    return _write(self, data)
pathlib.Path.write_bytes = slow_write
ctx = context.build("cli", home=sys.argv[1])
with context.using(ctx):
    import_folder(sys.argv[2], "cells", size=32, user=auth.claim_local_account("local"))
print("finished")
"""


def test_an_import_killed_mid_way_leaves_no_files_after_the_next_start(tmp_path: Path) -> None:
    home, source = tmp_path / "home", cells_folder(tmp_path / "src", per_class=100)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_IMPORT, str(home), str(source)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(image_files(home)) >= 40 or proc.poll() is not None, timeout_s=120,
                 what="the import to write its first 40 files")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"the import ended before it was killed:\n{output}"
    assert 40 <= len(image_files(home)) < 300  # the kill landed half-way through the writes
    with context_on(home):  # the next start of any process on this home
        assert ds_db.list_datasets() == []
        assert image_files(home) == []
        assert_nothing_left_behind(home)


def test_two_imports_under_one_name_one_wins_and_the_other_leaves_nothing(wbc_home: Path, tmp_path: Path) -> None:
    source = cells_folder(tmp_path / "src", per_class=20)
    both_started = threading.Barrier(2, timeout=60)
    outcomes: list[object] = []
    admin = account()  # created once, before the race

    def start(done: int, _total: int) -> None:
        if done == 0:  # both have passed the name check; neither has written anything yet
            both_started.wait()

    def one() -> None:
        try:
            outcomes.append(importing.import_folder(source, "cells", size=32, progress=start, user=admin))
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcomes.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    winners = [o for o in outcomes if isinstance(o, importing.ImportResult)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], ds_db.DatasetExists) and "already exists" in str(losers[0])
    assert len(image_files(wbc_home)) == 60
    assert_nothing_left_behind(wbc_home)


def test_stale_staging_is_removed_and_a_live_writer_is_left_alone(wbc_home: Path) -> None:
    ctx = context.current()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    folders = {
        "dead": {"pid": int(dead.stdout), "host": socket.gethostname()},
        "alive": {"pid": os.getpid(), "host": socket.gethostname()},
        "elsewhere_recent": {"pid": 1, "host": "another-machine"},
        "elsewhere_old": {"pid": 1, "host": "another-machine"},
    }
    for name, owner in folders.items():
        folder = ctx.paths.staging / name
        noise_png(folder / "cells" / "a" / "x.png", 1)
        (folder / OWNER_FILE).write_text(json.dumps(owner))
    os.utime(ctx.paths.staging / "elsewhere_old" / OWNER_FILE, (1, 1))  # its writer stopped beating long ago
    assert sorted(clean_stale_staging(ctx)) == ["dead", "elsewhere_old"]
    assert sorted(p.name for p in ctx.paths.staging.iterdir()) == ["alive", "elsewhere_recent"]
    assert image_files(ctx.paths.images) == []  # nothing of a dead writer's files was moved in


def test_a_writer_killed_between_commit_and_move_gets_its_files_moved_in(wbc_home: Path) -> None:
    ctx = context.current()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    name = "import_1_dead"
    staged = noise_png(ctx.paths.staging / name / "cells" / "a" / "x.png", 1)
    (ctx.paths.staging / name / OWNER_FILE).write_text(json.dumps({"pid": int(dead.stdout),
                                                                    "host": socket.gethostname()}))
    row = {"origin": "real", "class_name": "a", "split": "train", "sha256": "0" * 64, "path": f"images/{name}/a/x.png",
           "width": 16, "height": 16, "source": "a/x.png", "note": None}
    ds_db.create_dataset("cells", "real", "src", ["a"], {}, "0" * 64, {}, [row], image_size=32)
    assert staged.is_file() and not (wbc_home / row["path"]).exists()
    with context_on(wbc_home):  # the next start finishes the move instead of deleting the committed cells
        assert (wbc_home / row["path"]).is_file()
        assert_nothing_left_behind(wbc_home)


def test_a_failed_import_removes_its_staged_files(wbc_home: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    source = cells_folder(tmp_path / "src", per_class=5)

    class Cancelled(Exception):
        pass

    def cancel(done: int, _total: int) -> None:
        if done >= 15:
            raise Cancelled

    with pytest.raises(Cancelled):
        importing.import_folder(source, "cells", size=32, progress=cancel, user=account())
    assert ds_db.list_datasets() == [] and image_files(wbc_home) == []

    def refuse(*_args: object, **_kwargs: object) -> int:
        raise RuntimeError("the database said no")

    monkeypatch.setattr(ds_db, "create_dataset", refuse)  # every file is written by then
    with pytest.raises(RuntimeError, match="the database said no"):
        importing.import_folder(source, "cells", size=32, user=account())
    assert image_files(wbc_home) == []
    assert_nothing_left_behind(wbc_home)


# --- memory: the import is streamed -----------------------------------------------------------------------------


def test_the_import_keeps_at_most_two_images_in_memory(wbc_home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    source = cells_folder(tmp_path / "src", per_class=10)
    alive: list[weakref.ref] = []
    most = 0
    decode_one = ingest_module._ingest_one

    def watched(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal most
        result = decode_one(*args, **kwargs)
        if isinstance(result, ingest_module.IngestedImage):  # (no reference cycles: freed as soon as dropped)
            most = max(most, 1 + sum(ref() is not None for ref in alive))
            alive.append(weakref.ref(result))
        return result

    monkeypatch.setattr(ingest_module, "_ingest_one", watched)
    importing.import_folder(source, "cells", size=32, user=account())
    assert len(alive) == 30 and most <= 2


# --- a full disk ------------------------------------------------------------------------------------------------




@contextmanager
def home_on(folder: Path) -> Iterator[Path]:
    home = folder / "home"
    with context_on(home):
        yield home


def used_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def gray_noise_folder(root: Path, n: int, side: int) -> Path:
    """Grayscale noise PNGs: stored as RGB they take three times their size, more than any estimate expects."""
    for i in range(n):
        noise_png(root / "a" / f"{i}.png", i, size=side, mode="L")
    return root


def test_import_into_a_disk_too_small_is_refused_before_writing(tmp_path: Path) -> None:
    source = cells_folder(tmp_path / "src", per_class=1)
    for i in range(30):  # 30 x 1 MiB of noise: more than the 24 MB disk
        noise_png(source / "a" / f"big_{i}.png", 100 + i, size=600)
    with small_disk(tmp_path / "disk", 24) as disk, home_on(disk) as home:
        with pytest.raises(DiskFull, match=r"disk full: \d+ MB needed, [\d.]+ MB free in ") as caught:
            importing.import_folder(source, "cells", size=32, user=account())
        assert str(home) in str(caught.value)
        assert image_files(home) == [] and ds_db.list_datasets() == []
        # still works
        importing.import_folder(cells_folder(tmp_path / "small", per_class=3), "small", size=32, user=account())
        assert_nothing_left_behind(home)


def test_a_disk_that_fills_during_the_import_is_cleaned_up_and_reported(tmp_path: Path) -> None:
    source = gray_noise_folder(tmp_path / "src", n=10, side=1024)  # 10 MiB to read, about 27 MB to store
    with small_disk(tmp_path / "disk", 20) as disk, home_on(disk) as home:
        before = used_bytes(home)
        with pytest.raises(DiskFull, match=r"disk full: \d+ MB needed, [\d.]+ MB free in "):
            importing.import_folder(source, "cells", size=32, user=account())
        assert image_files(home) == [] and ds_db.list_datasets() == []
        assert used_bytes(home) < before + 2**20  # the partial files are gone, not just hidden
        importing.import_folder(cells_folder(tmp_path / "small", per_class=3), "small", size=32, user=account())
        assert_nothing_left_behind(home)


def test_enospc_during_the_import_is_cleaned_up_and_reported_injected(wbc_home: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The same as the tmpfs test above, for machines without a mount: the 10th file write fails with ENOSPC."""
    source = cells_folder(tmp_path / "src", per_class=10)
    real_write = Path.write_bytes
    writes = []

    def filling(self: Path, data: bytes) -> int:
        writes.append(self)
        if len(writes) >= 10:
            real_write(self, data[: len(data) // 2])  # a partial file, as a real full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", filling)
    where = re.escape(str(wbc_home))
    with pytest.raises(DiskFull, match=rf"disk full: [\d.]+ MB needed, [\d.,]+ MB free in {where}"):
        importing.import_folder(source, "cells", size=32, user=account())
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert len(writes) == 10 and image_files(wbc_home) == [] and ds_db.list_datasets() == []
    assert_nothing_left_behind(wbc_home)


def test_the_free_space_check_uses_the_sizes_of_the_files_to_read(wbc_home: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from wbc_core import diskspace

    source = cells_folder(tmp_path / "src", per_class=4)
    monkeypatch.setattr(diskspace, "free_bytes", lambda _folder: 3 * 10**6)  # 3 MB: less than the reserve
    with pytest.raises(DiskFull, match=r"disk full: 8\.\d MB needed, 3\.0 MB free in "):
        importing.import_folder(source, "cells", size=32, user=account())
    assert not (wbc_home / "staging").exists() or list((wbc_home / "staging").iterdir()) == []


# --- zip bombs -----------------------------------------------------------------------------------------------


def zip_with(path: Path, entries: dict[str, bytes | int], good: Path | None = None) -> Path:
    """A zip of the good folder's files plus entries: bytes as given, or an int of MiB of zeros (streamed)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        if good is not None:
            for f in sorted(good.rglob("*.png")):
                zf.write(f, f.relative_to(good).as_posix())
        for name, content in entries.items():
            if isinstance(content, bytes):
                zf.writestr(name, content)
                continue
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as out:
                chunk = bytes(2**20)
                for _ in range(content):
                    out.write(chunk)
    return path


@pytest.fixture()
def unpacked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the zip entries that get unpacked."""
    names: list[str] = []
    real_open = zipfile.ZipFile.open

    def recording(self, name, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if mode == "r":  # not the test's own writing of the zip
            names.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real_open(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording)
    return names


def test_an_entry_that_unpacks_far_beyond_any_image_is_skipped_unread(tmp_path: Path, unpacked: list[str]) -> None:
    good = cells_folder(tmp_path / "good", per_class=2)
    archive = zip_with(tmp_path / "cells.zip", {"a/bomb.png": 3, "b/bomb.bmp": 2}, good)
    images, report = ingest(archive)
    assert len(images) == 6
    skipped = {s.source: (s.reason, s.message) for s in report.skipped}
    assert {k: v[0] for k, v in skipped.items()} == {"cells.zip!a/bomb.png": "too_compressed",
                                                     "cells.zip!b/bomb.bmp": "too_compressed"}
    assert "no real image compresses that well" in skipped["cells.zip!a/bomb.png"][1]
    assert not any("bomb" in name for name in unpacked)
    # A lower ratio limit also catches the real images' own (small) compression: the limit is a parameter.
    _, strict = ingest(archive, IngestConfig(max_compression_ratio=1.0))
    assert strict.skipped_by_reason() == {"too_compressed": 2}  # 16 px images are under the 1 MiB floor


def test_a_zip_over_the_total_limit_is_refused_before_unpacking(tmp_path: Path, unpacked: list[str]) -> None:
    good = cells_folder(tmp_path / "good", per_class=3)
    archive = zip_with(tmp_path / "cells.zip", {}, good)
    total = sum(i.file_size for i in zipfile.ZipFile(archive).infolist())
    with pytest.raises(IngestError, match="would unpack to .* above the .* limit for one import; nothing was unpacked"):
        ingest(archive, IngestConfig(max_archive_bytes=total - 1))
    assert unpacked == []
    assert len(ingest(archive, IngestConfig(max_archive_bytes=total))[0]) == 9


def test_the_default_limits_refuse_a_zip_bomb_without_unpacking_it(tmp_path: Path, unpacked: list[str]) -> None:
    """The issue's bomb in small: entries of 49 MiB of zeros, each under the per-file limit, about 1000:1."""
    archive = zip_with(tmp_path / "bomb.zip", {"a/0.png": 49, "b/1.png": 49})
    assert archive.stat().st_size < 2**20
    with pytest.raises(IngestError, match="looks like a zip bomb and nothing was unpacked"):
        ingest(archive)
    assert unpacked == []


def test_many_small_zero_entries_are_refused_as_a_whole(tmp_path: Path, unpacked: list[str]) -> None:
    """Entries under the per-entry floor add up: the archive's own ratio is checked too."""
    archive = zip_with(tmp_path / "many.zip", {f"a/{i}.png": 1 for i in range(70)})
    with pytest.raises(IngestError, match="zip bomb"):
        ingest(archive)
    assert unpacked == []


# --- class names --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [" ..", " .", "\t..", "a\nb", "\u200bx\u200b"])
def test_a_dangerous_class_folder_name_is_refused_and_nothing_is_written_outside(
        wbc_home: Path, tmp_path: Path, name: str) -> None:
    source = cells_folder(tmp_path / "src", per_class=2, classes=("good",))
    for i in range(3):
        noise_png(source / name / f"{i}.png", 500 + i)
    result = importing.import_folder(source, "cells", size=32, user=account())
    assert list(result.class_counts) == ["good"]
    refused = [s for s in result.report["skipped"] if s["source"] == f"{name}/"]
    assert len(refused) == 1 and refused[0]["reason"] in ("unsafe_path", "hidden_file")
    assert "its 3 files were not imported" in refused[0]["message"]
    folder = wbc_home / "images"
    dataset_folder = next(folder.iterdir())
    assert [p.parent.parent for p in image_files(folder)] == [dataset_folder] * 2  # images/<dataset>/good/x.png
    assert_nothing_left_behind(wbc_home)


def test_a_zip_class_folder_named_space_dot_dot_stays_inside(wbc_home: Path, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(2):
            zf.writestr(f"good/{i}.png", noise_png(tmp_path / f"g{i}.png", i).read_bytes())
            zf.writestr(f" ../{i}.png", noise_png(tmp_path / f"e{i}.png", 50 + i).read_bytes())
    result = importing.import_folder(archive, "cells", size=32, user=account())
    assert list(result.class_counts) == ["good"]
    assert {s["reason"] for s in result.report["skipped"]} == {"unsafe_path"}
    assert [p.parent.name for p in image_files(wbc_home)] == ["good", "good"]
    assert_nothing_left_behind(wbc_home)


def test_nfc_and_nfd_spellings_of_a_class_are_one_class(tmp_path: Path) -> None:
    nfc = unicodedata.normalize("NFC", "Lymphozyt\u00e4r")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    noise_png(tmp_path / "src" / nfc / "0.png", 1)
    noise_png(tmp_path / "src" / nfd / "1.png", 2)
    noise_png(tmp_path / "src" / f" {nfd} " / "2.png", 3)
    images, report = ingest(tmp_path / "src")
    assert report.classes == {nfc: 3} and {im.class_name for im in images} == {nfc}
    zipped = tmp_path / "src.zip"
    with zipfile.ZipFile(zipped, "w") as zf:  # macOS writes NFD names into zips
        zf.writestr(f"{nfd}/0.png", (tmp_path / "src" / nfc / "0.png").read_bytes())
        zf.writestr(f"{nfc}/1.png", (tmp_path / "src" / nfd / "1.png").read_bytes())
    assert ingest(zipped)[1].classes == {nfc: 2}


def test_a_source_whose_only_class_is_refused_says_why(tmp_path: Path) -> None:
    noise_png(tmp_path / "src" / " .." / "0.png", 1)
    with pytest.raises(IngestError, match=r"cannot be a class: '\.\.' cannot be a class name"):
        ingest(tmp_path / "src")
