"""Tag2Text / RAM / RAM++ tagging head against a PyTorch reference assembled from transformers'
BERT pieces in the original's 'tagging' order (cross-attention -> intermediate -> output, no
self-attention), the recognize-anything key layout round trip, the tagging / ITC / ITM losses
against hand-written torch versions of the original formulas, and the tag-list files."""

import dataclasses
import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput  # noqa: E402

from clipjax.losses import tagging as tl  # noqa: E402
from clipjax.models import alignment as al  # noqa: E402
from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables  # noqa: E402
from clipjax.convert.common import to_numpy
from clipjax.convert.ram_tagging import (  # noqa: E402
    infer_tagging_config,
    tagging_expected_shapes,
    tagging_from_state_dict,
    tagging_to_state_dict,
)
from clipjax.models import tagging as tg  # noqa: E402
from clipjax.models.tagging import TaggingConfig, TaggingHead  # noqa: E402

TOL = 1e-4
# the float32 head parity is ~1e-6; 1e-5 also catches tanh-GELU in place of exact GELU (3e-5 .. 9e-5 here)
HEAD_TOL = 1e-5
SMALL = dict(num_tags=11, width=32, layers=2, heads=4, mlp_dim=64, encoder_width=24, label_dim=16)
CONFIGS = {
    "tag2text": TaggingConfig(**SMALL, label_source="learned", classifier="groupwise"),
    "ram": TaggingConfig(**SMALL),
    "ram_identity_proj": TaggingConfig(**{**SMALL, "label_dim": 32}),
    "ram_plus": TaggingConfig(**{**SMALL, "encoder_width": 16}, descriptions_per_tag=3),
}


def _report(name, a, b, tol=TOL):
    d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    print(f"{name}: max abs diff {d:.3g}")
    assert d <= tol, f"{name}: max abs diff {d}"
    return d


def _bitwise(a: dict, b: dict):
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and x.dtype == y.dtype, (k, x.shape, y.shape, x.dtype, y.dtype)
        assert np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8)), k


# ------------------------------------------------------------------------- torch reference


class _TorchTaggingLayer(torch.nn.Module):
    """The original BertLayer with mode='tagging': its `attention` is deleted, so only
    crossattention -> intermediate -> output run (ram/models/bert.py)."""

    def __init__(self, hf, encoder_width):
        super().__init__()
        self.crossattention = BertAttention(hf, is_cross_attention=True)
        # the original's cross-attention key/value read `encoder_width` inputs
        self.crossattention.self.key = torch.nn.Linear(encoder_width, hf.hidden_size)
        self.crossattention.self.value = torch.nn.Linear(encoder_width, hf.hidden_size)
        self.intermediate = BertIntermediate(hf)
        self.output = BertOutput(hf)

    def forward(self, x, image, mask):
        a = self.crossattention(x, encoder_hidden_states=image, encoder_attention_mask=mask)[0]
        return self.output(self.intermediate(a), a)


