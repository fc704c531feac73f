"""moderate.py and clipjax.apps.moderation*: policy errors (one line, exit 2, before any model
loads), the JSON document of a run with a tiny random-weight CLIP (scores recomputed
independently through clipjax.load), unreadable images skipped one line each, the threshold
rule on numbers (against sklearn), and --calibrate end to end on a labelled CSV."""

import csv
import importlib.util
import json
import os
import pathlib
import re

import jax
import numpy as np
import pytest
from PIL import Image

import clipjax
from clipjax.apps import moderation_calibration as cal
from clipjax.apps.moderation_policy import load_policy
from clipjax.convert.formats import save_clipjax

ROOT = pathlib.Path(__file__).resolve().parent.parent
B8 = ["--batch-size", "8"]  # one batch size: the encoders compile once (see one_compile)
POLICY = """\
templates: ["a photo of a {}.", "a drawing of a {}."]
categories:
  red:
    positive: [red thing, crimson object]
    negative: [blue thing, green thing]
    threshold: 0.0
  round:
    positive: circle
    negative: [square, triangle]
    threshold: 1.0
    templates: ["{}", "a very long and wordy sentence describing an image that contains a {} in it"]
"""


def _cli():
    spec = importlib.util.spec_from_file_location("moderate_cli", ROOT / "moderate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _init(cfg, seed: int = 0):
    """Random weights of the right shapes without compiling an init (tracing only)."""
    import flax.linen as nn
    from clipjax.models.clip import CLIP, init_inputs

    shapes = nn.unbox(jax.eval_shape(CLIP(cfg).init, jax.random.PRNGKey(0), *init_inputs(cfg)))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if "logit_scale" in name:
            return np.full(s.shape, np.log(10.0), s.dtype)
        if "scale" in name:
            return np.ones(s.shape, s.dtype)
        if np.issubdtype(s.dtype, np.integer):
            return np.zeros(s.shape, s.dtype)
        return (rng.normal(size=s.shape) * 0.05).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = clipjax.get_preset("tiny-vit")
    cfg = cfg.replace(text=cfg.text.replace(context_length=16))  # the long template above is cut
    d = tmp_path_factory.mktemp("moderation_ckpt") / "clip"
    save_clipjax(str(d), _init(cfg), cfg)
    return str(d)


@pytest.fixture(scope="module", autouse=True)
def one_compile():
    """Every main() here loads the same checkpoint and would compile its encoders anew (~5 s each
    on a loaded 2-core CPU): load once per path, build the encoders once per batch size."""
    from clipjax.apps import moderation as mod

    loads, encs = {}, {}
    real_load, real_enc = mod.load_clip, mod.Encoders

    def load_clip(path):
        if path not in loads:
            loads[path] = real_load(path)
        return loads[path]

    def encoders(clip, batch_size=64):
        key = (id(clip), batch_size)
        if key not in encs:
            encs[key] = real_enc(clip, batch_size)
        return encs[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mod, "load_clip", load_clip)
        mp.setattr(mod, "Encoders", encoders)
        yield


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("moderation_images")
    (d / "sub").mkdir()
    rng = np.random.default_rng(1)
    for i in range(14):
        size = (24 + 3 * i, 40 - i)
        mode = ["RGB", "L", "RGBA"][i % 3]
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA").convert(mode)
        img.save(d / ("sub" if i % 4 == 0 else ".") / f"img{i:02d}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
    (d / "readme.txt").write_text("not an image, not listed")
    return d


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("moderation_policy") / "policy.yaml"
    p.write_text(POLICY)
    return str(p)


# ------------------------------------------------------------------------------ policy errors
BAD_POLICIES = {
    "": "is empty",
    "# only a comment\n": "is empty",
    "categories: {}\n": "defines no categories",
    "name: x\n": "defines no categories",
    "categories:\n  a:\n    negative: [x]\n": "category 'a' has no positive prompts",
    "categories:\n  a:\n    positive: []\n    negative: [x]\n": "category 'a' has no positive prompts",
    "categories:\n  a:\n": "category 'a' has no positive prompts",
    "categories:\n  a:\n    positive: [x]\n": "category 'a' has no negative prompts",
    "categories:\n  a: {positive: [x], negative: [y], threshold: 1.5}\n": "outside [0, 1]",
    "categories:\n  a: {positive: [x], negative: [y], threshold: -0.1}\n": "outside [0, 1]",
    "categories:\n  a: {positive: [x], negative: [y], threshold: high}\n": "is not a number",
    "categories:\n  a: {positive: [x], negative: [y], threshold: yes}\n": "is not a number",
    "categories:\n  a: {positive: [x], negative: [y], threshold: .nan}\n": "outside [0, 1]",
    "categories:\n  a: {postive: [x], negative: [y]}\n": "unknown key 'postive'",
    "categories:\n  a: {positive: [x, x], negative: [y]}\n": "listed twice",
    "categories:\n  a: {positive: [x], negative: [x]}\n": "both positive and negative",
    "categories:\n  a: {positive: [x], negative: [y]}\n  a: {positive: [z], negative: [y]}\n": "given twice",
    "templates: [a photo]\ncategories:\n  a: {positive: [x], negative: [y]}\n": "exactly one '{}'",
    "categories:\n  a: {positive: [x], negative: [y]\n": "not valid YAML at line",
    "categories: [a, b]\n": "must be a mapping",
    "- just\n- a list\n": "top level must be a mapping",
}


def test_policy_errors_are_one_line_exit_2(tmp_path, capsys):
    cli = _cli()
    for i, (text, want) in enumerate(BAD_POLICIES.items()):
        p = tmp_path / f"p{i}.yaml"
        p.write_text(text)
        # the policy is checked before the (here missing) checkpoint is loaded
        assert cli.main(["--checkpoint", str(tmp_path / "no_ckpt"), "--policy", str(p), "x.png"]) == 2, text
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, (text, err)
        assert err.startswith("moderate.py: error: policy ") and want in err, (text, err)
    assert cli.main(["--checkpoint", "c", "--policy", str(tmp_path / "missing.yaml"), "x.png"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_example_policy_parses():
    p = load_policy(str(ROOT / "configs/policies/fashion_stand_in.yaml"))
    assert p.names == ["footwear", "bag"]
    assert p.categories[0].positive == ("sandal", "sneaker", "ankle boot") and len(p.categories[0].templates) == 5


# ------------------------------------------------------------------------------ a run
def _reference_scores(ckpt, paths, policy):
    """The documented score, computed without clipjax.apps: LoadedCLIP's encoders, numpy."""
    clip = clipjax.load(ckpt)
    img = np.asarray(clip.encode_image(list(paths)), np.float64)
    out = {}
    for c in policy.categories:
        e = []
        for p in c.prompts:
            t = np.asarray(clip.encode_text([tmpl.format(p) for tmpl in c.templates]), np.float64).mean(0)
            e.append(t / np.linalg.norm(t))
        logits = clip.logit_scale * img @ np.stack(e).T
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        out[c.name] = prob[:, :len(c.positive)].sum(1)
    return out


def test_json_document_skips_and_scores(ckpt, images, policy_file, tmp_path, capsys):
    cli = _cli()
    out = tmp_path / "out" / "result.json"
    missing = str(images / "gone.png")
    assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, str(images), missing, str(images / "sub" / "*.png"),
                     "--json", str(out), "--no-progress", "--max-rows", "3", *B8]) == 0
    cap = capsys.readouterr()
    doc = json.loads(out.read_text())
    assert set(doc) == {"checkpoint", "policy", "score", "categories", "images", "skipped", "summary"}
    assert list(doc["categories"]) == ["red", "round"] and doc["categories"]["round"]["threshold"] == 1.0
    # the folder (recursive, sorted) then the missing file; the glob's files were already listed
    assert len(doc["images"]) == 14 and doc["summary"]["images"] == 14
    assert {s["image"]: s["reason"] for s in doc["skipped"]} == {
        str(images / "broken.png"): "not a decodable image", missing: "missing or unreadable"}
    skip_lines = [ln for ln in cap.err.splitlines() if "skipped" in ln]
    assert len(skip_lines) == 2 and all(ln.startswith("moderate.py: skipped ") for ln in skip_lines)
    # the 16-token context cuts the long template: said once per prompt, as a warning
    assert sum("warning: prompt" in ln for ln in cap.err.splitlines()) == 3
    for r in doc["images"]:
        assert set(r) == {"image", "flagged", "scores", "top_prompt"}
        assert all(0.0 <= v <= 1.0 for v in r["scores"].values())
        assert list(r["flagged"]) == ["red"]  # threshold 0 flags everything, threshold 1 nothing
        assert r["top_prompt"]["round"] in ("circle", "square", "triangle")
    assert doc["summary"]["flagged"] == {"red": 14, "round": 0} and doc["summary"]["flagged_any"] == 14
    # the scores are the documented quantity
    ref = _reference_scores(ckpt, [r["image"] for r in doc["images"]], load_policy(policy_file))
    for name in ("red", "round"):
        got = np.asarray([r["scores"][name] for r in doc["images"]])
        np.testing.assert_allclose(got, ref[name], atol=2e-5)
        assert got.std() > 1e-4  # images are told apart
    # the table: 3 image rows, the rest counted, then the per-category summary
    assert "... and 11 more images" in cap.out and re.search(r"^red\s+0\.0000\s+14 of 14 \(100\.0%\)$", cap.out, re.M)
    assert f"wrote {out}" in cap.out
    # --json - prints the document alone on stdout
    assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, str(images / "img01.png"), "--json", "-",
                     "--no-progress", *B8]) == 0
    assert len(json.loads(capsys.readouterr().out)["images"]) == 1


