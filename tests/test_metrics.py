"""The numpy image metrics give scikit-learn's values (scikit-learn is the reference here, not a dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as reference

from vad import metrics


def _cases():
    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 17, 200):
        truth = rng.random(n) < 0.4
        scores = np.round(rng.normal(size=n) + truth, 1)  # rounded: ties between and within classes
        yield truth, scores >= 0.5, scores
    yield np.array([True, True, False]), np.array([True, True, True]), np.array([0.2, 0.2, 0.2])
    yield np.array([False, False, False]), np.array([False, True, False]), np.array([1.0, 2.0, 3.0])
    yield np.array([True, True]), np.array([False, False]), np.array([3.0, 1.0])


@pytest.mark.parametrize(("truth", "predicted", "scores"), list(_cases()))
def test_the_metrics_equal_scikit_learns(truth, predicted, scores):
    found = metrics.classification_scores(truth, predicted, scores)
    assert found["accuracy"] == pytest.approx(reference.accuracy_score(truth, predicted), abs=1e-12)
    for name, function in (("precision", reference.precision_score), ("recall", reference.recall_score)):
        assert found[name] == pytest.approx(function(truth, predicted, zero_division=0), abs=1e-12)
    assert found["f1"] == pytest.approx(reference.f1_score(truth, predicted, zero_division=0), abs=1e-12)
    if truth.all() or not truth.any():
        assert np.isnan(found["auroc"])
    else:
        assert found["auroc"] == pytest.approx(reference.roc_auc_score(truth, scores), abs=1e-12)
    tn, fp, fn, tp = metrics.confusion(truth, predicted)
    assert [[tn, fp], [fn, tp]] == reference.confusion_matrix(truth, predicted, labels=[False, True]).tolist()
    ours = metrics.classification_report(truth, predicted, "good", "bad")
    theirs = reference.classification_report(
        truth, predicted, labels=[False, True], target_names=["good", "bad"], output_dict=True, zero_division=0
    )
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        if isinstance(value, dict):
            assert list(ours[key]) == list(value)
            for field, number in value.items():
                assert ours[key][field] == pytest.approx(number, abs=1e-12), (key, field)
                assert type(ours[key][field]) is float
        else:
            assert ours[key] == pytest.approx(value, abs=1e-12)


def test_a_training_process_no_longer_imports_scikit_learn():
    import subprocess
    import sys

    code = "import sys, vad.reports, vad.train_reports; print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_rank_correlation_is_spearmans_with_ties_averaged():
    from scipy.stats import rankdata, spearmanr

    from vad.metrics import average_ranks, rank_correlation

    rng = np.random.default_rng(5)
    first = rng.integers(0, 6, 40).astype(float)  # many ties
    second = first + rng.normal(0, 2, 40)
    assert np.array_equal(average_ranks(first), rankdata(first))
    assert rank_correlation(first, second) == pytest.approx(spearmanr(first, second).statistic, abs=1e-12)
    assert rank_correlation(second, second) == pytest.approx(1.0)
    assert rank_correlation(second, -second) == pytest.approx(-1.0)
    assert np.isnan(rank_correlation(np.ones(5), second[:5]))
