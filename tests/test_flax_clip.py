"""transformers 4.x FlaxCLIPModel directories (flax_model.msgpack + config.json), read and written
by clipjax.convert.flax_clip with flax.serialization alone.

The fixture, tests/data/flax_clip/, was made once, outside the project's environment, by
tests/data/make_flax_clip_fixture.py (transformers v5 has no Flax):

    python3 -m venv /tmp/tf4
    /tmp/tf4/bin/pip install "transformers==4.49.0" "jax==0.4.13" "jaxlib==0.4.13" "flax==0.7.0" \\
        "numpy==1.26.4" torch==2.13.0
    JAX_PLATFORMS=cpu /tmp/tf4/bin/python tests/data/make_flax_clip_fixture.py

(Python 3.11.7, torch 2.13.0+cpu.) `model/` is what `FlaxCLIPModel.save_pretrained` wrote for a
random model (vision 48 wide, 4 heads; text 32 wide, 2 heads, vocabulary 256, 16 positions; 2
layers each; 32 px images, 8 px patches; projection 24); `reference.npz` holds fixed inputs and
the outputs of the PyTorch `CLIPModel.from_pretrained(model/, from_flax=True)` that transformers
4.49 builds from it. (4.57.6, the last 4.x, leaves every weight on the meta device when loading
from Flax, so its from_flax can't be used.) The same script with `--check DIR` loads a directory
`save_flax_clip` wrote in transformers 4.49's FlaxCLIPModel and CLIPModel(from_flax=True): the
logits agree with the reference to 8.9e-07 and 0.
"""

import json
import os
import shutil

import numpy as np
import pytest
from flax.serialization import msgpack_restore, to_bytes
from flax.traverse_util import flatten_dict, unflatten_dict

from clipjax.convert.flax_clip import (INDEX_NAME, WEIGHTS_NAME, is_flax_clip_dir, is_flax_only_clip_dir,
                                       load_flax_clip, save_flax_clip)
from clipjax.models.clip import CLIP
from clipjax.variables import CheckpointError, flatten_variables

HERE = os.path.join(os.path.dirname(__file__), "data", "flax_clip")
MODEL = os.path.join(HERE, "model")


@pytest.fixture(scope="module")
def loaded():
    return load_flax_clip(MODEL)


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(os.path.join(HERE, "reference.npz")))


