"""open_clip's model names as data: what an OpenAI-layout state dict cannot tell by itself.

The weights give every width, depth and size, but not the activation (open_clip's models use
exact GELU unless their name ends in "-quickgelu"; OpenAI's own checkpoints use QuickGELU) nor
the head count (open_clip: vision heads = width // head_width, head_width 64 except ViT-H/g/
bigG; text heads as listed). `arch_config(name, state_dict)` takes the shapes from the weights,
checks them against the named architecture, and sets heads and activation from it.

Facts from open_clip 3.3's `model_configs/*.json` (copied as data; open_clip is not imported).
SigLIP and other timm-trunk models are not here: their image towers use timm's key layout,
which the OpenAI layout does not map.
"""

from __future__ import annotations

import dataclasses

from clipjax.models.config import CLIPConfig
from clipjax.variables import CheckpointError


@dataclasses.dataclass(frozen=True)
class OpenCLIPArch:
    embed_dim: int
    vision: tuple  # ViT: ("vit", image_size, layers, width, patch_size, head_width); ResNet: ("resnet", image_size, layers, width, head_width)
    text: tuple  # (context_length, vocab_size, width, heads, layers)
    quick_gelu: bool = False


def _vit(size, layers, width, patch, head_width=64):
    return ("vit", size, layers, width, patch, head_width)


def _rn(size, layers, width, head_width=64):
    return ("resnet", size, tuple(layers), width, head_width)


_TEXT_B = (77, 49408, 512, 8, 12)
_BASE = {
    "ViT-B-32": OpenCLIPArch(512, _vit(224, 12, 768, 32), _TEXT_B),
    "ViT-B-16": OpenCLIPArch(512, _vit(224, 12, 768, 16), _TEXT_B),
    "ViT-L-14": OpenCLIPArch(768, _vit(224, 24, 1024, 14), (77, 49408, 768, 12, 12)),
    "ViT-L-14-336": OpenCLIPArch(768, _vit(336, 24, 1024, 14), (77, 49408, 768, 12, 12)),
    "ViT-H-14": OpenCLIPArch(1024, _vit(224, 32, 1280, 14, 80), (77, 49408, 1024, 16, 24)),
    "ViT-g-14": OpenCLIPArch(1024, _vit(224, 40, 1408, 14, 88), (77, 49408, 1024, 16, 24)),
    "ViT-bigG-14": OpenCLIPArch(1280, _vit(224, 48, 1664, 14, 104), (77, 49408, 1280, 20, 32)),
    "RN50": OpenCLIPArch(1024, _rn(224, (3, 4, 6, 3), 64), _TEXT_B),
    "RN101": OpenCLIPArch(512, _rn(224, (3, 4, 23, 3), 64), _TEXT_B),
    "RN50x4": OpenCLIPArch(640, _rn(288, (4, 6, 10, 6), 80), (77, 49408, 640, 10, 12)),
}
# open_clip ships a "-quickgelu" twin of these (OpenAI's weights, or models trained with it)
_QUICKGELU = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "RN50", "RN101", "RN50x4")

ARCHS: dict[str, OpenCLIPArch] = dict(_BASE)
ARCHS.update({f"{n}-quickgelu": dataclasses.replace(_BASE[n], quick_gelu=True) for n in _QUICKGELU})


def arch_names() -> list[str]:
    return sorted(ARCHS)


def get_arch(name: str) -> OpenCLIPArch:
    if name not in ARCHS:
        hint = ("SigLIP models use timm's image-tower layout, which the OpenAI layout does not map. "
                if "siglip" in name.lower() else "")
        raise CheckpointError(f"unknown --arch {name!r}. {hint}Known open_clip names: {', '.join(arch_names())}")
    return ARCHS[name]


def arch_config(name: str, inferred: CLIPConfig, check_depth: bool = True) -> CLIPConfig:
    """`inferred` (shapes read from the weights) with the heads and activation of open_clip's
    model `name`, after checking that the weights are that model (widths, patch, image size,
    embedding width and, with check_depth, the layer counts); CheckpointError naming every
    difference otherwise."""
    a = get_arch(name)
    v, t = inferred.vision, inferred.text
    want, got = {}, {}

    def expect(what, expected, actual):
        if expected != actual:
            want[what], got[what] = expected, actual

    expect("embed_dim", a.embed_dim, inferred.embed_dim)
    expect("vision kind", a.vision[0], v.kind)
    if a.vision[0] == v.kind == "vit":
        _, size, layers, width, patch, head_width = a.vision
        expect("image_size", size, v.image_size)
        expect("vision width", width, v.width)
        expect("patch_size", patch, v.patch_size)
        if check_depth:
            expect("vision layers", layers, v.layers)
        vision = v.replace(heads=width // head_width, act="quick_gelu" if a.quick_gelu else "gelu")
    elif a.vision[0] == v.kind == "resnet":
        _, size, layers, width, head_width = a.vision
        expect("image_size", size, v.image_size)
        expect("resnet width", width, v.resnet_width)
        if check_depth:
            expect("resnet layers", tuple(layers), tuple(v.resnet_layers))
        vision = v.replace(heads=width * 32 // head_width)  # the attention pool's heads; ReLU towers
    else:
        vision = v
    ctx, vocab, t_width, t_heads, t_layers = a.text
    expect("text width", t_width, t.width)
    expect("vocab_size", vocab, t.vocab_size)
    expect("context_length", ctx, t.context_length)
    if check_depth:
        expect("text layers", t_layers, t.layers)
    if want:
        diffs = "; ".join(f"{k}: {name} has {want[k]}, the checkpoint {got[k]}" for k in want)
        raise CheckpointError(f"the checkpoint is not open_clip's {name}: {diffs}")
    text = t.replace(heads=t_heads, act="quick_gelu" if a.quick_gelu else "gelu")
    return inferred.replace(vision=vision, text=text)
