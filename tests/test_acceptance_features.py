"""The acceptance model's inputs (wbc_core.feedback.design_matrix): the per-class block, and models saved before it.

No database and no judge: features are drawn directly, so each test states exactly what the model can see.
"""

from __future__ import annotations

import numpy as np
import pytest

from wbc_core import feedback


def _drawn(n: int, seed: int):  # noqa: ANN202 - (feats, probs, nearest) torch tensors
    import torch

    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 6, generator=g)
    return feats, torch.full((n, 2), 0.5), torch.rand(n, generator=g)


def _opposite_verdicts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reviewers accept class 0's cells when feature 0 is high and class 1's when it is low: one shared direction
    cannot say both, and the judge's probability (0.5 everywhere) gives no hint."""
    feats, probs, nearest = _drawn(2 * n, seed)
    cls = [0] * n + [1] * n
    y = np.array([int((f > 0) == (c == 0)) for f, c in zip(feats[:, 0].tolist(), cls, strict=True)])
    return feats, probs, nearest, cls, y  # type: ignore[return-value]


@pytest.mark.parametrize("order, expect_auc_above", [(feedback.FEATURES, 0.9), (feedback.V1_FEATURES, None)])
def test_only_the_per_class_block_learns_classes_that_want_opposite_looks(order, expect_auc_above):
    from sklearn.metrics import roc_auc_score

    feats, probs, nearest, cls, y = _opposite_verdicts(200, seed=0)
    model = feedback._pipeline().fit(feedback.design_matrix(feats, probs, nearest, cls, 2, order), y)
    t_feats, t_probs, t_nearest, t_cls, t_y = _opposite_verdicts(200, seed=1)
    auc = roc_auc_score(t_y, model.predict_proba(feedback.design_matrix(t_feats, t_probs, t_nearest, t_cls, 2,
                                                                        order))[:, 1])
    if expect_auc_above is not None:
        assert auc > expect_auc_above
    else:  # the old model: a class offset and one shared direction, which is as good as guessing here
        assert auc < 0.65


def test_the_block_holds_the_features_in_the_offered_classes_columns_only():
    feats, probs, nearest = _drawn(3, seed=2)
    x = feedback.design_matrix(feats, probs, nearest, [1, 0, 1], 2)
    d = feats.shape[1]
    assert x.shape == (3, feedback.input_width(feedback.FEATURES, d, 2)) == (3, d + 2 + 2 + 2 * d)
    block = x[:, d + 4:].reshape(3, 2, d)
    np.testing.assert_allclose(block[0, 1], feats[0].numpy(), rtol=1e-6)
    assert not block[0, 0].any() and not block[1, 1].any() and not block[2, 0].any()
    assert feedback.design_matrix(feats, probs, nearest, [1, 0, 1], 2, feedback.V1_FEATURES).shape == (3, d + 4)


def test_models_saved_before_the_block_are_read_with_their_own_feature_order():
    assert feedback.feature_order({"feature_spec": {"order": list(feedback.V1_FEATURES)}}) == feedback.V1_FEATURES
    assert feedback.feature_order({"feature_spec": {}}) == feedback.FEATURES
    with pytest.raises(feedback.FeedbackError, match="train the acceptance model again"):
        feedback.feature_order({"feature_spec": {"order": ["pixels"]}})
