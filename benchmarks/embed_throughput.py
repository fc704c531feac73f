"""Image and text embedding throughput: clipjax vs transformers' PyTorch CLIPModel.

Same random weights (converted), float32, same batch, same machine, one process, alternating
timed rounds so both see the same machine state. Prints a markdown table with the ratio.

    python benchmarks/embed_throughput.py [--models ViT-B/32 ViT-B/16] [--image-batch 16] [--text-batch 64]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _time(fn, rounds: int) -> float:
    """Median seconds per call over `rounds` calls (after one warm-up)."""
    fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench(name: str, image_batch: int, text_batch: int, rounds: int, tmp: str) -> list[tuple]:
    from hf_reference import hf_clip_model, random_ids

    from clipjax.convert.hf_clip import load_hf_clip
    from clipjax.models.clip import CLIP
    from clipjax.models.presets import get_preset

    cfg = get_preset(name)
    ref = hf_clip_model(cfg)
    d = os.path.join(tmp, name.replace("/", "_"))
    ref.save_pretrained(d)
    jcfg, variables = load_hf_clip(d)
    variables = jax.device_put(variables)
    model = CLIP(jcfg)
    s = cfg.vision.image_size
    pixels = np.random.default_rng(0).standard_normal((image_batch, 3, s, s)).astype(np.float32)
    ids = random_ids(text_batch, cfg.text.context_length, cfg.text.vocab_size)
    img_fn = jax.jit(functools.partial(model.apply, method=CLIP.encode_image))
    txt_fn = jax.jit(functools.partial(model.apply, method=CLIP.encode_text))
    x_j, ids_j = jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(ids.astype(np.int32))
    x_t, ids_t = torch.from_numpy(pixels), torch.from_numpy(ids)

    rows = []
    for what, batch, jf, tf in (
        ("image", image_batch, lambda: img_fn(variables, x_j).block_until_ready(),
         lambda: ref.get_image_features(pixel_values=x_t)),
        ("text", text_batch, lambda: txt_fn(variables, ids_j).block_until_ready(),
         lambda: ref.get_text_features(input_ids=ids_t)),
    ):
        with torch.inference_mode():
            tj, tt = [], []
            for _ in range(2):  # interleave to share machine noise
                tj.append(_time(jf, rounds))
                tt.append(_time(tf, rounds))
        tj, tt = min(tj), min(tt)
        rows.append((name, what, batch, batch / tj, batch / tt, tt / tj))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["ViT-B/32", "ViT-B/16"])
    p.add_argument("--image-batch", type=int, default=16)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    import tempfile

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    print(f"# jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
          f"{threads} threads, float32")
    print("| model | tower | batch | clipjax /s | transformers /s | ratio |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for row in bench(name, args.image_batch, args.text_batch, args.rounds, tmp):
                print("| {} | {} | {} | {:.1f} | {:.1f} | {:.2f}x |".format(*row), flush=True)


if __name__ == "__main__":
    main()
