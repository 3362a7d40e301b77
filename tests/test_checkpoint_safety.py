"""Checkpoints that cannot be trusted get a plain answer: NaN weights, a broken generator, empty or cut-off files,
and a disk that fills while one is written."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from support import small_disk

from wbc_core.classifier import checkpoint as classifier_checkpoint
from wbc_core.diskspace import DiskFull
from wbc_core.gan import GanConfig, load_generator, sample_cells, train_gan
from wbc_core.gan import checkpoint as gan_checkpoint
from wbc_core.gan.checkpoint import load_checkpoint, save_checkpoint
from wbc_core.types import LabelledImages

CLASSES = ["neutrophil", "lymphocyte", "basophil"]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes: object) -> GanConfig:
    base = dict(image_size=32, steps=4, batch_size=8, g_width=16, d_width=16, z_dim=32, log_every=2,
                sample_every=4, checkpoint_every=4, grid_per_class=2, ema_start=2, ema_decay=0.9,
                bn_refresh_batches=2, device="cpu", num_threads=1, aux_weight=0.0)
    base.update(changes)
    return GanConfig(**base)  # type: ignore[arg-type]


def tiny_data(n: int = 24) -> LabelledImages:
    gen = torch.Generator().manual_seed(1)
    return LabelledImages(torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8),
                          torch.arange(n) % len(CLASSES))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The last checkpoint of one tiny GAN run."""
    out = tmp_path_factory.mktemp("gan_run")
    torch.set_num_threads(1)
    return Path(train_gan(tiny_data(), CLASSES, tiny_config(), out).last_checkpoint)


def edited(checkpoint: Path, target: Path, edit) -> Path:  # noqa: ANN001
    """A copy of checkpoint with edit(generator_ema state dict) applied."""
    data = load_checkpoint(checkpoint)
    edit(data["generator_ema"])
    payload = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    return save_checkpoint(payload, target)


# --- bad weights ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_at_load(checkpoint: Path, tmp_path: Path,
                                                                value: float) -> None:
    def poison(state: dict[str, torch.Tensor]) -> None:
        state["to_rgb.weight"][0, 0, 0, 0] = value

    path = edited(checkpoint, tmp_path / "step_000004.pt", poison)
    with pytest.raises(ValueError, match=r"has NaN or infinite generator weights \(1 tensors, e.g. to_rgb.weight\)"
                                         r".*Use an earlier checkpoint"):
        load_generator(path)
    assert load_generator(checkpoint).step == 4  # the healthy original still loads


def test_a_generator_that_makes_one_black_image_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    """The issue's NaN checkpoint in another form: every candidate the same black square."""
    def blacken(state: dict[str, torch.Tensor]) -> None:
        state["to_rgb.weight"].zero_()
        state["to_rgb.bias"].fill_(-10.0)  # tanh(-10) = -1: black

    loaded = load_generator(edited(checkpoint, tmp_path / "black.pt", blacken))
    with pytest.raises(ValueError, match="makes a single flat colour for class 'lymphocyte'.*no candidates"):
        sample_cells(loaded, 1, 8, seed=0)
    with pytest.raises(ValueError, match="single flat colour"):
        sample_cells(loaded, 0, 1, seed=0)


def test_a_generator_that_ignores_its_noise_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    def ignore_noise(state: dict[str, torch.Tensor]) -> None:
        state["to_rgb.weight"].zero_()
        state["to_rgb.bias"].copy_(torch.tensor([-0.5, 0.0, 0.5]))  # one colour per channel, same in every image

    loaded = load_generator(edited(checkpoint, tmp_path / "same.pt", ignore_noise))
    with pytest.raises(ValueError, match="makes the same image for all 8 noise vectors"):
        sample_cells(loaded, 2, 8, seed=0)
    healthy = load_generator(checkpoint)
    assert sample_cells(healthy, 2, 8, seed=0).shape == (8, 3, 32, 32)