def _outputs(cfg, variables, ref):
    m = CLIP(cfg)
    pixels = ref["pixel_values"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    ids = ref["input_ids"]
    out = m.apply(variables, pixels, ids)
    return dict(image_features=m.apply(variables, pixels, method=CLIP.encode_image),
                text_features=m.apply(variables, ids, method=CLIP.encode_text),
                image_embeds=out["image_embeds"], text_embeds=out["text_embeds"],
                logits_per_image=out["logits_per_image"])


def test_matches_transformers_pytorch_reference(loaded, reference):
    cfg, variables = loaded
    assert (cfg.vision.width, cfg.vision.heads, cfg.text.width, cfg.text.heads, cfg.embed_dim) == (48, 4, 32, 2, 24)
    assert cfg.text.vocab_size == 256 and cfg.text.context_length == 16 and cfg.text.eos_token_id == 255
    errs = {k: float(np.abs(np.asarray(v) - reference[k]).max()) for k, v in _outputs(cfg, variables, reference).items()}
    print("\nparity vs transformers 4.49 CLIPModel(from_flax=True): " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= 1e-5, errs


def test_legacy_eos_token_id_pools_at_argmax(loaded, reference, tmp_path):
    # transformers' configs from before PR #24773 say eos_token_id=2 and pool at argmax(ids);
    # the fixture's end-of-text id is the largest, so the pooled position is the same.
    d = _copy(tmp_path)
    with open(os.path.join(d, "config.json")) as f:
        hf = json.load(f)
    hf["text_config"]["eos_token_id"] = 2
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf, f)
    cfg, variables = load_flax_clip(d)
    assert cfg.text.eos_token_id is None
    txt = CLIP(cfg).apply(variables, reference["input_ids"], method=CLIP.encode_text)
    assert float(np.abs(np.asarray(txt) - reference["text_features"]).max()) <= 1e-5


def test_round_trip_bitwise(loaded, tmp_path):
    cfg, variables = loaded
    out = str(tmp_path / "out")
    save_flax_clip(variables, cfg, out)
    assert sorted(os.listdir(out)) == ["config.json", WEIGHTS_NAME]
    # the very bytes transformers 4.x wrote: same tree, key order, dtypes and encoding
    with open(os.path.join(out, WEIGHTS_NAME), "rb") as a, open(os.path.join(MODEL, WEIGHTS_NAME), "rb") as b:
        assert a.read() == b.read()
    cfg2, variables2 = load_flax_clip(out)
    assert cfg2 == cfg
    a, b = flatten_variables(variables), flatten_variables(variables2)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k
    # and save again over it: replaced whole
    save_flax_clip(variables2, cfg2, out)
    assert sorted(os.listdir(out)) == ["config.json", WEIGHTS_NAME]


def test_written_config_is_a_transformers_clip_config(loaded, tmp_path):
    cfg, variables = loaded
    out = str(tmp_path / "out")
    save_flax_clip(variables, cfg, out)
    with open(os.path.join(out, "config.json")) as f:
        hf = json.load(f)
    assert hf["model_type"] == "clip" and hf["architectures"] == ["CLIPModel"] and hf["projection_dim"] == 24
    assert hf["vision_config"]["hidden_size"] == 48 and hf["text_config"]["vocab_size"] == 256
    assert hf["text_config"]["eos_token_id"] == 255


def test_is_flax_clip_dir(tmp_path):
    assert is_flax_clip_dir(MODEL) and is_flax_only_clip_dir(MODEL)
    assert not is_flax_clip_dir(os.path.join(MODEL, WEIGHTS_NAME))  # a file
    assert not is_flax_clip_dir(str(tmp_path / "nowhere"))
    only_cfg = tmp_path / "only_config"
    only_cfg.mkdir()
    shutil.copy(os.path.join(MODEL, "config.json"), only_cfg)
    assert not is_flax_clip_dir(str(only_cfg))
    only_weights = tmp_path / "only_weights"
    only_weights.mkdir()
    shutil.copy(os.path.join(MODEL, WEIGHTS_NAME), only_weights)
    assert not is_flax_clip_dir(str(only_weights))
    bert = tmp_path / "bert"
    shutil.copytree(MODEL, bert)
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert not is_flax_clip_dir(str(bert))
    both = tmp_path / "both"
    shutil.copytree(MODEL, both)
    (both / "model.safetensors").write_bytes(b"")
    assert is_flax_clip_dir(str(both)) and not is_flax_only_clip_dir(str(both))


def _copy(tmp_path, name="copy"):
    d = str(tmp_path / name)
    shutil.copytree(MODEL, d)
    return d


def _one_line_error(path, match, **kw):
    with pytest.raises(CheckpointError, match=match) as e:
        load_flax_clip(path, **kw)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_truncated_msgpack(tmp_path):
    d = _copy(tmp_path)
    f = os.path.join(d, WEIGHTS_NAME)
    data = open(f, "rb").read()
    open(f, "wb").write(data[: len(data) // 2])
    _one_line_error(d, "Cannot read Flax checkpoint .*flax_model.msgpack: not a complete msgpack")


@pytest.mark.parametrize("payload", [b"", b"\xc1\xc1\xc1 not msgpack at all", b"PK\x03\x04 a zip file"])
def test_corrupt_msgpack(tmp_path, payload):
    d = _copy(tmp_path)
    open(os.path.join(d, WEIGHTS_NAME), "wb").write(payload)
    _one_line_error(d, "Cannot read Flax checkpoint")


def test_msgpack_that_is_not_a_tree(tmp_path):
    d = _copy(tmp_path)
    open(os.path.join(d, WEIGHTS_NAME), "wb").write(b"\x2a")  # the integer 42
    _one_line_error(d, "holds a value of type int, not a parameter tree")


def test_size_cap(tmp_path):
    _one_line_error(MODEL, r"is 306,311 bytes, over the 1,000 bytes a single msgpack file is read up to", max_bytes=1000)


def _rewrite(tmp_path, mutate):
    d = _copy(tmp_path)
    f = os.path.join(d, WEIGHTS_NAME)
    flat = flatten_dict(msgpack_restore(open(f, "rb").read()), sep="/")
    mutate(flat)
    open(f, "wb").write(to_bytes(unflatten_dict(flat, sep="/")))
    return d


def test_missing_key_is_named(tmp_path):
    d = _rewrite(tmp_path, lambda p: p.pop("text_projection/kernel"))
    _one_line_error(d, r"missing keys \(1\): text_projection/kernel")


def test_missing_layer_is_named(tmp_path):
    def drop(p):
        for k in [k for k in p if k.startswith("vision_model/encoder/layers/1/")]:
            del p[k]

    d = _rewrite(tmp_path, drop)
    _one_line_error(d, r"missing keys \(16\): .*vision_model/encoder/layers/1/mlp/fc1/kernel")


def test_unexpected_key_is_named(tmp_path):
    d = _rewrite(tmp_path, lambda p: p.__setitem__("extra/head/kernel", np.zeros((3, 3), np.float32)))
    _one_line_error(d, r"unexpected keys \(1\): extra/head/kernel \(3, 3\)")


def test_wrong_shape_is_named(tmp_path):
    def shrink(p):
        p["visual_projection/kernel"] = np.ascontiguousarray(p["visual_projection/kernel"][:, :10])

    d = _rewrite(tmp_path, shrink)
    _one_line_error(d, r"shape mismatches \(1\): visual_projection/kernel: checkpoint \(48, 10\) vs expected \(48, 24\)")


def test_transposed_kernel_is_refused(tmp_path):
    # a square q_proj kernel transposed keeps its size; a non-square fc1 kernel does not
    def transpose(p):
        k = "text_model/encoder/layers/0/mlp/fc1/kernel"
        p[k] = np.ascontiguousarray(p[k].T)

    d = _rewrite(tmp_path, transpose)
    _one_line_error(d, r"text_model/encoder/layers/0/mlp/fc1/kernel: checkpoint \(64, 32\) vs expected \(32, 64\)")


def test_config_that_does_not_fit_the_weights(tmp_path):
    d = _copy(tmp_path)
    with open(os.path.join(d, "config.json")) as f:
        hf = json.load(f)
    hf["text_config"]["num_hidden_layers"] = 1
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf, f)
    msg = _one_line_error(d, r"unexpected keys \(16\): text_model/encoder/layers/1/")
    assert msg.startswith(f"Flax CLIP checkpoint {d} does not fit the model")


def test_no_weights(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    shutil.copy(os.path.join(MODEL, "config.json"), d)
    _one_line_error(str(d), f"No Flax weights in .*: expected {WEIGHTS_NAME} or {INDEX_NAME}")


def test_sharded_checkpoint(loaded, tmp_path):
    """A model over transformers' shard size is flax_model-0000k-of-0000n.msgpack + an index."""
    flat = flatten_dict(msgpack_restore(open(os.path.join(MODEL, WEIGHTS_NAME), "rb").read()), sep="/")
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(os.path.join(MODEL, "config.json"), d)
    keys = list(flat)
    weight_map = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        name = f"flax_model-0000{i + 1}-of-00002.msgpack"
        (d / name).write_bytes(to_bytes(unflatten_dict({k: flat[k] for k in part}, sep="/")))
        weight_map.update({k: name for k in part})
    (d / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    assert is_flax_clip_dir(str(d))
    cfg, variables = load_flax_clip(str(d))
    a, b = flatten_variables(loaded[1]), flatten_variables(variables)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    os.remove(d / "flax_model-00002-of-00002.msgpack")
    _one_line_error(str(d), "names flax_model-00002-of-00002.msgpack, which is missing")


def test_entry_points_read_and_write_flax(reference, tmp_path):
    """clipjax.load reads the FlaxCLIPModel directory (format "flax"), and convert.py takes it
    to clipjax and back to Flax (--to flax) with the same msgpack bytes."""
    import sys

    import clipjax
    from clipjax.convert.formats import detect_format

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
    import convert

    assert detect_format(MODEL) == "flax"
    clip = clipjax.load(MODEL)
    emb = clip.encode_image(reference["pixel_values"].transpose(0, 2, 3, 1), preprocessed=True)
    np.testing.assert_allclose(emb, reference["image_embeds"], atol=1e-5)
    cj, back = str(tmp_path / "cj"), str(tmp_path / "flax")
    assert convert.main(["--src", MODEL, "--dst", cj, "--to", "clipjax"]) == 0
    assert convert.main(["--src", cj, "--dst", back, "--to", "flax"]) == 0
    with open(os.path.join(MODEL, "flax_model.msgpack"), "rb") as a, open(os.path.join(back, "flax_model.msgpack"), "rb") as b:
        assert a.read() == b.read()