def test_bad_image_arguments(ckpt, images, policy_file, tmp_path, capsys):
    cli = _cli()
    cases = [([str(tmp_path / "*.jpg")], "no file matches"),
             ([], "no images given"),
             ([str(images / "broken.png"), str(tmp_path / "nope.png")], "no readable image among the 2 given")]
    (tmp_path / "empty").mkdir()
    cases.append(([str(tmp_path / "empty")], "holds no image file"))
    for imgs, want in cases:
        assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, *imgs, "--no-progress", *B8]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("moderate.py: error")]
        assert len(err) == 1 and want in err[0], (imgs, err)


# ------------------------------------------------------------------------------ thresholds
def test_pick_threshold_on_numbers():
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    y = [1, 1, 0, 1, 0, 0]
    r = cal.pick_threshold(s, y, 0.75)  # cutoff 0.6: 3 of 4 flagged are positive, all positives found
    assert r["reached"] and r["threshold"] == pytest.approx(0.55) and r["precision"] == 0.75 and r["recall"] == 1.0
    r = cal.pick_threshold(s, y, 0.8)  # 0.6 gives 0.75 < 0.8: the lowest reaching 0.8 is 0.8
    assert r["reached"] and r["threshold"] == pytest.approx(0.75) and r["recall"] == pytest.approx(2 / 3)
    m = cal.prf(s, y, r["threshold"])
    assert m["precision"] == 1.0 and m["f1"] == pytest.approx(0.8)
    # once every positive is flagged, a lower threshold only adds false positives: not taken
    r = cal.pick_threshold([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0], 0.5)
    assert r["threshold"] == pytest.approx(0.55) and r["precision"] == 1.0
    # tied scores are one cutoff
    r = cal.pick_threshold([0.5, 0.5, 0.5, 0.2], [1, 0, 1, 0], 0.6)
    assert r["threshold"] == pytest.approx(0.35) and r["precision"] == pytest.approx(2 / 3)
    # unreachable: the cutoff of best precision, said so; no positives: no threshold
    r = cal.pick_threshold([0.9, 0.8, 0.1], [0, 0, 1], 0.95)
    assert not r["reached"] and r["precision"] == pytest.approx(1 / 3) and r["threshold"] == 0.1
    assert cal.pick_threshold([0.3, 0.2], [0, 0], 0.9)["threshold"] is None
    assert cal.prf([0.3, 0.2], [0, 1], 0.5)["precision"] is None


