"""CLIPSeg on real, non-square photos, against transformers' own CLIPSegProcessor +
CLIPSegForImageSegmentation (random small weights, float32): the whole image is seen (resized,
no crop, the directory's preprocessor_config.json honoured), masks come back at each image's own
size, the export carries its processor files, and the model agrees at its native size and off it
(a 64-px position table at 96 px, a 224-px table at 352 px as the released checkpoints run)."""

import dataclasses
import json
import os
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

import clipjax  # noqa: E402
from clipjax.convert import hf_clipseg  # noqa: E402
from clipjax.inference.clipseg import resize_logits  # noqa: E402
from clipjax.models.vit import torch_bicubic_matrix  # noqa: E402
from clipjax.preprocess import IMAGENET_MEAN, IMAGENET_STD, resize_images  # noqa: E402
from clipjax.variables import CheckpointError  # noqa: E402
from test_clipseg import _cfg, _ours, _reference  # noqa: E402

TOL = 1e-4
PHOTO = Image.fromarray(skimage.data.chelsea())  # 451 x 300 (W x H)
PROMPT_PHOTO = Image.fromarray(skimage.data.coffee())  # 600 x 400
# CIDAS/clipseg-rd64-refined's preprocessor_config.json, verbatim (keys as on the hub)
CIDAS_PREPROCESSOR = {
    "do_normalize": True, "do_rescale": True, "do_resize": True, "feature_extractor_type": "ViTImageProcessor",
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "processor_class": "CLIPSegProcessor",
    "resample": 2, "rescale_factor": 0.00392156862745098, "size": {"height": 352, "width": 352},
}


def _cidas_cfg(clip_size, seg_size, **kw):
    cfg = _cfg(patch=16, clip_size=clip_size, seg_size=seg_size, reduce_dim=16, **kw)
    return dataclasses.replace(cfg, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample="bilinear")


def _export(tmp_path, cfg, name="seg"):
    model = _reference(cfg)
    variables, _ = _ours(model, cfg)
    path = str(tmp_path / name)
    hf_clipseg.save_hf_clipseg(variables, cfg, path)
    return model, path


def test_resize_matches_vit_image_processor():
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    proc = ViTImageProcessorPil(**{k: v for k, v in CIDAS_PREPROCESSOR.items() if "type" not in k and "class" not in k})
    for image in (PHOTO, PROMPT_PHOTO):  # RGB (the ViT processor does not convert grey images to RGB)
        ref = proc(images=[image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(resize_images([image], 352, 352), ref)


def test_torch_exact_interpolation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 352, 352)).astype(np.float32)
    for h, w in [(300, 451), (700, 500), (96, 1000)]:
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=(h, w), mode="bilinear",
                                              align_corners=False)[:, 0].numpy()
        assert np.abs(resize_logits(x, h, w) - ref).max() < 2e-6
    for a, b in [(4, 6), (14, 22), (24, 37), (37, 352)]:
        g = rng.normal(size=(a, a)).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(g)[None, None], size=(b, b), mode="bicubic",
                                              align_corners=False)[0, 0].numpy()
        m = torch_bicubic_matrix(a, b).astype(np.float64)
        assert np.abs(m @ g @ m.T - ref).max() < 5e-6


