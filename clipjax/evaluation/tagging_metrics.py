"""Multi-label tagging metrics (RAM / Tag2Text style) on numpy arrays.

Inputs are ``scores`` (N, C) -- probabilities or logits, only their order within a class matters
for AP -- and ``targets`` (N, C) of 0/1 (bool or numeric).

* :func:`average_precision_per_class` -- AP exactly as ``sklearn.metrics.average_precision_score``
  (step-wise sum over distinct score thresholds, ``sum_k (R_k - R_{k-1}) * P_k``, no
  interpolation; tied scores form one threshold), vectorised over classes in pure numpy.
  Classes with no positive get NaN (sklearn warns and returns a meaningless value there).
* :func:`mean_average_precision` -- macro mean over classes with at least one positive.
* :func:`precision_recall_f1` / :func:`at_thresholds` -- thresholded precision / recall / F1,
  macro- and micro-averaged. ``at_thresholds`` takes one threshold or one per class (as RAM's
  per-class thresholds) and predicts a tag when ``score > threshold`` (strictly).
* :func:`tagging_report` -- a flat, JSON-serialisable summary.

Scores may contain +-inf (e.g. masked logits) but not NaN.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# Columns processed at once by the vectorised AP (bounds memory at ~ N * _AP_BLOCK * 8 bytes * few).
_AP_BLOCK = 256


def _check_targets(targets, name: str = "targets") -> np.ndarray:
    t = np.asarray(targets)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {t.shape}")
    if t.dtype == bool:
        return t
    if not (np.issubdtype(t.dtype, np.number)):
        raise ValueError(f"{name} must be numeric or bool 0/1, got dtype {t.dtype}")
    if t.size and not np.all((t == 0) | (t == 1)):
        bad = np.unique(t[(t != 0) & (t != 1)])[:5]
        raise ValueError(f"{name} must be binary (0/1); found values such as {bad.tolist()}")
    return t.astype(bool)


def _check_scores(scores, targets: np.ndarray, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {s.shape}")
    if s.shape != targets.shape:
        raise ValueError(f"{name} shape {s.shape} does not match targets shape {targets.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
            or s.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError(f"{name} contain NaN ({int(np.isnan(s).sum())} entries)")
    return s


def average_precision_per_class(scores, targets) -> np.ndarray:
    """(C,) float64 average precision per class; NaN for classes without a positive.

    Matches ``sklearn.metrics.average_precision_score(targets[:, c], scores[:, c])`` for every
    class with a positive: samples are ranked by descending score, every distinct score is a
    threshold, and AP = sum over thresholds of (recall increase) * (precision at the threshold).
    Equivalently each positive contributes precision-at-the-end-of-its-tie-group / num_positives.
    """
    t = _check_targets(targets)
    s = _check_scores(scores, t)
    n, c = s.shape
    ap = np.full((c,), np.nan, np.float64)
    if n == 0:
        return ap
    idx = np.arange(n)
    for lo in range(0, c, _AP_BLOCK):
        hi = min(c, lo + _AP_BLOCK)
        sb, tb = s[:, lo:hi], t[:, lo:hi]
        order = np.argsort(-sb, axis=0, kind="stable")
        ss = np.take_along_axis(sb, order, axis=0)
        ts = np.take_along_axis(tb, order, axis=0).astype(np.float64)
        tps = np.cumsum(ts, axis=0)
        # Last row of each tie group: a distinct threshold.
        is_end = np.ones_like(ss, dtype=bool)
        is_end[:-1] = ss[:-1] != ss[1:]
        ends = np.where(is_end, idx[:, None], n - 1)
        # Index of the end of the tie group each row belongs to: reverse running minimum.
        group_end = np.minimum.accumulate(ends[::-1], axis=0)[::-1]
        prec_at_end = np.take_along_axis(tps, group_end, axis=0) / (group_end + 1.0)
        npos = tps[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            block_ap = (ts * prec_at_end).sum(axis=0) / npos
        ap[lo:hi] = np.where(npos > 0, block_ap, np.nan)
    return ap


def mean_average_precision(scores, targets) -> tuple[float, int]:
    """(mAP, number of classes averaged): macro mean of AP over classes with >= 1 positive.
    mAP is NaN when no class has a positive."""
    ap = average_precision_per_class(scores, targets)
    valid = ~np.isnan(ap)
    k = int(valid.sum())
    return (float(ap[valid].mean()) if k else float("nan")), k


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def precision_recall_f1(predictions, targets) -> dict:
    """Thresholded tagging quality of boolean ``predictions`` (N, C) against ``targets`` (N, C).

    Returns a dict with
      * ``precision``, ``recall``, ``F1`` -- macro averages (floats) of the per-class values over
        the *active* classes: those with at least one positive or at least one prediction. A
        class that is neither predicted nor present has an undefined (0/0) precision and recall,
        so it is left out rather than counted as 0 or 1. Macro F1 is the mean of per-class F1s
        (sklearn's ``f1_score(average="macro")`` convention), not the F1 of macro P and R.
      * ``micro_precision``, ``micro_recall``, ``micro_F1`` -- from TP/FP/FN summed over classes.
      * ``macro_classes`` -- number of active classes (int).
      * ``per_class_precision``, ``per_class_recall``, ``per_class_F1`` -- (C,) float64 arrays;
        ``per_class_tp``, ``per_class_fp``, ``per_class_fn``, ``per_class_support`` (positives)
        -- (C,) int64 arrays.
    Any 0/0 (precision with no prediction, recall with no positive, F1 with P = R = 0) is 0.
    Macro values are NaN when no class is active.
    """
    t = _check_targets(targets)
    p = _check_targets(predictions, name="predictions")
    if p.shape != t.shape:
        raise ValueError(f"predictions shape {p.shape} does not match targets shape {t.shape}")
    tp = np.sum(p & t, axis=0).astype(np.int64)
    fp = np.sum(p & ~t, axis=0).astype(np.int64)
    fn = np.sum(~p & t, axis=0).astype(np.int64)
    prec = _safe_div(tp, tp + fp)
    rec = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * prec * rec, prec + rec)
    active = (tp + fp + fn) > 0
    k = int(active.sum())

    def macro(x):
        return float(x[active].mean()) if k else float("nan")

    TP, FP, FN = int(tp.sum()), int(fp.sum()), int(fn.sum())
    mp = float(_safe_div(TP, TP + FP))
    mr = float(_safe_div(TP, TP + FN))
    mf = float(_safe_div(2 * mp * mr, mp + mr))
    return {
        "precision": macro(prec), "recall": macro(rec), "F1": macro(f1), "macro_classes": k,
        "micro_precision": mp, "micro_recall": mr, "micro_F1": mf,
        "per_class_precision": prec, "per_class_recall": rec, "per_class_F1": f1,
        "per_class_tp": tp, "per_class_fp": fp, "per_class_fn": fn,
        "per_class_support": tp + fn,
    }


def _check_thresholds(thresholds, num_classes: int) -> np.ndarray:
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim == 0:
        th = np.full((num_classes,), float(th))
    elif th.shape != (num_classes,):
        raise ValueError(f"thresholds must be a scalar or shape ({num_classes},), got {th.shape}")
    if np.isnan(th).any():
        raise ValueError("thresholds contain NaN")
    return th


def at_thresholds(scores, targets, thresholds) -> dict:
    """:func:`precision_recall_f1` of ``predictions = scores > thresholds`` (strict; a score equal
    to its class threshold is *not* predicted). ``thresholds``: scalar or (C,) per-class array."""
    t = _check_targets(targets)
    s = _check_scores(scores, t)
    th = _check_thresholds(thresholds, s.shape[1])
    return precision_recall_f1(s > th[None, :], t)


def tagging_report(probs, targets, thresholds, tag_names: Optional[Sequence[str]] = None,
                   per_class: bool = False) -> dict:
    """Flat JSON-serialisable summary: ``mAP`` (float), ``mAP_classes`` (int), macro
    ``precision``/``recall``/``F1`` and ``micro_precision``/``micro_recall``/``micro_F1`` at
    ``thresholds`` (see :func:`at_thresholds`), plus ``macro_classes`` (int).

    With ``per_class=True`` (or when ``tag_names`` is given) adds ``per_class``: a list of dicts,
    one per class with at least one positive, with ``index``, ``name`` (when ``tag_names``),
    ``AP``, ``precision``, ``recall``, ``F1``, ``support``, ``predicted`` and ``threshold``.
    """
    t = _check_targets(targets)
    s = _check_scores(probs, t, name="probs")
    th = _check_thresholds(thresholds, s.shape[1])
    if tag_names is not None and len(tag_names) != s.shape[1]:
        raise ValueError(f"tag_names has {len(tag_names)} entries for {s.shape[1]} classes")
    ap = average_precision_per_class(s, t)
    valid = ~np.isnan(ap)
    n_ap = int(valid.sum())
    prf = precision_recall_f1(s > th[None, :], t)
    out = {
        "mAP": float(ap[valid].mean()) if n_ap else float("nan"),
        "mAP_classes": n_ap,
        "precision": prf["precision"], "recall": prf["recall"], "F1": prf["F1"],
        "macro_classes": prf["macro_classes"],
        "micro_precision": prf["micro_precision"], "micro_recall": prf["micro_recall"],
        "micro_F1": prf["micro_F1"],
    }
    if per_class or tag_names is not None:
        rows = []
        for c in np.flatnonzero(valid):
            row = {"index": int(c)}
            if tag_names is not None:
                row["name"] = str(tag_names[c])
            row.update({
                "AP": float(ap[c]),
                "precision": float(prf["per_class_precision"][c]),
                "recall": float(prf["per_class_recall"][c]),
                "F1": float(prf["per_class_F1"][c]),
                "support": int(prf["per_class_support"][c]),
                "predicted": int(prf["per_class_tp"][c] + prf["per_class_fp"][c]),
                "threshold": float(th[c]),
            })
            rows.append(row)
        out["per_class"] = rows
    return out