def test_pick_threshold_agrees_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(5, 200))
        y = rng.random(n) < rng.uniform(0.1, 0.9)
        if not y.any():
            continue
        s = np.round(rng.random(n) + y * rng.uniform(0, 1.5), 2)
        target = float(rng.choice([0.6, 0.8, 0.9, 0.95, 1.0]))
        r = cal.pick_threshold(s, y, target)
        prec, rec, thr = metrics.precision_recall_curve(y, s, drop_intermediate=False)
        prec, rec = prec[:-1], rec[:-1]
        ok = prec >= target
        assert r["reached"] == bool(ok.any())
        if ok.any():  # the most recall at the target, and the highest threshold giving it
            best = rec[ok].max()
            want = thr[ok & (rec == best)].max()
            assert r["recall"] == pytest.approx(best)
            assert cal.prf(s, y, r["threshold"])["precision"] >= target
            assert np.sum(s >= r["threshold"]) == np.sum(s >= want)
        assert cal.average_precision(s, y) == pytest.approx(metrics.average_precision_score(y, s))


def test_holdout_split_is_deterministic_and_order_free():
    keys = [f"images/{i:05d}.png" for i in range(2000)]
    m = cal.holdout_mask(keys, 0.5)
    assert 0.45 < m.mean() < 0.55
    perm = np.random.default_rng(0).permutation(len(keys))
    np.testing.assert_array_equal(cal.holdout_mask([keys[i] for i in perm], 0.5), m[perm])
    assert (cal.holdout_mask(keys, 0.2) <= m).all()  # a smaller share holds out a subset


