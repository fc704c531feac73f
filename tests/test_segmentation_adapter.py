"""CLIPSeg on a TFDS segmentation dataset without clipjax_shapes' per-object phrases
(config.data.segmentation): a small builder defined here with oxford_iiit_pet's schema
(non-square image, `segmentation_mask` 1 = object / 2 = background / 3 = border, ClassLabel
`label`) plus a scene_parse150-style `class_mask` (pixel = class index, 0 = ignored)."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from clipjax.data.segmentation_adapter import SegmentationAdapter
from clipjax.data.shapes_dataset import SHAPES, draw_example

H, W = 40, 52  # not square: the pad columns on the right are background


class ClipjaxTestPets(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
            "class_mask": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=list(SHAPES)),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train", 24), "test": self._generate_examples("test", 6)}

    def _generate_examples(self, split, n):
        for i in range(n):
            ex = draw_example(0, split, i, H)
            pad = W - H
            image = np.concatenate([ex["image_array"], np.repeat(ex["image_array"][:, -1:], pad, 1)], axis=1)
            big = max(ex["objects"], key=lambda o: o["area"])
            m = np.pad(big["mask_array"], ((0, 0), (0, pad)))
            pet = np.where(m, 1, 2).astype(np.uint8)
            classes = np.zeros((H, W), np.uint8)
            for o in ex["objects"]:
                classes[np.pad(o["mask_array"], ((0, 0), (0, pad)))] = SHAPES.index(o["shape"]) + 1
            yield i, {"image": image, "segmentation_mask": pet[..., None], "class_mask": classes[..., None],
                      "label": big["shape"]}


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = ClipjaxTestPets(data_dir=data_dir)
    builder.download_and_prepare()
    return builder, data_dir


def test_adapter_examples_in_both_modes(pets):
    import tensorflow as tf

    builder, _ = pets
    fg = SegmentationAdapter(mask_key="segmentation_mask", foreground=(1,), label_key="label")
    cl = SegmentationAdapter(mask_key="class_mask", mode="classes", class_names=("background",) + SHAPES,
                             ignore=(0,), template="the {}")
    ds = builder.as_dataset(split="train")
    for k, ex in enumerate(ds.take(6)):
        name = SHAPES[int(ex["label"])]
        img, prompt, target, vp, alpha = fg.example(ex, tf.constant(k, tf.int64), 0, 32, SHAPES, 0.0, 0.0)
        assert img.shape == (32, 32, 3) and vp.shape == (32, 32, 3) and float(alpha) == 1.0
        assert prompt.numpy().decode() == f"a photo of a {name}." and float(tf.reduce_sum(target)) > 0
        img, prompt, target, vp, alpha = cl.example(ex, tf.constant(k, tf.int64), 0, 32, cl.class_names, 0.0, 0.0)
        word = prompt.numpy().decode()[len("the "):]
        assert word in SHAPES and float(tf.reduce_sum(target)) > 0  # a present class, never "background"
        _, prompt, target, _, _ = cl.example(ex, tf.constant(k, tf.int64), 0, 32, cl.class_names, 1.0, 0.0)
        absent = prompt.numpy().decode()[len("the "):]
        present = {cl.class_names[c] for c in np.unique(ex["class_mask"].numpy())}
        assert absent not in present and float(tf.reduce_sum(target)) == 0  # negative: empty mask

    ev = fg.eval_examples(builder, "test", 4)
    assert ev["images"].shape == (4, H, H, 3) and ev["masks"].shape == (4, H, H)  # centre squares
    assert all(p.startswith("a photo of a ") for p in ev["phrases"])
    ev = cl.eval_examples(builder, "test", 4)
    assert len(ev["phrases"]) >= 4 and set(ev["classes"]) <= set(range(1, 6))
    with pytest.raises(ValueError, match="mode"):
        SegmentationAdapter(mode="instances")


def test_clipseg_trains_and_evaluates_on_a_tfds_segmentation_dataset(pets, tmp_path):
    import ml_collections

    import evaluate
    from test_clipseg_train import _clip_checkpoint
    from test_train_smoke import _config
    from clipjax.tasks import train

    _, data_dir = pets
    clip_path = str(tmp_path / "clip")
    _clip_checkpoint(clip_path)
    c = _config(total_steps=2)
    c.task = "clipseg"
    c.init_from = clip_path
    c.clipseg = ml_collections.ConfigDict(dict(extract_layers=(0, 1), reduce_dim=16, decoder_heads=2,
                                               decoder_mlp_dim=32, image_size=32))
    c.data.name = "clipjax_test_pets"
    c.data.data_dir = data_dir
    c.data.shuffle_buffer = 16
    c.data.eval_split = "test"
    c.data.segmentation = dict(mask_key="segmentation_mask", foreground=[1], label_key="label")
    c.batch_size = 8
    c.eval_every = 2
    c.eval_examples = 6
    final = train(c, str(tmp_path / "seg"))
    assert np.isfinite(final["loss"]) and 0 <= final["seg_miou"] <= 1

    out = str(tmp_path / "seg.json")
    spec = json.dumps({"mask_key": "class_mask", "mode": "classes", "ignore": [0],
                       "class_names": ["background"] + list(SHAPES)})
    assert evaluate.main(["--checkpoint", str(tmp_path / "seg"), "--task", "segmentation", "--dataset",
                          "clipjax_test_pets", "--data-dir", data_dir, "--segmentation", spec, "--output", out,
                          "--overlays", "1", "--no-progress"]) == 0
    res = json.load(open(out))
    assert {"miou", "iou_fg", "ap"} <= set(res) and os.path.exists(out.replace(".json", "_overlay_0.png"))
