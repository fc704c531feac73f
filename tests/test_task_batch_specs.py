"""Each task's Task.batch_spec — the batch plan.py compiles the step for, with no data — is the
layout its real data stream yields (shapes and dtypes of the first global batch)."""

import os

import numpy as np
import ml_collections

from clipjax import sharding as shd
from clipjax.tasks import task_module
from test_clipseg_train import _clip_checkpoint
from test_tag2text_train import _tiny as tiny_tag2text
from test_train_smoke import _config

CLIP_CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "configs", "clip_shapes.py")


def _first_batch_and_spec(config, workdir):
    mesh = shd.make_mesh(dict(config.mesh))
    rules = shd.rules_from_config(config.get("axis_rules"))
    task = task_module(config).make_task(config, mesh, rules, str(workdir), abstract=True)
    batch = next(iter(task.make_data(0)))
    got = [(tuple(x.shape), np.dtype(x.dtype)) for x in batch]
    want = [(tuple(shape), np.dtype(dt)) for shape, dt in task.batch_spec(int(config.batch_size))]
    return task, got, want


def test_clip_batch_spec(tmp_path):
    _, got, want = _first_batch_and_spec(_config(), tmp_path)
    assert got == want


def test_clipseg_batch_spec_reads_only_the_clip_config(tmp_path):
    clip = str(tmp_path / "clip")
    _clip_checkpoint(clip)
    c = _config()
    c.task, c.init_from, c.batch_size = "clipseg", clip, 8
    c.clipseg = ml_collections.ConfigDict(dict(extract_layers=(0, 1), reduce_dim=16, decoder_heads=2,
                                               decoder_mlp_dim=32, image_size=32))
    task, got, want = _first_batch_and_spec(c, tmp_path / "seg")
    assert got == want and task.cfg.clip.text.context_length == 16


def test_tag2text_batch_spec(tmp_path):
    c = tiny_tag2text(1)
    c.model.alignment_dim = 16  # + text ids for ITC / ITM
    _, got, want = _first_batch_and_spec(c, tmp_path)
    assert got == want and len(want) == 5


def test_ram_batch_spec_plans_over_a_clip_training_config(tmp_path):
    # abstract: the CLIP of configs/clip_shapes.py (not trained), no teacher on the mesh; the spec
    # still carries the teacher's (B, embed_dim) embeddings, which the real stream appends
    c = tiny_tag2text(1)
    c.model.variant = "ram"
    c.ram = dict(clip=CLIP_CONFIG_FILE)
    task, got, want = _first_batch_and_spec(c, tmp_path)
    assert got == want[:-1] and want[-1] == ((8, 64), np.dtype(np.float32))
    assert task.cfg.image_proj_dim == 64
