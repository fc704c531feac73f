"""The frozen CLIP that RAM training leans on (config.ram.clip: any CLIP checkpoint clipjax.load
reads): its text tower gives the tag queries, its image tower the distillation target.

- `ram_label_embeddings`: RAM's label queries, the prompt-ensembled CLIP text embeddings of the
  tag names (`clipjax.models.tagging.build_label_embeddings`, RAM's templates). Computed once;
  they live in the model's `constants` collection, so the optimizer never sees them.
- `ClipTeacher`: the CLIP image embeddings (`encode_image`, not normalised: RAM's `loss_dis` is
  an L1 to `clip_model.encode_image(image_224)`) of each training batch, computed on the mesh
  beside the step. The teacher's parameters are placed with the CLIP model's own logical
  shardings (FSDP / tensor axes like any tower), never gathered on one device; the batch is
  resized on the device from the student's input size to CLIP's (bicubic), as RAM feeds CLIP a
  224 px copy of each 384 px image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from clipjax import sharding as shd
from clipjax.convert.formats import read_any
from clipjax.inference.clip import LoadedCLIP
from clipjax.models.clip import CLIP, init_inputs
from clipjax.models.config import CLIPConfig
from clipjax.models.tagging import build_label_embeddings
from clipjax.variables import place_like


def read_clip(path: str):
    """(CLIPConfig, variables) of the CLIP checkpoint at `path`; a clear error for anything else."""
    if not path:
        raise ValueError("RAM training needs config.ram.clip: a CLIP checkpoint clipjax.load reads (a clipjax "
                         "run such as `train.py --config configs/clip_shapes.py`, a transformers CLIP directory, "
                         "an OpenAI / open_clip file)")
    cfg, variables = read_any(path)
    if not isinstance(cfg, CLIPConfig):
        raise ValueError(f"config.ram.clip={path} is a {type(cfg).__name__} checkpoint, not a CLIP")
    return cfg, variables


def ram_label_embeddings(tag_names, clip_cfg, clip_variables) -> np.ndarray:
    """(C, embed_dim) float32: RAM's label queries for `tag_names`."""
    clip = LoadedCLIP(clip_cfg, clip_variables)
    return build_label_embeddings(list(tag_names), lambda prompts: clip.encode_text(prompts, normalize=True))


class ClipTeacher:
    """`teacher(images)`: (B, S, S, 3) CLIP-normalised global batch -> (B, embed_dim) float32
    CLIP image embeddings, batch-sharded like the input."""

    def __init__(self, clip_cfg, clip_variables, mesh, rules):
        self.cfg, self.mesh, self.rules = clip_cfg, mesh, rules
        model = CLIP(clip_cfg)
        s = clip_cfg.vision.image_size
        dummy = init_inputs(clip_cfg)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            boxed = jax.eval_shape(lambda r: model.init(r, *dummy), jax.random.PRNGKey(0))
            shardings = shd.logical_shardings(boxed, mesh, rules)
        like = jax.tree_util.tree_map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                                      nn.unbox(boxed), shardings)
        self.variables = place_like(like, clip_variables, "the RAM teacher's CLIP weights (vs its config)")

        def embed(variables, images):
            if images.shape[1:3] != (s, s):
                images = jax.image.resize(images, (images.shape[0], s, s, 3), "bicubic")
            e = model.apply(variables, images, method=CLIP.encode_image, normalize=False)
            return jax.lax.stop_gradient(e.astype(jnp.float32))

        self._embed = jax.jit(embed, out_shardings=shd.batch_sharding(mesh, 2, rules))

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def __call__(self, images):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._embed(self.variables, images)
