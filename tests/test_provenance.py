"""Provenance conventions: training-set hashes, the frozen training-set file, judge cache keys, sampling seeds."""

from __future__ import annotations

from dataclasses import dataclass

from wbc_core import provenance
from wbc_core.provenance import JudgeKey


@dataclass(frozen=True)
class Row:
    id: int
    sha256: str
    origin: str
    class_name: str


def test_image_set_hash_depends_on_ids_hashes_and_labels():
    base = [(1, "aa", "x"), (2, "bb", "y")]
    assert provenance.image_set_hash(base) == provenance.image_set_hash(list(reversed(base)))
    assert provenance.image_set_hash(base) != provenance.image_set_hash([(1, "aa", "y"), (2, "bb", "y")])
    assert provenance.image_set_hash(base) != provenance.image_set_hash(base[:1])


def test_training_set_record_counts_origin_and_label_and_relabels_change_the_hash():
    rows = [Row(1, "a", "real", "x"), Row(2, "b", "synthetic", "x")]
    digest, summary = provenance.training_set_record(rows)
    assert summary == {"by_origin_class": {"real/x": 1, "synthetic/x": 1}, "total": 2}
    relabelled, summary2 = provenance.training_set_record(rows, ["x", "y"])
    assert relabelled != digest and summary2["by_origin_class"] == {"real/x": 1, "synthetic/y": 1}


def test_train_set_file_round_trips_with_weights(tmp_path):
    rows = [Row(1, "a", "real", "x"), Row(2, "b", "synthetic", "y")]
    path = provenance.write_train_set(tmp_path, rows, ["x", "y"], weights=[1.0, 0.5])
    assert path.name == provenance.TRAIN_SET_FILE
    assert provenance.read_train_set(tmp_path) == [
        {"id": 1, "sha256": "a", "label": "x", "origin": "real", "weight": 1.0},
        {"id": 2, "sha256": "b", "label": "y", "origin": "synthetic", "weight": 0.5}]


def test_judge_key_folder_name_parses_back_only_for_its_split_and_judge():
    key = JudgeKey(7, 64, "0123456789abcdef", "small")
    assert JudgeKey.parse(key.folder_name, "0123456789abcdef", "small") == key
    assert JudgeKey.parse(key.folder_name, "ffff456789abcdef", "small") is None  # another split
    assert JudgeKey.parse(key.folder_name, "0123456789abcdef", "full") is None  # another judge
    assert JudgeKey.parse("dataset_7_size_x_0123456789ab_small", "0123456789abcdef", "small") is None


def test_sampling_seeds_never_collide_across_classes_or_calls():
    seeds = {provenance.candidate_seed(call, c) for call in range(50) for c in range(20)}
    assert len(seeds) == 50 * 20
    assert provenance.quality_seed(0) != provenance.quality_seed(1)
