"""Thresholds of a moderation policy picked on labelled data, and measured on a held-out part.

Labelled data is a CSV file (header row):

    image,footwear,bag
    images/0001.png,1,0
    images/0002.png,0,1

`image` (or the column --image-column names) is a path, relative to the CSV file's folder or
absolute; each policy category has a column of its name holding 0 or 1 (other columns are
ignored). Rows are split deterministically by a hash of the image path as written (BLAKE2b,
so the split does not depend on row order and a row keeps its side when rows are added): a
fraction `holdout` of them is held out. On the calibration part each category gets the lowest
threshold whose precision reaches the target, short of thresholds that only add false
positives (`pick_threshold`: the most recall at that precision); precision, recall and F1 are
then reported on the held-out part, at the calibrated and at the policy's own thresholds.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from typing import Optional, Sequence

import numpy as np

from clipjax.errors import ConfigError

SPLIT_SALT = b"clipjax-moderation"


# ------------------------------------------------------------------------------ thresholds
def _cutoffs(scores: np.ndarray, labels: np.ndarray):
    """Over the distinct scores, descending: (score, true positives, flagged) when flagging
    every score >= it."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.int64)
    tp, n = np.cumsum(y), np.arange(1, len(s) + 1)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    return s[last], tp[last], n[last]


def pick_threshold(scores, labels, target: float) -> dict:
    """The lowest threshold t whose flagged set {score >= t} has precision >= `target`, among
    those of the most recall: the operating point "most recall at precision >= target".

    Candidates are the distinct scores (what sklearn.metrics.precision_recall_curve lists). Of
    those reaching the target, the lowest has the most recall; but below the lowest-scored
    positive it reaches, a lower threshold only adds false positives (same recall, less
    precision), so the highest cutoff with that recall is taken. The threshold is then set
    half-way down to the next lower score (any value in between flags the same examples; the
    middle leaves a margin both ways for new data). When no cutoff reaches the target,
    `reached` is False and the cutoff of highest precision is used (the one of most recall
    among those); when the labels hold no positive the threshold is None.

    -> {"threshold", "reached", "precision", "recall", "flagged", "positives", "examples"}"""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if len(s) != len(y):
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision {target} is not in (0, 1]")
    pos = int(y.sum())
    out = {"threshold": None, "reached": False, "precision": None, "recall": None, "flagged": 0,
           "positives": pos, "examples": int(len(s))}
    if pos == 0:
        return out
    values, tp, n = _cutoffs(s, y)
    prec = tp / n
    ok = prec >= target - 1e-12
    out["reached"] = bool(ok.any())
    if not ok.any():
        ok = prec == prec.max()
    # the most true positives among the admissible cutoffs, at its highest (first) cutoff
    i = int(np.argmax(np.where(ok, tp, -1)))
    lower = values[i + 1] if i + 1 < len(values) else None
    out.update(threshold=float(values[i] if lower is None else (values[i] + lower) / 2),
               precision=float(prec[i]), recall=float(tp[i] / pos), flagged=int(n[i]))
    return out


def prf(scores, labels, threshold: Optional[float]) -> dict:
    """Precision, recall, F1 of flagging score >= threshold (precision None when nothing is
    flagged, recall None when there is no positive)."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    flag = s >= threshold if threshold is not None else np.zeros(len(s), bool)
    tp, nf, npos = int((flag & y).sum()), int(flag.sum()), int(y.sum())
    p = tp / nf if nf else None
    r = tp / npos if npos else None
    f1 = (2 * p * r / (p + r) if (p + r) > 0 else 0.0) if p is not None and r is not None else None
    return {"threshold": threshold, "precision": p, "recall": r, "f1": f1, "flagged": nf, "true_positives": tp,
            "positives": npos, "examples": int(len(s))}


def average_precision(scores, labels) -> Optional[float]:
    """Σ_k (R_k − R_{k−1}) P_k over the distinct-score cutoffs (sklearn's
    average_precision_score); None without positives."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if not y.any():
        return None
    _, tp, n = _cutoffs(s, y)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * (tp / n)))


def pr_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct-score cutoff, descending score."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    _, tp, n = _cutoffs(s, y)
    return tp / max(int(y.sum()), 1), tp / n


