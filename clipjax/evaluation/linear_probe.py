"""Linear probe: L2-regularised logistic regression (scikit-learn, L-BFGS) on frozen image
features, as in the CLIP paper: the inverse regularisation C is swept on a validation split,
then the classifier is refit on train + validation with the best C and scored on test.

`linear_probe` scores features; `linear_probe_on_dataset` (evaluate.py --task linear_probe)
encodes a dataset's splits through the sharded encoders first."""

from __future__ import annotations

import numpy as np

from clipjax.evaluation.datasets import labelled_batches, split_size
from clipjax.evaluation.encode import labelled_features
from clipjax.evaluation.progress import progress_bar
from clipjax.evaluation.zeroshot import classification_metrics

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))


def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, cs=DEFAULT_CS, max_iter: int = 1000) -> dict:
    from sklearn.linear_model import LogisticRegression

    def fit(x, y, c):
        return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)

    scores = {}
    for c in cs:
        scores[c] = float(np.mean(fit(train_x, train_y, c).predict(val_x) == val_y))
    best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    clf = fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), best)
    logits = np.full((len(test_x), int(max(train_y.max(), val_y.max(), test_y.max())) + 1), -np.inf)
    logits[:, clf.classes_] = clf.decision_function(test_x) if len(clf.classes_) > 2 else np.stack(
        [-clf.decision_function(test_x), clf.decision_function(test_x)], 1)
    out = classification_metrics(logits, np.asarray(test_y))
    out.update(best_C=best, validation_top1_by_C={f"{c:g}": s for c, s in scores.items()})
    return out


def linear_probe_on_dataset(encoders, variables, builder, train_split: str, val_split: str, split: str,
                            examples: int, probe_examples: int, progress: bool = False) -> tuple[dict, dict]:
    """evaluate.py --task linear_probe: fit on `train_split`, sweep C on `val_split` (default
    "validation" when the dataset has one, else the last 20% of the training features), score
    the first `examples` of `split`; `probe_examples` caps train / validation (0: all).
    `encoders`: encode.CLIPEncoders. -> (metrics, extra: train_examples, validation_examples,
    validation_split)."""
    encode_pixels, _ = encoders.bind(variables)

    def features(name, n, desc):
        batches = labelled_batches(builder, name, encoders.batch, n)
        with progress_bar(split_size(builder, name, n), desc, progress) as bar:
            return labelled_features(encode_pixels, encoders.preprocessed(batches), bar.update)

    val_split = val_split or ("validation" if "validation" in builder.info.splits else None)
    train_x, train_y = features(train_split, probe_examples, "train features")
    if val_split:
        val_x, val_y = features(val_split, probe_examples, "validation features")
    else:  # hold out the last 20% of the training features
        k = int(len(train_x) * 0.8)
        train_x, val_x, train_y, val_y = train_x[:k], train_x[k:], train_y[:k], train_y[k:]
    test_x, test_y = features(split, examples, "test features")
    metrics = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y)
    return metrics, dict(train_examples=len(train_x), validation_examples=len(val_x),
                         validation_split=val_split or f"last 20% of {train_split}")
