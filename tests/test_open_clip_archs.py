"""`arch=` (convert.py --arch, clipjax.load(path, arch=...)): open_clip's model names as data.
Each name's heads and activation, applied to weights of open_clip's own CLIP built from that
name's config (its model_configs/*.json with one layer per tower and small images, so that
ViT-bigG fits a test on 2 cores; widths, head widths and activation as published), match
open_clip's outputs. Without a
name, the guess (OpenAI's rules) is said in a warning naming the flag."""

import dataclasses

import numpy as np
import pytest
import torch

from clipjax.convert import open_clip_archs
from clipjax.convert.openai_clip import GuessedArchitectureWarning, load_openai
from clipjax.models.clip import CLIP
from clipjax.variables import CheckpointError
from test_openai_layout import _randomize


def _open_clip():
    from torchvision_stub import import_open_clip

    return import_open_clip()


def _small_size(vision) -> int:
    return 2 * vision[4] if vision[0] == "vit" else 64  # 2x2 patches; a 2x2 ResNet grid


def _shallow(arch: open_clip_archs.OpenCLIPArch) -> open_clip_archs.OpenCLIPArch:
    """The same model with one layer per tower (one block per ResNet stage) and small images."""
    v = list(arch.vision)
    v[2] = 1 if v[0] == "vit" else (1, 1, 1, 1)
    v[1] = _small_size(arch.vision)
    t = list(arch.text)
    t[4] = 1
    return dataclasses.replace(arch, vision=tuple(v), text=tuple(t))


def _reference(open_clip, name: str):
    cfg = open_clip.get_model_config(name)
    vision_cfg, text_cfg = dict(cfg["vision_cfg"]), dict(cfg["text_cfg"])
    vision_cfg["layers"] = 1 if isinstance(vision_cfg["layers"], int) else [1, 1, 1, 1]
    vision_cfg["image_size"] = _small_size(open_clip_archs.ARCHS[name].vision)
    text_cfg["layers"] = 1
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision_cfg, text_cfg=text_cfg,
                          quick_gelu=bool(cfg.get("quick_gelu", False))), vision_cfg["image_size"]


# one of each kind of tower, activation and head width; the rest run with CLIPJAX_SLOW_TESTS=1
REPRESENTATIVE = ("ViT-B-32", "ViT-B-32-quickgelu", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "RN50", "RN50x4-quickgelu")


@pytest.mark.parametrize("name", [n if n in REPRESENTATIVE else pytest.param(n, marks=pytest.mark.slow)
                                  for n in open_clip_archs.arch_names()])
def test_arch_matches_open_clip(name, monkeypatch):
    open_clip = _open_clip()
    ref, size = _reference(open_clip, name)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    ref = _randomize(ref, seed=1, images=torch.from_numpy(images)).eval()
    ids = rng.integers(1, 49000, (2, 77))
    ids[0, 9], ids[1, 30] = 49407, 49407
    ids[0, 10:], ids[1, 31:] = 0, 0
    monkeypatch.setitem(open_clip_archs.ARCHS, name, _shallow(open_clip_archs.ARCHS[name]))
    cfg, variables = load_openai(ref.state_dict(), arch=name)
    with torch.no_grad():
        ref_img = ref.encode_image(torch.from_numpy(images)).numpy()
        ref_txt = ref.encode_text(torch.from_numpy(ids)).numpy()
    m = CLIP(cfg)
    img = np.asarray(m.apply(variables, images.transpose(0, 2, 3, 1), method=CLIP.encode_image))
    txt = np.asarray(m.apply(variables, ids.astype(np.int32), method=CLIP.encode_text))
    e_img, e_txt = np.abs(img - ref_img).max(), np.abs(txt - ref_txt).max()
    print(f"\n--arch {name}: image {e_img:.2e}, text {e_txt:.2e} (vision heads {cfg.vision.heads}, "
          f"act {cfg.text.act})")
    assert e_img <= 1e-4 and e_txt <= 1e-4


def test_every_name_is_open_clips_own_config():
    """The table against open_clip's model_configs/*.json: sizes, head widths, activation."""
    open_clip = _open_clip()
    for name, a in open_clip_archs.ARCHS.items():
        cfg = open_clip.get_model_config(name)
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        assert cfg["embed_dim"] == a.embed_dim and bool(cfg.get("quick_gelu", False)) == a.quick_gelu, name
        layers = v["layers"] if isinstance(v["layers"], int) else tuple(v["layers"])
        head_width = v.get("head_width", 64)
        if a.vision[0] == "vit":
            assert a.vision[1:] == (v["image_size"], layers, v["width"], v["patch_size"], head_width), name
        else:
            assert a.vision[1:] == (v["image_size"], layers, v["width"], head_width), name
        assert a.text == (t["context_length"], t["vocab_size"], t["width"], t["heads"], t["layers"]), name


def test_guess_is_loud_and_a_wrong_arch_is_refused(monkeypatch, tmp_path):
    open_clip = _open_clip()
    ref, _ = _reference(open_clip, "ViT-B-32")
    sd = ref.state_dict()
    with pytest.warns(GuessedArchitectureWarning, match=r"GUESSED.*QuickGELU.*--arch NAME"):
        cfg, _ = load_openai(sd)
    assert cfg.text.act == "quick_gelu"
    monkeypatch.setitem(open_clip_archs.ARCHS, "ViT-B-32", _shallow(open_clip_archs.ARCHS["ViT-B-32"]))
    with pytest.raises(CheckpointError, match=r"not open_clip's ViT-B-16: .*patch_size: ViT-B-16 has 16, the checkpoint 32"):
        load_openai(sd, arch="ViT-B-16")
    with pytest.raises(CheckpointError, match="SigLIP models use timm's image-tower layout"):
        load_openai(sd, arch="ViT-B-16-SigLIP")

    # the same through the entry points: convert.py --arch and clipjax.load(path, arch=)
    import sys

    import clipjax

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    import convert

    path = tmp_path / "open_clip_b32.pt"
    torch.save(sd, path)
    assert clipjax.load(str(path), arch="ViT-B-32").cfg.text.act == "gelu"
    assert convert.main(["--src", str(path), "--dst", str(tmp_path / "out"), "--to", "clipjax", "--arch", "ViT-B-32"]) == 0
    assert clipjax.load(str(tmp_path / "out")).cfg.vision.act == "gelu"
    assert convert.main(["--src", str(tmp_path / "out"), "--dst", str(tmp_path / "x"), "--to", "hf",
                         "--arch", "ViT-B-32"]) == 2  # a clipjax checkpoint records its architecture
