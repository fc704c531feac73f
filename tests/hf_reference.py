"""Helpers to build transformers' PyTorch CLIP with random weights, offline, as a reference."""

from __future__ import annotations

import numpy as np
import torch


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Every parameter random (LayerNorm scales around 1), so no test passes by zeros/ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(float(np.log(1 / 0.07)) + 0.1)
            elif "norm" in name.lower() or "layrnorm" in name or name.split(".")[-2].startswith("ln"):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def hf_clip_model(cfg, seed: int = 0):
    """A transformers CLIPModel with the shapes of clipjax config `cfg`, random weights."""
    import transformers

    from clipjax.convert.hf_clip import config_to_hf

    hf_cfg = transformers.CLIPConfig.from_dict(config_to_hf(cfg))
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.CLIPModel(hf_cfg).eval()
    randomize_(model, seed)
    return model


def random_ids(batch: int, length: int, vocab: int, seed: int = 0, eos: int = 49407) -> np.ndarray:
    """Token ids like the CLIP tokenizer makes: sot, random tokens, eot at varied positions, 0 padding."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, length), np.int64)
    for b in range(batch):
        n = int(rng.integers(2, length - 1))
        ids[b, 0] = 49406 if vocab > 49406 else 1
        ids[b, 1:n] = rng.integers(1, min(vocab, 49406) - 1, n - 1)
        ids[b, n] = eos
    return ids