class _TorchHead(torch.nn.Module):
    """Tag2Text / RAM / RAM++ tagging path with the original attribute names."""

    def __init__(self, cfg: TaggingConfig):
        super().__init__()
        hf = transformers.BertConfig(hidden_size=cfg.width, num_attention_heads=cfg.heads,
                                     intermediate_size=cfg.mlp_dim, hidden_act="gelu", layer_norm_eps=cfg.ln_eps,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        hf._attn_implementation = "eager"
        self.cfg = cfg
        self.tagging_head = torch.nn.Module()
        self.tagging_head.encoder = torch.nn.Module()
        self.tagging_head.encoder.layer = torch.nn.ModuleList(
            [_TorchTaggingLayer(hf, cfg.encoder_width) for _ in range(cfg.layers)])
        if cfg.label_source == "learned":
            self.label_embed = torch.nn.Embedding(cfg.num_tags, cfg.width)
        else:
            self.label_embed = torch.nn.Parameter(torch.zeros(cfg.num_tags * cfg.descriptions_per_tag, cfg.label_dim))
            self.wordvec_proj = (torch.nn.Linear(cfg.label_dim, cfg.width) if cfg.label_dim != cfg.width
                                 else torch.nn.Identity())
        if cfg.descriptions_per_tag > 1:
            self.reweight_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if cfg.classifier == "groupwise":
            self.fc = torch.nn.Module()
            self.fc.W = torch.nn.Parameter(torch.zeros(1, cfg.num_tags, cfg.width))
            self.fc.b = torch.nn.Parameter(torch.zeros(1, cfg.num_tags))
        else:
            self.fc = torch.nn.Linear(cfg.width, 1)

    def queries(self, image, label_embed=None):
        cfg, bs = self.cfg, image.shape[0]
        if cfg.label_source == "learned":
            return self.label_embed.weight.unsqueeze(0).repeat(bs, 1, 1)
        table = self.label_embed if label_embed is None else label_embed
        if cfg.descriptions_per_tag > 1:  # ram_plus.py, loop and all
            k = cfg.descriptions_per_tag
            cls = image[:, 0, :]
            cls = cls / cls.norm(dim=-1, keepdim=True)
            logits = self.reweight_scale.exp() * cls @ table.t()
            weights = torch.nn.functional.softmax(logits.view(bs, -1, k), dim=2)
            mixed = torch.empty(bs, table.shape[0] // k, table.shape[1])
            for i in range(bs):
                mixed[i] = (weights[i].unsqueeze(-1) * table.view(-1, k, table.shape[1])).sum(dim=1)
            return torch.relu(self.wordvec_proj(mixed))
        return torch.relu(self.wordvec_proj(table)).unsqueeze(0).repeat(bs, 1, 1)

    def forward(self, image, mask=None, label_embed=None):
        x = self.queries(image, label_embed)
        for layer in self.tagging_head.encoder.layer:
            x = layer(x, image, mask)
        if self.cfg.classifier == "groupwise":  # GroupWiseLinear, by hand
            logits = (self.fc.W * x).sum(-1) + self.fc.b
        else:
            logits = self.fc(x).squeeze(-1)
        return logits, x


def _torch_head(cfg, seed=0):
    torch.manual_seed(seed)
    model = _TorchHead(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            elif name == "label_embed" or name == "label_embed.weight":
                e = torch.randn(p.shape, generator=g)
                p.copy_(e / e.norm(dim=-1, keepdim=True) if name == "label_embed" else e)
            elif name == "reweight_scale":
                p.fill_(2.0)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _image(cfg, b=2, s=9, seed=1):
    return np.random.default_rng(seed).normal(size=(b, s, cfg.encoder_width)).astype(np.float32)


def _sd(model):
    return {k: to_numpy(v) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- head parity


@pytest.mark.parametrize("name", list(CONFIGS))
def test_head_matches_torch(name):
    cfg = CONFIGS[name]
    ref = _torch_head(cfg)
    variables = tagging_from_state_dict(_sd(ref), cfg)
    image = _image(cfg)
    with torch.no_grad():
        want_logits, want_hidden = ref(torch.from_numpy(image))
    out = jax.jit(lambda v, x: TaggingHead(cfg).apply(v, x))(variables, image)
    assert out["logits"].shape == (2, cfg.num_tags) and out["logits"].dtype == jnp.float32
    _report(f"{name} logits", out["logits"], want_logits.numpy(), HEAD_TOL)
    _report(f"{name} hidden", out["hidden"], want_hidden.numpy(), HEAD_TOL)


def test_head_image_mask_and_open_vocabulary():
    """A padded image-token mask (additive -inf in torch's eager attention) and an open-set
    label table of a different size passed at call time (RAM's shared classifier)."""
    cfg = CONFIGS["ram"]
    ref = _torch_head(cfg, seed=3)
    variables = tagging_from_state_dict(_sd(ref), cfg)
    image = _image(cfg, seed=4)
    mask = np.ones((2, 9), np.int32)
    mask[1, 5:] = 0
    additive = torch.zeros(2, 1, 1, 9)
    additive[1, ..., 5:] = torch.finfo(torch.float32).min
    new = np.random.default_rng(5).normal(size=(5, cfg.label_dim)).astype(np.float32)
    new /= np.linalg.norm(new, axis=-1, keepdims=True)
    with torch.no_grad():
        want, _ = ref(torch.from_numpy(image), additive, torch.from_numpy(new))
    got = TaggingHead(cfg).apply(variables, image, mask, label_embed=new)["logits"]
    assert got.shape == (2, 5)
    _report("ram masked open-set logits", got, want.numpy())
    # masked tokens really are ignored
    junk = image.copy()
    junk[1, 5:] = 100.0
    _report("masked tokens ignored", TaggingHead(cfg).apply(variables, junk, mask, label_embed=new)["logits"], got,
            tol=1e-5)
    with pytest.raises(ValueError, match="label_embed must be None"):
        TaggingHead(CONFIGS["tag2text"]).apply(
            tagging_from_state_dict(_sd(_torch_head(CONFIGS["tag2text"])), CONFIGS["tag2text"]),
            _image(CONFIGS["tag2text"]), label_embed=new)


def test_bfloat16_close_and_training_step():
    cfg = CONFIGS["ram"]
    variables = tagging_from_state_dict(_sd(_torch_head(cfg)), cfg)
    image = _image(cfg)
    f32 = jax.jit(TaggingHead(cfg).apply)(variables, image)["logits"]
    bf16 = jax.jit(TaggingHead(cfg, dtype="bfloat16").apply)(variables, image)["logits"]
    _report("bf16 vs f32 logits", bf16, f32, tol=0.05)

    # the frozen CLIP label table is in "constants": gradients and updates touch "params" only
    assert "label_embed" in variables["constants"] and "label_embed" not in variables["params"]
    targets = (np.random.default_rng(0).random((2, cfg.num_tags)) < 0.3).astype(np.float32)

    def loss_fn(params, rng):
        out = TaggingHead(cfg).apply({**variables, "params": params}, image, deterministic=False,
                                     rngs={"dropout": rng})
        return tl.asymmetric_loss(out["logits"], targets)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"], jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) == len(norms)


def test_sharded_apply_under_mesh():
    """Logical axis names map onto a (data, fsdp, tensor) mesh; converted weights placed with
    those shardings run sharded."""
    from clipjax.sharding import DEFAULT_RULES, logical_shardings, make_mesh

    cfg = CONFIGS["tag2text"]
    ref = _torch_head(cfg)
    variables = tagging_from_state_dict(_sd(ref), cfg)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = TaggingHead(cfg)
    image = np.concatenate([_image(cfg)] * 4)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), image))
        shardings = nn.unbox(logical_shardings(abstract, mesh, DEFAULT_RULES))
        placed = jax.device_put(variables, shardings)
        out = jax.jit(model.apply)(placed, image)
    assert tuple(shardings["params"]["transformer"]["layers"]["mlp"]["fc1"]["kernel"].spec) == (None, "fsdp", "tensor")
    assert tuple(shardings["params"]["W"].spec) == (None, "fsdp")  # "tags" is replicated
    with torch.no_grad():
        want, _ = ref(torch.from_numpy(image))
    _report("sharded tag2text logits", out["logits"], want.numpy())


# -------------------------------------------------------------------------- conversion


def test_rules_round_trip_bitwise():
    rng = np.random.default_rng(0)
    for name, cfg in CONFIGS.items():
        sd = _sd(_torch_head(cfg, seed=7))
        _bitwise(tagging_to_state_dict(tagging_from_state_dict(sd, cfg), cfg), sd)
        # and from clipjax's side, nested in a bigger model: random variables of every expected shape
        shapes = tagging_expected_shapes(cfg, "params/tagging")
        nested = unflatten_variables({k: rng.normal(size=v).astype(np.float32) for k, v in shapes.items()})
        back = tagging_from_state_dict(tagging_to_state_dict(nested, cfg, "params/tagging", "ram."), cfg,
                                       "params/tagging", "ram.")
        _bitwise(flatten_variables(back), flatten_variables(nested))
        inferred = infer_tagging_config(sd, base=tg.ram_tagging_config(cfg.num_tags))
        if cfg.label_source == "learned":  # label_dim means nothing there and is not stored
            inferred = dataclasses.replace(inferred, label_dim=cfg.label_dim)
        assert inferred == cfg, name
        print(f"{name}: {len(sd)} keys round-trip bitwise")


def test_conversion_checks_and_aliases():
    cfg = CONFIGS["ram"]
    sd = _sd(_torch_head(cfg))
    # other parts of a full checkpoint are left alone; the Swin checkpoints' "vision_multi." is read
    full = {("vision_multi." + k[len("tagging_head."):] if k.startswith("tagging_head.") else k): v
            for k, v in sd.items()}
    full["visual_encoder.norm.weight"] = np.ones(4, np.float32)
    full["tag_encoder.encoder.layer.0.crossattention.self.query.weight"] = np.ones((4, 4), np.float32)
    _bitwise(flatten_variables(tagging_from_state_dict(full, cfg)), flatten_variables(tagging_from_state_dict(sd, cfg)))
    missing = dict(sd)
    del missing["tagging_head.encoder.layer.1.output.dense.bias"]
    with pytest.raises(CheckpointError, match="missing keys"):
        tagging_from_state_dict(missing, cfg)
    extra = dict(sd, **{"tagging_head.encoder.layer.0.attention.self.query.weight": np.zeros((32, 32), np.float32)})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        tagging_from_state_dict(extra, cfg)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        tagging_from_state_dict(sd, TaggingConfig(**{**SMALL, "num_tags": 12}))
    with pytest.raises(CheckpointError, match="holds the tagging head twice"):
        tagging_from_state_dict({**sd, "vision_multi.encoder.layer.0.output.dense.bias": np.zeros(32, np.float32)}, cfg)


# ------------------------------------------------------------------------------- losses


def _torch_asl(x, y, gamma_neg=7, gamma_pos=0, clip=0.05, eps=1e-8, disable_grad=True):
    """recognize-anything ram/models/utils.py AsymmetricLoss.forward, written out."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        if disable_grad:
            torch.set_grad_enabled(False)
        pt = xs_pos * y + xs_neg * (1 - y)
        w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        if disable_grad:
            torch.set_grad_enabled(True)
        loss = loss * w
    return -loss.sum()


def test_asymmetric_loss_matches_original():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 3, (4, 40)), np.array([[-40.0, -3.0, 0.0, 3.0, 40.0] * 8])]).astype(np.float32)
    y = (rng.random(x.shape) < 0.3).astype(np.float32)
    for kw in (dict(), dict(gamma_neg=4), dict(gamma_neg=4, gamma_pos=1, clip=0.0)):
        for focal_grad in (False, True):
            xt = torch.from_numpy(x).requires_grad_(True)
            want = _torch_asl(xt, torch.from_numpy(y), disable_grad=not focal_grad, **kw)
            want.backward()
            got, grad = jax.value_and_grad(tl.asymmetric_loss)(x, y, focal_gradient=focal_grad, **kw)
            scale = max(1.0, abs(want.item()))
            d = abs(float(got) - want.item()) / scale
            dg = float(np.max(np.abs(np.asarray(grad) - xt.grad.numpy())))
            print(f"ASL {kw} focal_grad={focal_grad}: loss {float(got):.6g} rel diff {d:.3g}, grad max abs diff {dg:.3g}")
            assert d <= 1e-6 and dg <= 1e-6
    # the stop-gradient on the focal weight matters: the two gradients differ
    g_stop = jax.grad(lambda v: tl.asymmetric_loss(v, y))(x)
    g_full = jax.grad(lambda v: tl.asymmetric_loss(v, y, focal_gradient=True))(x)
    assert float(jnp.max(jnp.abs(g_stop - g_full))) > 1e-3
    # clipped easy negatives (p < clip) contribute neither loss nor gradient
    assert float(tl.asymmetric_loss(np.full((1, 3), -5.0), np.zeros((1, 3)))) == 0.0
    assert float(jnp.abs(jax.grad(lambda v: tl.asymmetric_loss(v, np.zeros((1, 3))))(np.full((1, 3), -5.0))).max()) == 0.0


def test_balancing_and_distillation():
    t2t, tag = 2.5, 700.0
    val, (g_t2t, g_tag) = jax.value_and_grad(tl.tag2text_loss, argnums=(0, 1))(t2t, tag)
    assert abs(float(val) - 2 * t2t) < 1e-5  # the tag term takes the caption loss's value
    assert abs(float(g_t2t) - 1.0) < 1e-6 and abs(float(g_tag) - t2t / tag) < 1e-7
    assert abs(float(tl.ram_loss(t2t, tag, 0.25)) - (2 * t2t + 0.25)) < 1e-5

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=(3, 16)).astype(np.float32)
    want = torch.nn.functional.l1_loss(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert abs(float(tl.clip_distillation_loss(a, b)) - want) < 1e-6
    assert float(jnp.abs(jax.grad(lambda c: tl.clip_distillation_loss(a, c))(b)).max()) == 0.0  # CLIP is frozen


def test_itc_matches_blip_formula():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(6, 8)).astype(np.float32)
    txt = rng.normal(size=(6, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ids = np.array([0, 1, 1, 2, 3, 3])
    sim_m = rng.normal(size=(6, 6)).astype(np.float32) * 5
    F = torch.nn.functional
    for use_ids, alpha in ((False, 0.0), (True, 0.0), (False, 0.4), (True, 0.4)):
        i, t = torch.from_numpy(img), torch.from_numpy(txt)
        sim_i2t, sim_t2i = i @ t.t() / 0.07, t @ i.t() / 0.07
        idx = torch.from_numpy(ids).view(-1, 1) if use_ids else torch.arange(6).view(-1, 1)
        pos = torch.eq(idx, idx.t()).float()
        targets = pos / pos.sum(1, keepdim=True)
        m = torch.from_numpy(sim_m)
        ti = alpha * F.softmax(m, dim=1) + (1 - alpha) * targets
        tt = alpha * F.softmax(m.t(), dim=1) + (1 - alpha) * targets
        want = ((-torch.sum(F.log_softmax(sim_i2t, dim=1) * ti, dim=1).mean())
                + (-torch.sum(F.log_softmax(sim_t2i, dim=1) * tt, dim=1).mean())) / 2
        got, _ = tl.itc_loss(img, txt, 0.07, ids if use_ids else None, sim_m, sim_m.T, alpha)
        print(f"ITC ids={use_ids} alpha={alpha}: {float(got):.6f} vs {want.item():.6f}")
        assert abs(float(got) - want.item()) < 1e-5
    assert float(al.clamp_temperature(jnp.float32(0.9))) == 0.5


def test_itm_hard_negatives():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(6, 6)).astype(np.float32) * 3
    n = 40000
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    neg_t, neg_i = jax.jit(jax.vmap(lambda k: al.sample_hard_negatives(k, sim, sim.T)))(keys)
    neg_t, neg_i = np.asarray(neg_t), np.asarray(neg_i)
    assert not np.any(neg_t == np.arange(6)) and not np.any(neg_i == np.arange(6))  # never the positive
    for draws, s in ((neg_t, sim), (neg_i, sim.T)):
        w = np.asarray(al.hard_negative_weights(s))
        want = w / w.sum(axis=1, keepdims=True)
        freq = np.stack([np.bincount(draws[:, r], minlength=6) for r in range(6)]) / n
        d = float(np.max(np.abs(freq - want)))
        print(f"ITM negative frequencies vs weights: max abs diff {d:.3g}")
        assert d < 0.015
    # with image ids, every caption of the same image is a positive and never drawn
    ids = np.array([0, 0, 1, 1, 2, 2])
    neg_t, _ = jax.vmap(lambda k: al.sample_hard_negatives(k, sim, sim.T, ids))(keys[:2000])
    assert not np.any(ids[np.asarray(neg_t)] == ids[None, :])
    # BLIP pretrain smoothing: +1e-4 before zeroing the positives; retrieval: none
    w0 = np.asarray(al.hard_negative_weights(sim, smoothing=0.0))
    w1 = np.asarray(al.hard_negative_weights(sim))
    assert np.all(np.diag(w1) == 0) and np.allclose((w1 - w0)[~np.eye(6, dtype=bool)], 1e-4, rtol=0, atol=1e-7)

    image_index, text_index, labels = al.itm_pairs(jnp.array([1, 0, 0]), jnp.array([2, 2, 1]))
    assert image_index.tolist() == [0, 1, 2, 2, 2, 1, 0, 1, 2]
    assert text_index.tolist() == [0, 1, 2, 0, 1, 2, 1, 0, 0]
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    logits = rng.normal(size=(9, 2)).astype(np.float32)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(np.asarray(labels)).long())
    assert abs(float(tl.itm_loss(logits, labels)) - want.item()) < 1e-6


# ------------------------------------------------------------------- tag lists, open vocabulary


def test_shipped_tag_lists():
    tags, thresholds = tg.load_ram_tags()
    assert len(tags) == 4585 and thresholds.shape == (4585,) and thresholds.dtype == np.float32
    assert 0.45 <= thresholds.min() and thresholds.max() <= 1.0
    chinese, _ = tg.load_ram_tags(chinese=True)
    assert len(chinese) == 4585 and all(c == c.strip() for c in chinese)
    t2t, t2t_thr = tg.load_tag2text_tags()
    assert len(t2t) == 3429
    assert [t2t[i] for i in (2701, 2828, 1167)] == ["person", "man", "woman"]
    assert [t2t[i] for i in tg.TAG2TEXT_DELETE_TAG_INDEX] == ["quarter", "back", "two", "three", "four", "five", "one"]
    assert t2t_thr[2701] == np.float32(0.7) and t2t_thr[0] == np.float32(0.68)


def test_tag_file_errors(tmp_path):
    def write(name, text):
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return str(p)

    assert tg.load_tag_list(write("ok.txt", "cat\ndog \r\nbird\n\n")) == ["cat", "dog", "bird"]
    with pytest.raises(FileNotFoundError):
        tg.load_tag_list(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="empty"):
        tg.load_tag_list(write("empty.txt", "\n\n"))
    with pytest.raises(ValueError, match=r"blank lines at \[2\]"):
        tg.load_tag_list(write("gap.txt", "cat\n\ndog\n"))
    assert tg.load_thresholds(write("t.txt", "0.5\n0.68\n1\n"), 3).tolist() == pytest.approx([0.5, 0.68, 1.0])
    with pytest.raises(ValueError, match="line 2: 'x' is not a number"):
        tg.load_thresholds(write("t1.txt", "0.5\nx\n"))
    with pytest.raises(ValueError, match="line 1: 1.5 is not a probability"):
        tg.load_thresholds(write("t2.txt", "1.5\n"))
    with pytest.raises(ValueError, match="not a probability"):
        tg.load_thresholds(write("t3.txt", "nan\n"))
    with pytest.raises(ValueError, match="has 2 values for 3 tags"):
        tg.load_thresholds(write("t4.txt", "0.5\n0.6\n"), 3)
    with pytest.raises(ValueError, match="override"):
        tg.class_thresholds(3, overrides={3: 0.7})


def test_predictions_to_tags():
    logits = np.array([[0.0, 2.0, -1.0, 3.0], [5.0, -5.0, 0.1, 0.0]], np.float32)
    thr = np.array([0.5, 0.68, 0.2, 0.5], np.float32)
    hits = tg.predict_tags(logits, thr)  # strict: sigmoid(0) = 0.5 is not above 0.5
    assert np.asarray(hits).tolist() == [[False, True, True, True], [True, False, True, False]]
    names = ["a", "b", "c", "d"]
    assert tg.tags_to_strings(hits, names) == ["b | c | d", "a | c"]
    assert tg.tags_to_strings(tg.predict_tags(logits, thr, delete_index=(2,)), names) == ["b | d", "a"]
    targets = np.array([[0, 1, 0, 0], [1, 1, 0, 0]], np.float32)  # 2 of 5 predictions right, 2 of 3 positives found
    m = tl.tagging_metrics(logits, targets, thr)
    assert float(m["precision"]) == pytest.approx(2 / 5) and float(m["recall"]) == pytest.approx(2 / 3)


def test_openset_prompts_and_embeddings():
    p = tg.openset_prompts("Aerial photography")
    assert len(p) == 63
    assert p[0] == "There is a aerial photography in the scene."  # article from the raw, capitalised name
    assert p[8] == "This is a photo of a aerial photography."
    assert tg.openset_prompts("apple")[0] == "There is an apple in the scene."
    assert tg.openset_prompts("traffic_light/signal.")[10] == "This is a photo of the traffic light or signal."
    assert tg.openset_prompts("owl")[5] == "itap of an owl."  # no prefix: starts with neither "a" nor "the"
    assert tg.openset_prompts("owl")[59] == "This is an embroidered owl."

    rng = np.random.default_rng(0)
    table = {}

    def encode(texts):  # a stand-in text encoder: a fixed random vector per prompt
        return np.stack([table.setdefault(t, rng.normal(size=8) * (1 + len(t))) for t in texts])

    names = ["cat", "Zebra crossing", "owl"]
    got = tg.build_label_embeddings(names, encode, batch_size=7)
    assert got.shape == (3, 8) and got.dtype == np.float32
    for c, name in enumerate(names):  # the original's per-category loop, in torch
        e = torch.from_numpy(encode(tg.openset_prompts(name)))
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.mean(dim=0)
        m = m / m.norm()
        assert np.allclose(got[c], m.numpy(), atol=1e-6)
    np.testing.assert_array_equal(got, tg.build_label_embeddings(names, encode, batch_size=1000))


def test_config_round_trip_and_checks():
    for cfg in CONFIGS.values():
        assert TaggingConfig.from_dict(cfg.to_dict()) == cfg
    ram = tg.ram_tagging_config()  # q2l_config.json: 768 wide, 2 layers, 4 heads, 3072 MLP, exact GELU, eps 1e-12
    assert (ram.width, ram.layers, ram.heads, ram.mlp_dim, ram.act, ram.ln_eps) == (768, 2, 4, 3072, "gelu", 1e-12)
    assert (ram.num_tags, ram.encoder_width, ram.label_dim, ram.has_wordvec_proj) == (4585, 512, 512, True)
    assert tg.tag2text_tagging_config().to_dict()["classifier"] == "groupwise"
    with pytest.raises(ValueError, match="Unknown TaggingConfig"):
        TaggingConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="encoder_width == label_dim"):
        TaggingConfig(descriptions_per_tag=51, encoder_width=1024)
    with pytest.raises(ValueError, match="expects 24"):
        TaggingHead(CONFIGS["ram"]).init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 20)))
