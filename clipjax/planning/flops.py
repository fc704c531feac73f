"""Analytic FLOPs of a CLIP train step, layer by layer (matmuls only; 1 multiply-add = 2 FLOPs).

Per transformer layer on n tokens of width d, MLP width m: 2·n·(4d² + 2dm) for the QKV, output
and MLP projections, plus 4·n²·d for the attention scores and their weighted sum (a causal
mask is not subtracted: XLA computes the full square). The vision tower adds its patch
embedding (2·patches·p²·3·d) and projection, the text tower its projection; the contrastive
loss 2·B²·e (the B×B logits). A step is forward + backward = 3 forwards ("model FLOPs", the
MFU convention); full rematerialisation of the scanned blocks recomputes their forward once
more ("hardware FLOPs", what the chip executes). A frozen tower (LiT) is still differentiated
by the step (jax.value_and_grad over every parameter; the optimizer zeroes its update), so it
costs the same.
"""

from __future__ import annotations


def layer_flops(tokens: int, width: int, mlp: int) -> float:
    """Forward FLOPs of one transformer layer on one sequence of `tokens`."""
    return 2.0 * tokens * (4 * width * width + 2 * width * mlp) + 4.0 * tokens * tokens * width


def clip_step_flops(cfg, batch: int, remat_policy: str = "none", frozen=()) -> dict:
    """Global FLOPs of one CLIP step on `batch` pairs: model (3x forward) and hardware (with
    the remat recompute), split by part."""
    v, t, e = cfg.vision, cfg.text, cfg.embed_dim
    out = {}
    if v.kind != "vit":
        return {"note": f"analytic FLOPs cover ViT towers only (vision.kind={v.kind!r})"}
    patches = (v.image_size // v.patch_size) ** 2
    n_v = patches + 1
    vis_layer = layer_flops(n_v, v.width, v.mlp_dim)
    vis_blocks = v.layers * vis_layer
    vis_other = 2.0 * patches * v.patch_size ** 2 * 3 * v.width + 2.0 * v.width * e
    txt_layer = layer_flops(t.context_length, t.width, t.mlp_dim)
    txt_blocks = t.layers * txt_layer
    txt_other = 2.0 * t.width * e
    loss = 2.0 * batch * batch * e
    fwd = batch * (vis_blocks + vis_other + txt_blocks + txt_other) + loss
    model = 3.0 * fwd
    recompute = batch * (vis_blocks + txt_blocks) if remat_policy == "full" else 0.0
    out.update({
        "forward": fwd,
        "model_flops": model,
        "hardware_flops": model + recompute,
        "remat_recompute": recompute,
        "per_sample_forward": {"vision_layer": vis_layer, "vision_layers": v.layers, "vision_other": vis_other,
                               "text_layer": txt_layer, "text_layers": t.layers, "text_other": txt_other},
        "loss_forward": loss,
        "six_n_d": 6.0 * batch * (_vit_params(v) * n_v + _text_params(t) * t.context_length),
        "frozen": list(frozen),
    })
    return out


def _vit_params(v) -> float:
    return v.layers * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim)


def _text_params(t) -> float:
    return t.layers * (4 * t.width ** 2 + 2 * t.width * t.mlp_dim)
