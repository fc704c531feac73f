"""The public API and convert.py: load any format, convert between all three, export a
directory that transformers' own pipeline runs, and clear errors."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import clipjax
from clipjax.convert.common import read_state_dict
from clipjax.models.presets import get_preset
from hf_reference import hf_clip_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["a photo of an astronaut", "a photo of a cat", "a photo of a rocket", "a cup of coffee"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hf") / "tiny")
    hf_clip_model(get_preset("tiny-vit"), seed=1).save_pretrained(d)
    return d


def _photos():
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.rocket()]


def _run_convert(*args):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "convert.py"), *args], capture_output=True, text=True)
    return r


def test_load_hf_and_encode(hf_dir):
    clip = clipjax.load(hf_dir)
    img = clip.encode_image(_photos())
    txt = clip.encode_text(CLASSES)
    assert img.shape == (3, 32) and txt.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    # strings and the ids clipjax.tokenize makes give the same embeddings
    np.testing.assert_allclose(clip.encode_text(clipjax.tokenize(CLASSES)), txt, atol=1e-6)
    assert clip.logit_scale == pytest.approx(float(np.exp(np.log(1 / 0.07) + 0.1)), rel=1e-6)


def test_convert_cli_round_trips_all_formats(hf_dir, tmp_path):
    cj, hf2, oa = str(tmp_path / "cj"), str(tmp_path / "hf2"), str(tmp_path / "openai.pt")
    for src, dst, to in ((hf_dir, cj, "clipjax"), (cj, hf2, "hf"), (cj, oa, "openai")):
        r = _run_convert("--src", src, "--dst", dst, "--to", to)
        assert r.returncode == 0, r.stderr
    a, b = read_state_dict(hf_dir), read_state_dict(hf2)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    # the same model through all three loaders gives the same embeddings
    photos = _photos()
    embs = [clipjax.load(p).encode_image(photos) for p in (hf_dir, cj, oa)]
    for e in embs[1:]:
        np.testing.assert_array_equal(e, embs[0])


def test_exported_directory_runs_in_transformers_pipeline(hf_dir, tmp_path):
    """An exported directory is self-contained: transformers' own zero-shot pipeline loads it
    (tokenizer and image processor files included) and agrees with clipjax."""
    import transformers
    from PIL import Image

    out = str(tmp_path / "export")
    r = _run_convert("--src", hf_dir, "--dst", out, "--to", "hf")
    assert r.returncode == 0, r.stderr
    for f in ("config.json", "model.safetensors", "tokenizer_config.json", "preprocessor_config.json"):
        assert os.path.exists(os.path.join(out, f)), f
    pipe = transformers.pipeline("zero-shot-image-classification", model=out, device="cpu")
    labels = ["astronaut", "cat", "rocket", "coffee"]
    template = "a photo of {}."
    clip = clipjax.load(out)
    worst = 0.0
    for photo in _photos():
        res = pipe(Image.fromarray(photo), candidate_labels=labels, hypothesis_template=template)
        ref = {d["label"]: d["score"] for d in res}
        ours = clip.zero_shot_probs([photo], [template.format(lab) for lab in labels])[0]
        worst = max(worst, max(abs(ref[lab] - ours[i]) for i, lab in enumerate(labels)))
    print(f"\nzero-shot probabilities vs transformers pipeline: max abs diff {worst:.2e}")
    assert worst <= 1e-4

    model = transformers.CLIPModel.from_pretrained(out).eval()
    with torch.no_grad():
        proc = transformers.CLIPProcessor.from_pretrained(out)
        inputs = proc(text=["a photo of a cat"], images=[Image.fromarray(_photos()[1])], return_tensors="pt",
                      padding=True)
        ref = model(**inputs).logits_per_image.numpy()
    ours = clip.similarity(clip.encode_image([_photos()[1]]), clip.encode_text(["a photo of a cat"]))
    assert np.abs(ours - ref).max() <= 1e-4


def test_encode_image_preprocessed_arrays(hf_dir):
    clip = clipjax.load(hf_dir)
    x = clip.preprocess(_photos())
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(clip.encode_image(x, preprocessed=True), clip.encode_image(_photos()))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(clipjax.CheckpointError, match="No such checkpoint"):
        clipjax.load(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(clipjax.CheckpointError, match="neither a clipjax"):
        clipjax.load(str(empty))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = _run_convert("--src", str(bad), "--dst", str(tmp_path / "o"), "--to", "hf")
    assert r.returncode == 2 and "is not a checkpoint clipjax reads (text)" in r.stderr and "Traceback" not in r.stderr


def test_messages_say_what_is_wrong(hf_dir, tmp_path, caplog):
    """Each of these was a misleading message once (issue 18): a KeyError, PyTorch's advice to
    unpickle an untrusted file, orbax warnings on every load, a traceback for an existing --dst."""
    import logging

    from PIL import Image

    (tmp_path / "notes.txt").write_text("shopping list\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / "config.json").write_text('{"model_type": "clip"}')
    for name, what in (("notes.txt", "(text)"), ("x.png", "(a PNG image)"), ("config.json", "(JSON)")):
        with pytest.raises(clipjax.CheckpointError, match=r"is not a checkpoint clipjax reads " + re.escape(what)):
            clipjax.load(str(tmp_path / name))
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a module, not a state dict
    with pytest.raises(clipjax.CheckpointError, match="pickles Python objects") as e:
        clipjax.load(str(tmp_path / "pickled.pt"))
    assert "weights_only=False" not in str(e.value)

    cj = str(tmp_path / "cj")
    assert _run_convert("--src", hf_dir, "--dst", cj, "--to", "clipjax").returncode == 0
    r = _run_convert("--src", hf_dir, "--dst", cj, "--to", "clipjax")
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    with caplog.at_level(logging.WARNING):
        clip = clipjax.load(cj)
    assert not [rec for rec in caplog.records if rec.name == "absl"], [rec.getMessage() for rec in caplog.records]
    # empty batches: the same answer for images and texts
    assert clip.encode_image([]).shape == clip.encode_text([]).shape == (0, clip.cfg.embed_dim)