@pytest.mark.parametrize("clip_size,seg_size,prompt", [
    (64, 64, "text"),  # native
    (64, 96, "text"),  # the small case: a 4x4 table on a 6x6 grid
    (64, 96, "visual"),
    (224, 352, "text"),  # the released checkpoints' geometry: 14x14 table on 22x22
    (224, 352, "visual"),
])
def test_photo_matches_transformers_processor_and_model(tmp_path, clip_size, seg_size, prompt):
    import transformers

    cfg = _cidas_cfg(clip_size, seg_size)
    model, path = _export(tmp_path, cfg)
    proc = transformers.CLIPSegProcessor.from_pretrained(path)  # the export's own processor files
    if prompt == "text":
        inputs, prompts = proc(text=["a cat"], images=[PHOTO], padding=True, return_tensors="pt"), ["a cat"]
    else:
        inputs, prompts = proc(visual_prompt=[PROMPT_PHOTO], images=[PHOTO], return_tensors="pt"), [PROMPT_PHOTO]
    assert inputs["pixel_values"].shape[-2:] == (seg_size, seg_size)
    with torch.no_grad():
        ref = model(**inputs).logits.reshape(1, seg_size, seg_size)
    ref_full = torch.nn.functional.interpolate(ref[:, None], size=(PHOTO.height, PHOTO.width), mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
    seg = clipjax.load(path)
    assert seg.cfg.image_size == seg_size and seg.cfg.resample == "bilinear"
    got_model = seg.segment([PHOTO], prompts, output_size="model")
    got = seg.segment([PHOTO], prompts)
    assert got.shape == (1, PHOTO.height, PHOTO.width)
    err_model, err = float(np.abs(got_model - ref.numpy()).max()), float(np.abs(got - ref_full).max())
    print(f"{clip_size}-px table at {seg_size} px, {prompt} prompt, 451x300 photo: model-size {err_model:.2e}, "
          f"image-size {err:.2e} (logit scale {ref.abs().max():.2f})")
    assert err_model <= TOL and err <= TOL


def test_whole_image_is_seen_and_masks_come_back_at_each_size(tmp_path):
    cfg = _cidas_cfg(64, 96)
    _, path = _export(tmp_path, cfg)
    seg = clipjax.load(path)
    photo = np.asarray(PHOTO)
    margins = photo.copy()
    margins[:, :60] = 0  # CLIP's centre crop of this photo never saw these columns
    a, b = seg.segment([photo], ["a cat"]), seg.segment([margins], ["a cat"])
    assert np.abs(a - b).max() > 1e-4
    small = photo[:37, :53]
    out = seg.segment([photo, small], ["a cat", "a dog"])
    assert isinstance(out, list) and [o.shape for o in out] == [(300, 451), (37, 53)]
    same = seg.segment([photo], ["a cat", "a dog", PROMPT_PHOTO])
    assert same.shape == (3, 300, 451)
    x, sizes = seg.preprocess([photo])
    np.testing.assert_array_equal(seg.segment(x, ["a cat"], preprocessed=True), seg.segment([photo], ["a cat"],
                                                                                          output_size="model"))
    assert sizes == [(300, 451)]


def test_cidas_preprocessor_config_is_honoured_and_kept(tmp_path):
    import convert
    from clipjax.convert.formats import load_clipjax

    cfg = _cfg(patch=16, clip_size=64, seg_size=96, reduce_dim=16)  # CLIP's mean/std, bicubic
    _, path = _export(tmp_path, cfg)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(CIDAS_PREPROCESSOR, f)
    got, _ = hf_clipseg.load_hf_clipseg(path)
    assert (got.image_size, got.image_mean, got.image_std, got.resample) == (352, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert clipjax.load(path).cfg == got
    # converted to a clipjax checkpoint, the settings travel in its config
    assert convert.main(["--src", path, "--dst", str(tmp_path / "cj"), "--to", "clipjax", "--image-size", "352"]) == 0
    back, _ = load_clipjax(str(tmp_path / "cj"))
    assert back == got
    # and back to transformers, the processor files say the same
    assert convert.main(["--src", str(tmp_path / "cj"), "--dst", str(tmp_path / "hf2"), "--to", "hf"]) == 0
    assert hf_clipseg.load_hf_clipseg(str(tmp_path / "hf2"))[0] == got

    os.remove(os.path.join(path, "preprocessor_config.json"))
    with pytest.warns(UserWarning, match="no preprocessor_config.json"):
        bare, _ = hf_clipseg.load_hf_clipseg(path)
    assert (bare.image_size, bare.image_mean, bare.resample) == (352, IMAGENET_MEAN, "bilinear")

    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({**CIDAS_PREPROCESSOR, "do_center_crop": True}, f)
    with pytest.raises(CheckpointError, match="do_center_crop"):
        hf_clipseg.load_hf_clipseg(path)