# ------------------------------------------------------------------------------ labelled data
def read_labelled_csv(path: str, categories: Sequence[str], image_column: str = "image"):
    """-> (image paths as written, resolved paths, labels (N, C) int8 in `categories` order).
    ConfigError naming the file, row and column for anything malformed."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise ConfigError(f"labelled CSV {path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"labelled CSV {path}: cannot read it ({' '.join(str(e).split())})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ConfigError(f"labelled CSV {path} is empty: it needs a header row ({image_column},"
                          f"{','.join(categories)}) and one row per image")
    header = [h.strip() for h in rows[0]]
    if image_column not in header:
        raise ConfigError(f"labelled CSV {path}: no {image_column!r} column in the header {header} "
                          "(--image-column names the column of image paths)")
    missing = [c for c in categories if c not in header]
    if missing:
        raise ConfigError(f"labelled CSV {path}: no column for categor{'ies' if len(missing) > 1 else 'y'} "
                          f"{', '.join(map(repr, missing))} (one 0/1 column per policy category, named as "
                          f"the category; the header is {header})")
    dup = [h for h in set(header) if header.count(h) > 1 and (h == image_column or h in categories)]
    if dup:
        raise ConfigError(f"labelled CSV {path}: column {dup[0]!r} appears twice in the header")
    ii = header.index(image_column)
    ci = [header.index(c) for c in categories]
    if len(rows) == 1:
        raise ConfigError(f"labelled CSV {path} has a header but no rows")
    base = os.path.dirname(os.path.abspath(path))
    keys, paths, labels, seen = [], [], [], {}
    for line, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise ConfigError(f"labelled CSV {path}: row {line} has {len(row)} fields, the header {len(header)}")
        key = row[ii].strip()
        if not key:
            raise ConfigError(f"labelled CSV {path}: row {line} has no image path")
        if key in seen:
            raise ConfigError(f"labelled CSV {path}: row {line} repeats the image of row {seen[key]} ({key!r})")
        seen[key] = line
        lab = []
        for c, j in zip(categories, ci):
            v = row[j].strip()
            if v not in ("0", "1"):
                raise ConfigError(f"labelled CSV {path}: row {line}, column {c!r}: {v!r} is not 0 or 1")
            lab.append(int(v))
        keys.append(key)
        paths.append(key if os.path.isabs(key) else os.path.join(base, key))
        labels.append(lab)
    return keys, paths, np.asarray(labels, np.int8).reshape(len(keys), len(categories))


def holdout_mask(keys: Sequence[str], fraction: float) -> np.ndarray:
    """True for the rows held out: BLAKE2b(path) / 2^64 < fraction (deterministic, order-free)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--holdout {fraction} must be in (0, 1): the share of rows held out for measurement")
    h = [int.from_bytes(hashlib.blake2b(k.encode("utf-8"), digest_size=8, key=SPLIT_SALT).digest(), "big")
         for k in keys]
    return np.asarray(h, np.float64) / 2.0 ** 64 < fraction


# ------------------------------------------------------------------------------ the report
def calibrate(policy, scores: np.ndarray, labels: np.ndarray, held_out: np.ndarray, target: float) -> dict:
    """Per category: the threshold picked on the calibration rows (~held_out), and precision,
    recall, F1 on the held-out rows at it and at the policy's threshold, with held-out average
    precision. `scores` / `labels`: (N, C) in the policy's category order."""
    cal = ~held_out
    out = {}
    for j, c in enumerate(policy.categories):
        pick = pick_threshold(scores[cal, j], labels[cal, j], target)
        thr = pick["threshold"] if pick["threshold"] is not None else c.threshold
        out[c.name] = {
            "policy_threshold": c.threshold,
            "threshold": thr,
            "reached": pick["reached"],
            "calibration": pick,
            "held_out": {"calibrated": prf(scores[held_out, j], labels[held_out, j], thr),
                         "policy": prf(scores[held_out, j], labels[held_out, j], c.threshold),
                         "average_precision": average_precision(scores[held_out, j], labels[held_out, j])},
        }
    return out


def calibration_report(policy, scored, labels: np.ndarray, held_out: np.ndarray, target: float, holdout: float, *,
                       checkpoint: str = "", csv_path: str = "", output_policy: str = "") -> dict:
    """The report of a calibration run (what --json writes): settings, split, skipped images
    and `calibrate`'s figures per category. `scored`: clipjax.apps.moderation.Scored of the
    CSV's images; `labels` / `held_out`: its readable rows."""
    from clipjax.apps.moderation import SCORE_DEFINITION

    return {"checkpoint": str(checkpoint), "policy": policy.source, "labelled_csv": csv_path,
            "score": SCORE_DEFINITION, "target_precision": target, "holdout": holdout,
            "split": {"calibration": int((~held_out).sum()), "held_out": int(held_out.sum()),
                      "rule": "BLAKE2b(image path as written) / 2^64 < holdout -> held out"},
            "skipped": len(scored.skipped), "skipped_images": [{"image": p, "reason": r} for p, r in scored.skipped],
            "categories": calibrate(policy, scored.scores, labels, held_out, target),
            "output_policy": output_policy}


