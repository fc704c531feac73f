"""Tagging metrics (AP / mAP / thresholded P-R-F1) and caption metrics (BLEU, CIDEr-D)."""

import json
import math
import warnings

import numpy as np
import pytest

from clipjax.evaluation.tagging_metrics import (at_thresholds, average_precision_per_class,
                                                mean_average_precision, precision_recall_f1,
                                                tagging_report)


# ----------------------------------------------------------------------------- tagging: AP / mAP

@pytest.mark.parametrize("ties", [False, True])
def test_ap_matches_sklearn(ties):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0 + ties)
    n, c = 50, 40
    scores = rng.random((n, c))
    if ties:  # few distinct values -> many tied thresholds
        scores = np.round(scores, 1)
    targets = (rng.random((n, c)) < 0.25).astype(np.int64)
    targets[:, 3] = 0  # a class without positives
    targets[:, 7] = 1  # a class that is all positive
    ap = average_precision_per_class(scores, targets)
    assert ap.shape == (c,)
    assert np.isnan(ap[3])
    for k in range(c):
        if k == 3:
            continue
        ref = sklearn_metrics.average_precision_score(targets[:, k], scores[:, k])
        assert ap[k] == pytest.approx(ref, abs=1e-12), k
    m, used = mean_average_precision(scores, targets)
    assert used == c - 1
    assert m == pytest.approx(np.nanmean(ap), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_macro = np.mean([sklearn_metrics.average_precision_score(targets[:, k], scores[:, k])
                             for k in range(c) if k != 3])
    assert m == pytest.approx(ref_macro, abs=1e-12)


def test_ap_logits_equal_probabilities_and_hand_value():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 5)).astype(np.float32)
    targets = rng.random((30, 5)) < 0.4
    targets[0] = True
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(average_precision_per_class(logits, targets),
                               average_precision_per_class(probs, targets), atol=1e-12)
    # ranking: pos, neg, pos -> AP = (1/1 + 2/3) / 2
    ap = average_precision_per_class(np.array([[0.9], [0.8], [0.7]]), np.array([[1], [0], [1]]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative is one threshold: precision 1/2 there
    ap = average_precision_per_class(np.array([[0.5], [0.5]]), np.array([[1], [0]]))
    assert ap[0] == pytest.approx(0.5)


def test_map_no_positive_at_all():
    m, used = mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)))
    assert math.isnan(m) and used == 0


# ----------------------------------------------------------------------------- tagging: P/R/F1

def test_precision_recall_f1_hand_computed():
    targets = np.array([[1, 0, 0, 0],
                        [1, 1, 0, 0],
                        [0, 1, 0, 0],
                        [0, 0, 0, 0]])
    preds = np.array([[1, 1, 0, 1],
                      [0, 1, 0, 0],
                      [0, 1, 0, 0],
                      [1, 0, 0, 0]], bool)
    r = precision_recall_f1(preds, targets)
    # class 0: tp1 fp1 fn1 ; class 1: tp2 fp1 fn0 ; class 2: inactive ; class 3: tp0 fp1 fn0
    np.testing.assert_allclose(r["per_class_precision"], [0.5, 2 / 3, 0, 0])
    np.testing.assert_allclose(r["per_class_recall"], [0.5, 1, 0, 0])
    np.testing.assert_allclose(r["per_class_F1"], [0.5, 0.8, 0, 0])
    np.testing.assert_array_equal(r["per_class_support"], [2, 2, 0, 0])
    assert r["macro_classes"] == 3  # class 2 (no positive, no prediction) is left out
    assert r["precision"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert r["recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert r["F1"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    # micro: TP 3, FP 3, FN 1
    assert r["micro_precision"] == pytest.approx(0.5)
    assert r["micro_recall"] == pytest.approx(0.75)
    assert r["micro_F1"] == pytest.approx(0.6)


def test_precision_recall_f1_matches_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    targets = rng.random((40, 12)) < 0.3
    preds = rng.random((40, 12)) < 0.3
    r = precision_recall_f1(preds, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for avg, key in [("micro", "micro_"), (None, "per_class_")]:
            p, rc, f, _ = skm.precision_recall_fscore_support(targets, preds, average=avg,
                                                              zero_division=0)
            np.testing.assert_allclose(r[key + "precision"], p)
            np.testing.assert_allclose(r[key + "recall"], rc)
            np.testing.assert_allclose(r[key + "F1"], f)


def test_per_class_thresholds_are_strict():
    scores = np.array([[0.5, 0.7, 0.1],
                       [0.6, 0.69, 0.2],
                       [0.4, 0.71, 0.3]])
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]])
    r = at_thresholds(scores, targets, np.array([0.5, 0.7, 0.3]))
    # predicted: (1,0) and (2,1) only; scores equal to their threshold are not hits
    np.testing.assert_array_equal(r["per_class_tp"], [1, 1, 0])
    np.testing.assert_array_equal(r["per_class_fp"], [0, 0, 0])
    np.testing.assert_array_equal(r["per_class_fn"], [1, 1, 1])
    # scalar threshold broadcasts to every class
    r2 = at_thresholds(scores, targets, 0.5)
    assert r2["per_class_tp"].tolist() == [1, 2, 0]
    assert r2["per_class_fp"].tolist() == [0, 1, 0]


