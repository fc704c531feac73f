"""Parity with open_clip's own CLIP (ViT and ModifiedResNet towers), a second reference
nobody here wrote. open_clip is imported with a torchvision stand-in (torchvision_stub.py):
its transforms are not used here, and PyPI's torchvision cannot import beside the CPU torch."""

import numpy as np
import pytest
import torch

from clipjax.convert.openai_clip import load_openai
from clipjax.models.clip import CLIP
from clipjax.models.config import CLIPConfig, TextConfig, VisionConfig
from test_openai_layout import _randomize


def _open_clip():
    from torchvision_stub import import_open_clip

    return import_open_clip()


TEXT = dict(context_length=16, vocab_size=49408, width=64, heads=4, layers=2)
CASES = {
    "vit": (dict(layers=2, width=64, patch_size=8, image_size=32, head_width=16),
            VisionConfig(kind="vit", image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_dim=256)),
    "rn": (dict(layers=(1, 2, 1, 1), width=16, image_size=64, head_width=16),
           VisionConfig(kind="resnet", image_size=64, resnet_layers=(1, 2, 1, 1), resnet_width=16, heads=32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_open_clip_parity(name):
    open_clip = _open_clip()
    vision_cfg, vision = CASES[name]
    torch.manual_seed(0)
    ref = open_clip.CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=TEXT, quick_gelu=True)
    rng = np.random.default_rng(0)
    size = vision.image_size
    images = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    ref = _randomize(ref, seed=1, images=torch.from_numpy(images))
    ids = rng.integers(1, 49000, (2, 16))
    ids[0, 9], ids[1, 15] = 49407, 49407
    ids[0, 10:] = 0
    cfg = CLIPConfig(embed_dim=32, vision=vision,
                     text=TextConfig(context_length=16, width=64, heads=4, layers=2, mlp_dim=256, eos_token_id=None))
    _, variables = load_openai(ref.state_dict(), cfg)
    with torch.no_grad():
        ref_img = ref.encode_image(torch.from_numpy(images)).numpy()
        ref_txt = ref.encode_text(torch.from_numpy(ids)).numpy()
    m = CLIP(cfg)
    img = np.asarray(m.apply(variables, images.transpose(0, 2, 3, 1), method=CLIP.encode_image))
    txt = np.asarray(m.apply(variables, ids.astype(np.int32), method=CLIP.encode_text))
    e_img, e_txt = np.abs(img - ref_img).max(), np.abs(txt - ref_txt).max()
    print(f"\nparity vs open_clip.CLIP ({name}): image {e_img:.2e}, text {e_txt:.2e}")
    assert e_img <= 1e-4 and e_txt <= 1e-4
