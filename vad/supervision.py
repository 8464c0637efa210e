"""The supervised mode: a linear head on image descriptors, fitted on the user's own NG images, cross-fitted.

Quality engineers always have a few defective images. The unsupervised model uses them only for the
threshold; here they also train a head: a logistic regression that tells the training OK images and the
validation OK images from the validation NG images by each image's descriptor (what the model sees of the
whole image, :meth:`VadModel.image_descriptors`). Its logit, scaled to the spread of the model's own
scores on OK images, is added to the model's raw score.

The head is fitted on the validation NG images, so scoring them with it would flatter it and set the
threshold too low. Cross-fitting keeps the threshold honest: the validation images are cut into
stratified folds, each fold is scored by a head fitted without it, and the threshold is set on those
out-of-fold scores. The head kept with the model is then fitted on every labelled image, and scores only
images it has never seen at inference. With fewer NG images than :data:`MIN_NG` the folds would hold one
or none, so the mode falls back to unsupervised scoring and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_NG = 10  # NG validation images the mode needs: 5 folds of at least 2
FOLDS = 5
STRENGTH = 0.01  # inverse L2 strength of the logistic regression (scikit-learn's C): few NG images, strong prior
WEIGHT = 1.0  # the head's logit counts this many OK-score standard deviations per OK-logit standard deviation


@dataclass(frozen=True)
class LinearHead:
    """``descriptors @ weights + bias``: the offset a head adds to the model's raw score.

    Attributes:
        weights: One weight per descriptor dimension (F,).
        bias: The constant.
    """

    weights: np.ndarray
    bias: float

    def offsets(self, descriptors: np.ndarray) -> np.ndarray:
        """The score offsets of some images.

        Args:
            descriptors: (N, F) image descriptors.

        Returns:
            (N,) offsets.
        """
        return descriptors.astype(np.float64) @ self.weights + self.bias


@dataclass(frozen=True)
class CrossFit:
    """What cross-fitting gives the train step.

    Attributes:
        head: The head fitted on every labelled image, scaled (kept with the model).
        scores: Out-of-fold raw scores of the validation images: the model's score plus the offset of the head
            fitted without the image's fold.
        folds: Fold of each validation image.
    """

    head: LinearHead
    scores: np.ndarray
    folds: np.ndarray


Fitter = Callable[[np.ndarray, np.ndarray], LinearHead]


def logistic_head(descriptors: np.ndarray, is_ng: np.ndarray) -> LinearHead:
    """A logistic regression's logit as a linear head on raw descriptors (the standardisation folded in).

    Args:
        descriptors: (N, F) descriptors of the images it learns from.
        is_ng: (N,) True for NG images.

    Returns:
        The unscaled head (its offsets are logits).
    """
    from sklearn.linear_model import LogisticRegression

    mean = descriptors.mean(axis=0)
    std = descriptors.std(axis=0)
    std[std < 1e-12] = 1.0
    model = LogisticRegression(C=STRENGTH, class_weight="balanced", max_iter=5000)
    model.fit((descriptors - mean) / std, is_ng.astype(int))
    coefficients = model.coef_[0] / std
    return LinearHead(coefficients, float(model.intercept_[0] - mean @ coefficients))


def stratified_folds(is_ng: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Fold of each image, from scikit-learn's shuffled, seeded ``StratifiedKFold``.

    Args:
        is_ng: (N,) labels.
        count: Number of folds.
        seed: Seed of the shuffle.

    Returns:
        (N,) fold numbers in ``range(count)``.
    """
    from sklearn.model_selection import StratifiedKFold

    folds = np.empty(len(is_ng), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=count, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(is_ng)), is_ng)):
        folds[held] = fold
    return folds


def cross_fit(
    train_descriptors: np.ndarray,
    valid_descriptors: np.ndarray,
    valid_is_ng: np.ndarray,
    valid_scores: np.ndarray,
    seed: int,
    fitter: Fitter = logistic_head,
    folds: int = FOLDS,
) -> CrossFit:
    """Fit the head with cross-fitting (see the module's docstring).

    Every head learns from all training OK images (they are never scored through the head at training
    time) and the validation images outside the fold it scores.

    Args:
        train_descriptors: (T, F) descriptors of the OK training images.
        valid_descriptors: (V, F) descriptors of the validation images.
        valid_is_ng: (V,) labels of the validation images.
        valid_scores: (V,) the model's raw validation scores.
        seed: Seed of the folds.
        fitter: Fits an unscaled head on descriptors and labels.
        folds: Number of folds.

    Returns:
        The scaled head and the out-of-fold validation scores.

    Raises:
        ValueError: Fewer NG (or OK) validation images than folds.
    """
    n_ng = int(valid_is_ng.sum())
    if min(n_ng, len(valid_is_ng) - n_ng) < folds:
        msg = f"cross-fitting needs at least {folds} OK and {folds} NG validation images, got {n_ng} NG"
        raise ValueError(msg)
    assignment = stratified_folds(valid_is_ng, folds, seed)
    train_labels = np.zeros(len(train_descriptors), dtype=bool)
    logits = np.empty(len(valid_is_ng), dtype=np.float64)
    for fold in range(folds):
        held = assignment == fold
        head = fitter(
            np.concatenate([train_descriptors, valid_descriptors[~held]]),
            np.concatenate([train_labels, valid_is_ng[~held]]),
        )
        logits[held] = head.offsets(valid_descriptors[held])
    ok = ~valid_is_ng
    # the logit's scale: OK images' scores and logits, both out of sample, spread alike
    scale = WEIGHT * float(np.std(valid_scores[ok])) / max(float(np.std(logits[ok])), 1e-12)
    final = fitter(np.concatenate([train_descriptors, valid_descriptors]), np.concatenate([train_labels, valid_is_ng]))
    scaled = LinearHead(final.weights * scale, final.bias * scale)
    return CrossFit(scaled, valid_scores + scale * logits, assignment)
