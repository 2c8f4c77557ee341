"""Pitfall 5: AUROC/AUPRC from softmax probabilities, never from raw logits; our metrics match scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from breastgan.utility.metrics import auroc, average_precision, binary_metrics, probabilities


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_auprc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding makes many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_single_class_gives_nan():
    assert np.isnan(auroc(np.ones(5), np.arange(5.0)))
    assert np.isnan(average_precision(np.zeros(5), np.arange(5.0)))


def test_ranking_uses_softmax_probability_not_the_raw_positive_logit():
    # ranking by the raw class-1 logit differs from ranking by softmax p1 = sigmoid(l1 - l0)
    logits = torch.tensor([[5.0, 4.0], [0.0, 1.0], [-3.0, 0.5], [2.0, 2.5], [1.0, 0.0], [4.0, 3.0]])
    y = torch.tensor([1, 1, 1, 0, 0, 0])
    p1 = torch.softmax(logits, 1)[:, 1].numpy()
    assert roc_auc_score(y, p1) != roc_auc_score(y, logits[:, 1].numpy())  # the fixture must discriminate the two readings
    m = binary_metrics(torch.log_softmax(logits, 1), y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p1))


def test_raw_logits_are_refused():
    with pytest.raises(ValueError, match="not log-softmax"):
        probabilities(torch.tensor([[2.0, -1.0], [0.5, 0.3]]))


def test_accuracy_and_f1_match_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 2, generator=g)
    y = torch.randint(0, 2, (300,), generator=g)
    m = binary_metrics(torch.log_softmax(logits, 1), y)
    pred = logits.argmax(1).numpy()
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
