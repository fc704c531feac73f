"""Named model shapes: the OpenAI zoo (exact shapes) and tiny presets for tests."""

from __future__ import annotations

from clipjax.models.config import CLIPConfig, TextConfig, VisionConfig


def _openai_text(width: int) -> TextConfig:
    return TextConfig(width=width, heads=width // 64, layers=12, mlp_dim=4 * width)


def _vit(embed_dim, width, layers, patch, image_size, text_width) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(kind="vit", image_size=image_size, patch_size=patch, width=width,
                            layers=layers, heads=width // 64, mlp_dim=4 * width),
        text=_openai_text(text_width),
    )


def _rn(embed_dim, layers, text_width, image_size=224, width=64) -> CLIPConfig:
    # OpenAI: vision_heads = vision_width * 32 // 64 (= 32 for width 64)
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(kind="resnet", image_size=image_size, resnet_layers=tuple(layers),
                            resnet_width=width, heads=width * 32 // 64),
        text=_openai_text(text_width),
    )


PRESETS: dict[str, CLIPConfig] = {
    "RN50": _rn(1024, (3, 4, 6, 3), 512),
    "RN101": _rn(512, (3, 4, 23, 3), 512),
    "ViT-B/32": _vit(512, 768, 12, 32, 224, 512),
    "ViT-B/16": _vit(512, 768, 12, 16, 224, 512),
    "ViT-L/14": _vit(768, 1024, 24, 14, 224, 768),
    "ViT-L/14@336": _vit(768, 1024, 24, 14, 336, 768),
    # Tiny shapes for tests and the CPU default run.
    "tiny-vit": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(kind="vit", image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_dim=128),
        text=TextConfig(vocab_size=49408, context_length=77, width=64, layers=2, heads=4, mlp_dim=128),
    ),
    "tiny-rn": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(kind="resnet", image_size=64, resnet_layers=(1, 1, 1, 1), resnet_width=16, heads=4),
        text=TextConfig(vocab_size=49408, context_length=77, width=64, layers=2, heads=4, mlp_dim=128),
    ),
}


def get_preset(name: str) -> CLIPConfig:
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