# ------------------------------------------------------------------------------ --calibrate
def test_calibrate_end_to_end(ckpt, images, policy_file, tmp_path, capsys):
    cli = _cli()
    res = tmp_path / "scores.json"
    assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, str(images), "--json", str(res),
                     "--no-progress", *B8]) == 0
    rows = json.loads(res.read_text())["images"]
    # labels the model can reach: "red" is the upper half of its own scores, "round" the top 3
    red = np.asarray([r["scores"]["red"] for r in rows])
    rnd = np.asarray([r["scores"]["round"] for r in rows])
    lab_csv = tmp_path / "data" / "labelled.csv"
    lab_csv.parent.mkdir()

    def rel(path):  # relative to the CSV, as a user's would be: the split does not depend on tmp names
        return os.path.relpath(path, lab_csv.parent)

    with open(lab_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "note", "red", "round"])
        for r, a, b in zip(rows, red, rnd):
            w.writerow([rel(r["image"]), "x", int(a > np.median(red)), int(b >= np.sort(rnd)[-3])])
        w.writerow([str(images / "broken.png"), "x", 1, 0])  # skipped, not counted anywhere
    capsys.readouterr()
    out_policy = tmp_path / "cal" / "calibrated.yaml"
    report_path = tmp_path / "report.json"
    assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, "--calibrate", str(lab_csv), "--target-precision",
                     "1.0", "--output-policy", str(out_policy), "--json", str(report_path), "--plot",
                     str(tmp_path / "pr.png"), "--no-progress", *B8]) == 0
    cap = capsys.readouterr()
    rep = json.loads(report_path.read_text())
    assert rep["split"]["calibration"] + rep["split"]["held_out"] == 14 and rep["skipped"] == 1
    assert "moderate.py: skipped" in cap.err and "held out, calibrated" in cap.out
    calibrated = load_policy(str(out_policy))
    for c in calibrated.categories:
        r = rep["categories"][c.name]
        assert c.threshold == pytest.approx(r["threshold"])
        assert set(r["held_out"]) == {"calibrated", "policy", "average_precision"}
        assert {"precision", "recall", "f1", "positives"} <= set(r["held_out"]["calibrated"])
        if r["calibration"]["positives"]:
            assert r["reached"] and r["calibration"]["precision"] == 1.0
    assert calibrated.categories[0].positive == ("red thing", "crimson object")
    assert "calibration" in calibrated.raw and Image.open(tmp_path / "pr.png").size[0] > 400
    # the split and thresholds are the same on a second run
    assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, "--calibrate", str(lab_csv), "--target-precision",
                     "1.0", "--output-policy", str(tmp_path / "again.yaml"), "--json", "-", "--no-progress", *B8]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["split"] == rep["split"]
    assert {k: v["threshold"] for k, v in again["categories"].items()} == \
        {k: v["threshold"] for k, v in rep["categories"].items()}
    # the top-scored image of the calibration part a negative, every other one positive: precision
    # 1.0 cannot be reached; "round" without any positive keeps its policy threshold
    keys = [rel(r["image"]) for r in rows]
    cal_rows = np.nonzero(~cal.holdout_mask(keys, 0.5))[0]
    assert len(cal_rows) >= 2
    top = cal_rows[np.argmax(red[cal_rows])]
    inv = tmp_path / "data" / "unreachable.csv"
    inv.write_text("image,red,round\n" + "".join(f"{k},{int(i != top)},0\n" for i, k in enumerate(keys)))
    assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, "--calibrate", str(inv), "--target-precision",
                     "1.0", "--output-policy", str(tmp_path / "inv.yaml"), "--json", "-", "--no-progress", *B8]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert not rep["categories"]["red"]["reached"] and rep["categories"]["red"]["calibration"]["precision"] < 1.0
    assert rep["categories"]["round"]["threshold"] == 1.0  # the policy's, kept
    assert "'red': no threshold reaches precision 1.0" in cap.err and "'round' has no positive example" in cap.err


def test_calibrate_input_errors(ckpt, policy_file, tmp_path, capsys):
    cli = _cli()
    bad = {"": "is empty",
           "image,red\na.png,1\n": "no column for category 'round'",
           "path,red,round\na.png,1,0\n": "no 'image' column",
           "image,red,round\na.png,1,2\n": "row 2, column 'round': '2' is not 0 or 1",
           "image,red,round\na.png,1,0\na.png,0,0\n": "row 3 repeats the image of row 2",
           "image,red,round\na.png,1\n": "row 2 has 2 fields",
           "image,red,round\n": "a header but no rows"}
    for i, (text, want) in enumerate(bad.items()):
        p = tmp_path / f"l{i}.csv"
        p.write_text(text)
        # the CSV is checked before the checkpoint is loaded
        assert cli.main(["--checkpoint", str(tmp_path / "nope"), "--policy", policy_file, "--calibrate", str(p)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and want in err, (text, err)
    for extra, want in ((["--target-precision", "1.5"], "--target-precision"), (["--holdout", "1"], "--holdout"),
                        (["x.png"], "give no IMAGES"), (["--output-policy", policy_file], "is the input policy")):
        p = tmp_path / "ok.csv"
        p.write_text("image,red,round\na.png,1,0\n")
        assert cli.main(["--checkpoint", ckpt, "--policy", policy_file, "--calibrate", str(p), *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and want in err, (extra, err)