# --- empty or cut-off files ------------------------------------------------------------------------------------


def test_an_empty_or_cut_off_gan_checkpoint_gets_a_plain_message(checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"the GAN checkpoint file .*empty\.pt is empty or damaged \(it is empty "
                                         r"\(0 bytes\)\).*use an earlier checkpoint"):
        load_generator(empty)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.pt is empty or damaged \(it is cut off\)"):
        load_generator(cut)


def test_an_empty_or_cut_off_classifier_checkpoint_gets_a_plain_message(tmp_path: Path) -> None:
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"the classifier checkpoint file .*model\.pt is empty or damaged"):
        classifier_checkpoint.read_checkpoint(empty)
    whole = tmp_path / "whole.pt"
    torch.save({"format": "wbc-classifier", "w": torch.zeros(1000)}, whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:600])
    with pytest.raises(ValueError, match=r"cut\.pt is empty or damaged \(it is cut off\)"):
        classifier_checkpoint.read_checkpoint(cut)


# --- a full disk ------------------------------------------------------------------------------------------------




def payload(megabytes: int) -> dict[str, object]:
    return {"config": {}, "class_names": CLASSES, "step": 1, "generator": {"w": torch.zeros(megabytes * 250_000)},
            "generator_ema": {}, "discriminator": {}}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_checkpoint_too_big_for_the_disk_is_refused_before_writing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 12) as disk:
        with pytest.raises(DiskFull, match=r"disk full: 2[01] MB needed, 1[23] MB free in .*checkpoints"):
            save_checkpoint(payload(12), disk / "checkpoints" / "step_000001.pt")
        assert leftovers(disk / "checkpoints") == []


def test_a_disk_that_fills_while_a_checkpoint_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No estimate (a write the free-space check cannot foresee): torch.save itself hits the full disk."""
    monkeypatch.setattr(gan_checkpoint, "payload_bytes", lambda _data: 0)
    with small_disk(tmp_path / "disk", 4) as disk:
        with pytest.raises(DiskFull, match=r"disk full: [\d.]+ MB free in .*checkpoints"):
            save_checkpoint(payload(8), disk / "checkpoints" / "step_000001.pt")
        assert leftovers(disk / "checkpoints") == []  # the partial temp file is gone: the space is free again
    with small_disk(tmp_path / "disk2", 4) as disk:
        with pytest.raises(DiskFull, match="disk full"):
            classifier_checkpoint.atomic_save({"state_dict": torch.zeros(2_000_000)}, disk / "model.pt")
        assert leftovers(disk) == []


def test_enospc_while_a_checkpoint_is_written_injected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tmpfs tests' twin for machines without a mount: the write fails with ENOSPC half-way."""
    def filling_save(_obj: object, f: object) -> None:
        Path(f).write_bytes(b"x" * 1000)  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", filling_save)
    folder = tmp_path / "checkpoints"
    with pytest.raises(DiskFull, match=r"disk full: [\d.]+ MB needed, [\d.,]+ MB free in .*checkpoints") as caught:
        save_checkpoint(payload(1), folder / "step_000001.pt")
    assert caught.value.errno == errno.ENOSPC and leftovers(folder) == []
    with pytest.raises(DiskFull, match="disk full"):
        classifier_checkpoint.atomic_save({"state_dict": torch.zeros(10)}, tmp_path / "model.pt")
    assert leftovers(tmp_path) == ["checkpoints"]


def test_gan_training_on_a_full_disk_ends_with_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the worker records for the run: a DiskFull from the training call, not a process that vanished."""
    from wbc_core import diskspace

    monkeypatch.setattr(diskspace, "free_bytes", lambda _folder: 2 * 10**6)
    with pytest.raises(DiskFull, match=r"disk full: [\d.]+ MB needed, 2\.0 MB free in .*checkpoints"):
        train_gan(tiny_data(), CLASSES, tiny_config(), tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.tmp"))
