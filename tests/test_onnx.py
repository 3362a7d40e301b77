"""ONNX export of a trained classifier, checked with onnxruntime against torch, and loading of every model format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import require_module
from test_classifier import CLASSES, SIZE, fast_config, make_blobs

from wbc_core.classifier import export_onnx, export_torchscript, load_classifier, load_onnx, predict_proba
from wbc_core.classifier.export import ONNX_META_KEY
from wbc_core.classifier.inference import MODEL_FORMATS, load_model_file

require_module("onnxruntime", "it checks every ONNX export")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from wbc_core.classifier import train_classifier

    train, val = make_blobs(120, seed=1), make_blobs(30, seed=2)
    result = train_classifier(train, val, CLASSES, fast_config(epochs=1), tmp_path_factory.mktemp("run"))
    return result.checkpoint


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory):
    return export_onnx(checkpoint, tmp_path_factory.mktemp("export") / "model.onnx")


def test_onnx_export_matches_torch_in_onnxruntime(checkpoint, onnx_file):
    import onnxruntime as ort

    images = make_blobs(13, seed=7).images  # 13: neither the export example's batch nor its check's
    eager = predict_proba(load_classifier(checkpoint), images).numpy()
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.numpy()})
    assert got.shape == (13, len(CLASSES)) and got.dtype == np.float32
    assert np.allclose(got, eager, atol=1e-5)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)
    meta = json.loads(session.get_modelmeta().custom_metadata_map[ONNX_META_KEY])
    assert meta["class_names"] == CLASSES and meta["image_size"] == SIZE and meta["format"] == "wbc-classifier-onnx"


def test_load_onnx_refuses_foreign_files(onnx_file, tmp_path):
    run, meta = load_onnx(onnx_file)
    assert run(make_blobs(2, seed=3).images.numpy()).shape == (2, len(CLASSES)) and meta["num_classes"] == 3
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        load_onnx(junk)


def test_every_model_format_loads_and_predicts_the_same(checkpoint, onnx_file, tmp_path):
    files = {"checkpoint": checkpoint, "torchscript": export_torchscript(checkpoint, tmp_path / "model.ts.pt"),
             "onnx": onnx_file}
    assert set(files) == set(MODEL_FORMATS)
    images = make_blobs(6, seed=9).images
    outputs = {}
    for fmt, path in files.items():
        model = load_model_file(path)
        assert model.format == fmt and model.class_names == CLASSES and model.image_size == SIZE
        outputs[fmt] = model.predict(images)
        assert isinstance(outputs[fmt], torch.Tensor) and outputs[fmt].shape == (6, 3)
    assert torch.allclose(outputs["onnx"], outputs["checkpoint"], atol=1e-5)
    assert torch.allclose(outputs["torchscript"], outputs["checkpoint"], atol=1e-5)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="neither a wbc checkpoint"):
        load_model_file(junk)
