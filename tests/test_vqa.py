"""Zero-shot VQA (vqa.py, clipjax/apps/vqa.py, clipjax/apps/shapes_questions.py): question
parsing into types, subjects and prompts, answer lists and their errors, ground-truth questions
from objects, scoring with stub models, and vqa.py end to end on a tiny random CLIP."""

import json

import numpy as np
import pytest

import vqa
from clipjax.apps.shapes_questions import questions_for
from clipjax.apps.vqa import QuestionError, answer_json, clip_scores, itm_scores, parse
from clipjax.data.shapes_dataset import COLOR_NAMES, SHAPES


def test_parse_types_and_prompts():
    q = parse("What colour is the star?")
    assert (q.qtype, q.subject, q.answers) == ("colour", "star", list(COLOR_NAMES))
    assert q.prompts[0] == "a photo of a red star."
    assert parse("what color is the small star on the left").subject == "small star on the left"
    q = parse("what shape is the red object?")
    assert (q.qtype, q.answers, q.prompts[0]) == ("shape", list(SHAPES), "a photo of a red circle.")
    q = parse("Is there a  red star?")
    assert (q.qtype, q.subject, q.answers) == ("exists", "red star", ["yes", "no"])
    assert q.prompts == ["a photo with a red star.", "a photo with no red star."]
    assert parse("is there any blue cross in the picture?").subject == "blue cross"
    q = parse("how many objects are there?", answers=["1", "two", "3"])
    assert q.qtype == "count" and q.prompts == ["a photo of one object.", "a photo of two objects.",
                                                "a photo of three objects."]
    assert parse("how many shapes can you see?").answers == ["one", "two", "three"]
    assert parse("how many objects?", templates={"count": "{x} shape{s}."}).prompts[:2] == ["one shape.", "two shapes."]
    # a named type with other wording: the whole question is the subject
    q = parse("the star's hue", qtype="color", answers=["red", "blue"])
    assert q.qtype == "colour" and q.prompts == ["a photo of a red the star's hue.", "a photo of a blue the star's hue."]


@pytest.mark.parametrize("question,kw,msg", [
    ("why is the sky blue?", {}, "cannot tell the type"),
    ("", {}, "empty"),
    ("what colour is the star?", {"qtype": "texture"}, "unknown question type 'texture'"),
    ("is there a star?", {"answers": ["yes", "maybe"]}, "yes,no"),
    ("how many objects?", {"answers": ["1", "lots"]}, "not a number"),
    ("what colour is the star?", {"answers": ["red", "red"]}, "repeats"),
    ("what colour is the star?", {"answers": ["red"]}, "at least two"),
    ("what colour is the star?", {"answers": ["red", " "]}, "empty answer"),
])
def test_bad_questions(question, kw, msg):
    with pytest.raises(QuestionError, match=msg):
        parse(question, **kw)


def test_questions_from_objects():
    objs = [dict(color="red", shape="star"), dict(color="red", shape="circle"), dict(color="blue", shape="star")]
    qs = questions_for(objs, np.random.default_rng(0), COLOR_NAMES, SHAPES)
    by = {}
    for t, q, a in qs:
        by.setdefault(t, []).append((q, a))
    assert by["colour"] == [("what colour is the circle?", "red")]  # star is ambiguous (two stars)
    assert by["shape"] == [("what shape is the blue object?", "star")]  # red is ambiguous
    (yq, ya), (nq, na) = by["exists"]
    assert ya == "yes" and yq[len("is there a "):-1] in ("red star", "red circle", "blue star")
    assert na == "no" and nq[len("is there a "):-1] not in ("red star", "red circle", "blue star")
    assert by["count"] == [("how many objects are there?", "three")]
    for t, q, _ in qs:
        assert parse(q).qtype == t  # every generated question parses back to its type


def test_scoring_with_stubs():
    class StubCLIP:  # prompts about "red" point along axis 0, the rest along axis 1
        logit_scale = 10.0

        def encode_text(self, texts):
            return np.array([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts], np.float32)

    q = parse("what colour is the star?", answers=["blue", "red", "green"])
    img = np.array([[0.8, 0.6]], np.float32)
    (s,) = clip_scores(StubCLIP(), img, [q])
    assert np.isclose(s.sum(), 1) and int(np.argmax(s)) == 1
    out = answer_json(q, s, "clip")
    assert out["answer"] == "red" and out["candidates"][1]["prompt"] == "a photo of a red star."

    class StubT2T:
        def match_probs(self, images, texts):
            assert len(images) == len(texts)
            return np.array([0.9 if "no " in t else 0.2 for t in texts])

    qs = [parse("is there a red star?"), parse("is there a blue cross?")]
    scores = itm_scores(StubT2T(), ["im0", "im1"], qs)
    assert [q.answers[int(np.argmax(s))] for q, s in zip(qs, scores)] == ["no", "no"]


def test_vqa_cli(tmp_path, capsys):
    import flax.linen as nn
    import jax
    from PIL import Image

    from clipjax.convert.formats import save_clipjax
    from clipjax.models.clip import CLIP
    from clipjax.models.presets import get_preset

    cfg = get_preset("tiny-vit")
    v = nn.unbox(CLIP(cfg).init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 77), np.int32)))
    ckpt = str(tmp_path / "tiny")
    save_clipjax(ckpt, v, cfg)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    rc = vqa.main(["--checkpoint", ckpt, "--image", str(img), "--question", "how many objects are there?",
                   "--answers", "1,2,3,4"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["type"] == "count" and out["answer"] in ("1", "2", "3", "4")
    assert np.isclose(sum(c["score"] for c in out["candidates"]), 1, atol=1e-5)

    def err(*args):
        rc = vqa.main(["--checkpoint", ckpt, *args])
        e = capsys.readouterr().err
        assert rc == 2 and e.startswith("vqa.py: error:") and "Traceback" not in e, e
        return e

    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert "bad.png" in err("--image", str(bad), "--question", "what colour is the star?")
    assert "unknown question type" in err("--image", str(img), "--question", "what?", "--type", "size")
    assert "cannot tell the type" in err("--image", str(img), "--question", "describe the image")
