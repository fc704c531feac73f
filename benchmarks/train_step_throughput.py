"""Train-step throughput: clipjax's train step vs open_clip (PyTorch), same model shapes,
float32, same global batch, AdamW, softmax CLIP loss, one process, alternating rounds.

    python benchmarks/train_step_throughput.py [--models tiny ViT-B/32] [--batch 32]

open_clip is imported with a torchvision stand-in (see tests/torchvision_stub.py): PyPI's
torchvision does not import beside the pinned CPU torch, and a train step needs none of it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _median_time(fn, rounds):
    fn()  # warm-up / compile
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _config(name: str, batch: int):
    from configs.default import get_config

    from clipjax.models.presets import get_preset

    c = get_config()
    if name != "tiny":
        import ml_collections

        model = get_preset(name).to_dict()
        c.model = ml_collections.ConfigDict(model)
    c.batch_size = batch
    c.total_steps = 1000
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    return c


def open_clip_model(cfg):
    from torchvision_stub import import_open_clip

    open_clip = import_open_clip()

    v, t = cfg.vision, cfg.text
    model = open_clip.CLIP(
        embed_dim=cfg.embed_dim,
        vision_cfg=dict(layers=v.layers, width=v.width, patch_size=v.patch_size, image_size=v.image_size,
                        head_width=v.width // v.heads, mlp_ratio=v.mlp_dim / v.width),
        text_cfg=dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                      layers=t.layers, mlp_ratio=t.mlp_dim / t.width),
        quick_gelu=True,
    )
    return model, open_clip.ClipLoss()


def bench(name: str, batch: int, rounds: int):
    from clipjax import sharding as shd
    from clipjax.models.clip import CLIP
    from clipjax.tasks import clip as clip_task
    from clipjax.train import state as train_state

    config = _config(name, batch)
    cfg = clip_task.model_config(config)
    s, ctx = cfg.vision.image_size, cfg.text.context_length
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
    ids = rng.integers(1, 49000, (batch, ctx)).astype(np.int32)
    ids[:, -1] = 49407

    # clipjax: the trainer's own state and step
    model = CLIP(cfg)
    mesh = shd.make_mesh(dict(config.mesh))
    rules = shd.rules_from_config(None)
    state, tx, _ = train_state.create_state(model, config, mesh, rules, clip_task.init_inputs(cfg))
    step_fn = jax.jit(clip_task.make_train_step(model, tx, "softmax"), donate_argnums=(0,))
    x_j, ids_j = jnp.asarray(images), jnp.asarray(ids)
    holder = {"state": state}

    def jax_step():
        holder["state"], m = step_fn(holder["state"], x_j, ids_j)
        m["loss"].block_until_ready()

    # open_clip
    tmodel, tloss = open_clip_model(cfg)
    tmodel.train()
    opt = torch.optim.AdamW(tmodel.parameters(), lr=config.optimizer.lr, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=config.optimizer.weight_decay)
    x_t, ids_t = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(ids.astype(np.int64))

    def torch_step():
        opt.zero_grad(set_to_none=True)
        img, txt, scale = tmodel(x_t, ids_t)
        loss = tloss(img, txt, scale)
        loss.backward()
        opt.step()

    n_jax = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.variables["params"]))
    n_torch = sum(p.numel() for p in tmodel.parameters())
    tj, tt = [], []
    for _ in range(2):
        tj.append(_median_time(jax_step, rounds))
        tt.append(_median_time(torch_step, rounds))
    tj, tt = min(tj), min(tt)
    return (name, batch, f"{n_jax:,}" + ("" if n_jax == n_torch else f" (open_clip {n_torch:,})"),
            batch / tj, batch / tt, tt / tj)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["tiny", "ViT-B/32"])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 32], help="one per model")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    batches = args.batch if len(args.batch) == len(args.models) else [args.batch[0]] * len(args.models)
    torch.set_num_threads(os.cpu_count())
    print(f"# jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} threads, float32, AdamW, softmax loss")
    print("| model | global batch | params | clipjax img/s | open_clip img/s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, b in zip(args.models, batches):
        print("| {} | {} | {} | {:.1f} | {:.1f} | {:.2f}x |".format(*bench(name, b, args.rounds)), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    main()