def test_tagging_report_json_and_per_class():
    rng = np.random.default_rng(3)
    probs = rng.random((20, 4))
    targets = (rng.random((20, 4)) < 0.4).astype(np.float32)
    targets[:, 2] = 0
    rep = tagging_report(probs, targets, [0.5, 0.6, 0.5, 0.4], tag_names=["cat", "dog", "car", "sky"])
    for k in ["mAP", "mAP_classes", "precision", "recall", "F1",
              "micro_precision", "micro_recall", "micro_F1"]:
        assert k in rep
    assert isinstance(rep["mAP"], float) and isinstance(rep["mAP_classes"], int)
    assert rep["mAP_classes"] == 3
    assert [row["name"] for row in rep["per_class"]] == ["cat", "dog", "sky"]
    m, _ = mean_average_precision(probs, targets)
    assert rep["mAP"] == pytest.approx(m)
    assert rep["per_class"][1]["threshold"] == 0.6
    json.loads(json.dumps(rep, allow_nan=False))
    assert "per_class" not in tagging_report(probs, targets, 0.5)


def test_tagging_bad_inputs():
    s, t = np.random.rand(4, 3), np.zeros((4, 3))
    with pytest.raises(ValueError, match="shape"):
        average_precision_per_class(s, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        average_precision_per_class(s[0], t[0])
    bad = s.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(bad, t)
    with pytest.raises(ValueError, match="binary"):
        mean_average_precision(s, t + 2)
    with pytest.raises(ValueError, match="binary"):
        at_thresholds(s, np.full((4, 3), 0.5), 0.5)
    with pytest.raises(ValueError, match="thresholds"):
        at_thresholds(s, t, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        precision_recall_f1(np.zeros((4, 2), bool), t)
    with pytest.raises(ValueError, match="tag_names"):
        tagging_report(s, t, 0.5, tag_names=["a"])


# ----------------------------------------------------------------------------- captioning

def test_coco_tokenize_examples():
    from clipjax.evaluation.captioning_metrics import coco_tokenize
    assert coco_tokenize("A man, riding a horse.") == "a man riding a horse"
    assert coco_tokenize("  Two DOGS play -- in the snow!  ") == "two dogs play in the snow"
    assert coco_tokenize("The dog's ball isn't red...") == "the dog 's ball is n't red"
    assert coco_tokenize("I can't; it won't.") == "i ca n't it wo n't"
    assert coco_tokenize('A "black-and-white" photo (old) of 1,000 cats: 3.5 m?') == \
        "a black-and-white photo old of 1,000 cats 3.5 m"
    assert coco_tokenize("It\u2019s 5 o'clock - the dogs' toys") == "it 's 5 o'clock the dogs toys"
    assert coco_tokenize("") == ""


def test_bleu_identical_and_hand_value():
    pytest.importorskip("pycocoevalcap")
    from clipjax.evaluation.captioning_metrics import caption_scores
    r = caption_scores({1: "A man riding a horse.", 2: "Two dogs in the snow"},
                       {1: ["a man riding a horse", "a person on a horse"],
                        2: ["two dogs in the snow."]})
    for n in range(1, 5):
        assert r[f"BLEU_{n}"] == pytest.approx(1.0, abs=1e-6)
    # hypothesis 6 tokens, closest reference 7 tokens:
    # p1 = 6/6, p2 = 4/5, p3 = 3/4, p4 = 2/3, BP = exp(1 - 7/6)
    r = caption_scores({"a": "a man is riding a horse"}, {"a": ["A man is riding a brown horse."]})
    bp = math.exp(1 - 7 / 6)
    assert r["BLEU_1"] == pytest.approx(bp, rel=1e-6)
    assert r["BLEU_2"] == pytest.approx(bp * (4 / 5) ** (1 / 2), rel=1e-6)
    assert r["BLEU_3"] == pytest.approx(bp * (4 / 5 * 3 / 4) ** (1 / 3), rel=1e-6)
    assert r["BLEU_4"] == pytest.approx(bp * (4 / 5 * 3 / 4 * 2 / 3) ** (1 / 4), rel=1e-6)
    assert set(r) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "CIDEr"}
    assert all(isinstance(v, float) for v in r.values())


def test_bleu_matches_nltk_if_available():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    from clipjax.evaluation.captioning_metrics import caption_scores
    hyp, refs = "a cat sits on a red mat", ["a cat is sitting on the red mat", "there is a cat on a mat"]
    r = caption_scores({0: hyp}, {0: refs})
    ref = nltk_bleu.corpus_bleu([[x.split() for x in refs]], [hyp.split()])
    assert r["BLEU_4"] == pytest.approx(ref, rel=1e-4)


def test_cider_prefers_right_caption_and_is_corpus_level(capsys):
    pytest.importorskip("pycocoevalcap")
    from clipjax.evaluation.captioning_metrics import caption_scores
    refs = {
        0: ["a man riding a horse on a beach", "a person rides a brown horse near the ocean"],
        1: ["two dogs playing in the snow", "a pair of dogs run through snow"],
        2: ["a plate of pasta with tomato sauce", "spaghetti with red sauce on a white plate"],
        3: ["a red bus driving down a city street", "a double decker bus on the road"],
    }
    right = {0: "a man rides a horse on the beach", 1: "two dogs play in the snow",
             2: "a plate of spaghetti with sauce", 3: "a red bus on a city street"}
    wrong = {0: right[1], 1: right[2], 2: right[3], 3: right[0]}
    good, bad = caption_scores(right, refs), caption_scores(wrong, refs)
    assert good["CIDEr"] > 1.0 > bad["CIDEr"]
    assert good["CIDEr"] > bad["CIDEr"] + 1.0
    assert good["BLEU_1"] > bad["BLEU_1"]
    # IDF comes from the reference corpus: a single-image corpus scores CIDEr 0
    single = caption_scores({0: right[0]}, {0: refs[0]})
    assert single["CIDEr"] == 0.0
    assert capsys.readouterr().out == ""  # pycocoevalcap's prints are silenced


def test_caption_scores_bad_inputs():
    from clipjax.evaluation.captioning_metrics import caption_scores, coco_tokenize
    with pytest.raises(ValueError, match="no references"):
        caption_scores({1: "a cat", 2: "a dog"}, {1: ["a cat"]})
    with pytest.raises(ValueError, match="no prediction"):
        caption_scores({1: "a cat"}, {1: ["a cat"], 2: ["a dog"]})
    with pytest.raises(ValueError, match="empty"):
        caption_scores({1: "a cat"}, {1: []})
    with pytest.raises(ValueError, match="empty"):
        caption_scores({}, {})
    with pytest.raises(ValueError, match="list of str"):
        caption_scores({1: "a cat"}, {1: "a cat"})
    with pytest.raises(ValueError, match="must be a str"):
        caption_scores({1: ["a cat"]}, {1: ["a cat"]})
    with pytest.raises(ValueError, match="not a str"):
        caption_scores({1: "a cat"}, {1: ["a cat", None]})
    with pytest.raises(ValueError, match="after tokenisation"):
        caption_scores({1: "a cat"}, {1: ["...", "!"]})
    with pytest.raises(ValueError):
        coco_tokenize(None)