def unreached_warnings(report: dict) -> list[str]:
    """A line per category whose target was not reached."""
    out = []
    for name, r in report["categories"].items():
        if r["reached"]:
            continue
        if r["calibration"]["positives"] == 0:
            out.append(f"category {name!r} has no positive example in the calibration part; its policy threshold "
                       f"{r['policy_threshold']} is kept")
        else:
            out.append(f"category {name!r}: no threshold reaches precision {report['target_precision']} on the "
                       f"calibration part; the one of highest precision ({r['calibration']['precision']:.3f}) is used")
    return out


def calibrated_policy_yaml(policy, report: dict) -> str:
    """The policy as written, each threshold replaced by the calibrated one and a
    `calibration:` block per category and at the top (what was measured, on what)."""
    from clipjax.apps.moderation_policy import policy_yaml

    t = report["target_precision"]
    blocks = {name: {"target_precision": t, "reached": r["reached"], "policy_threshold": r["policy_threshold"],
                     "calibration_part": {k: r["calibration"][k]
                                          for k in ("precision", "recall", "flagged", "positives", "examples")},
                     "held_out": {k: r["held_out"]["calibrated"][k]
                                  for k in ("precision", "recall", "f1", "positives", "examples")}}
              for name, r in report["categories"].items()}
    top = {"labelled_csv": report["labelled_csv"], "checkpoint": report["checkpoint"], "target_precision": t,
           "holdout": report["holdout"], "from_policy": policy.source}
    header = (f"{policy.source} with thresholds calibrated by moderate.py --calibrate {report['labelled_csv']}\n"
              f"(checkpoint {report['checkpoint']}, target precision {t}, held-out share {report['holdout']}).\n"
              "The thresholds belong to that checkpoint: recalibrate for another.")
    return policy_yaml(policy, {n: r["threshold"] for n, r in report["categories"].items()}, blocks, header, top)


def _f(x, spec=".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report_table(report: dict) -> str:
    """The calibration report as a text table (held-out figures)."""
    cats = report["categories"]
    w = max([8] + [len(n) for n in cats])
    lines = [f"target precision {report['target_precision']}; {report['split']['calibration']} calibration images, "
             f"{report['split']['held_out']} held out (hash split, --holdout {report['holdout']}); "
             f"{report['skipped']} unreadable skipped",
             "",
             f"{'':<{w}}  {'':>10}  {'held out, calibrated':^20}  {'':>10}  {'held out, policy':^20}",
             f"{'category':<{w}}  {'threshold':>10}  {'P':>6} {'R':>6} {'F1':>6}  {'policy thr':>10}  "
             f"{'P':>6} {'R':>6} {'F1':>6}  {'AP':>6}  {'pos':>5}  note"]
    for name, r in cats.items():
        a, b = r["held_out"]["calibrated"], r["held_out"]["policy"]
        note = "" if r["reached"] else (
            "no positive in calibration part: policy threshold kept" if r["calibration"]["positives"] == 0 else
            f"target not reached on calibration part (best precision {_f(r['calibration']['precision'])})")
        lines.append(f"{name:<{w}}  {_f(r['threshold'], '.4f'):>10}  {_f(a['precision']):>6} {_f(a['recall']):>6} "
                     f"{_f(a['f1']):>6}  {_f(r['policy_threshold'], '.4f'):>10}  {_f(b['precision']):>6} "
                     f"{_f(b['recall']):>6} {_f(b['f1']):>6}  {_f(r['held_out']['average_precision']):>6}  "
                     f"{a['positives']:>5}  {note}")
    return "\n".join(lines)


def plot_pr(report: dict, scores: np.ndarray, labels: np.ndarray, held_out: np.ndarray, names: Sequence[str],
            path: str, title: str = "") -> None:
    """Held-out precision-recall curves, one panel per category, with the policy's and the
    calibrated thresholds marked and the target precision as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.8), squeeze=False)
    for ax, (j, name) in zip(axes[0], enumerate(names)):
        s, y = scores[held_out, j], labels[held_out, j]
        r = report["categories"][name]
        if y.any():
            rec, prec = pr_curve(s, y)
            ax.plot(rec, prec, color="tab:blue", lw=1.5, label=f"AP {_f(r['held_out']['average_precision'])}")
        for key, style, label in (("policy", dict(marker="s", color="tab:orange"), "policy"),
                                  ("calibrated", dict(marker="o", color="tab:green"), "calibrated")):
            m = r["held_out"][key]
            if m["precision"] is not None and m["recall"] is not None:
                ax.plot([m["recall"]], [m["precision"]], ls="none", ms=8, **style,
                        label=f"{label} t={m['threshold']:.3f}: P {m['precision']:.3f} R {m['recall']:.3f}")
        ax.axhline(report["target_precision"], color="grey", ls="--", lw=1, label=f"target {report['target_precision']}")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=name)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
