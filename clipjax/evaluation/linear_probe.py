"""Linear probe: L2-regularised logistic regression (scikit-learn, L-BFGS) on frozen image
features, as in the CLIP paper: the inverse regularisation C is swept on a validation split,
then the classifier is refit on train + validation with the best C and scored on test."""

from __future__ import annotations

import numpy as np

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))


def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, cs=DEFAULT_CS, max_iter: int = 1000) -> dict:
    from sklearn.linear_model import LogisticRegression

    from clipjax.evaluation.zeroshot import classification_metrics

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
