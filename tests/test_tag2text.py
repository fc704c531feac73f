"""Whole Tag2Text / RAM / RAM++ models against a PyTorch model built to the recognize-anything
layout from code nobody here wrote: timm's ViT (BLIP's ViT layout) as visual_encoder,
transformers' BertModel (cross-attention, no pooler) as tag_encoder and BertLMHeadModel as
text_decoder, the tagging head from transformers' BERT pieces (tests/test_tagging.py), and the
release's tie (tag_encoder layers 0..n-1 share the head's cross-attention / FFN modules).
Random weights, float32; conversion round trips bitwise."""

import dataclasses

import numpy as np
import pytest
import jax
import jax.numpy as jnp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_tagging import _torch_head  # noqa: E402
from torchvision_stub import import_timm  # noqa: E402

from clipjax.variables import CheckpointError  # noqa: E402
from clipjax.convert.common import to_numpy  # noqa: E402
from clipjax.losses.tagging import itc_loss_from_similarities  # noqa: E402
from clipjax.convert.recognize_anything import (  # noqa: E402
    load_ram_checkpoint,
    ram_from_state_dict,
    ram_to_state_dict,
    save_ram_checkpoint,
)
from clipjax.models.config import TextConfig, VisionConfig  # noqa: E402
from clipjax.models.tag2text import Tag2Text, Tag2TextConfig, tie_tag_encoder  # noqa: E402
from clipjax.models.tagging import TaggingConfig  # noqa: E402

TOL = 1e-4
VIS = VisionConfig(kind="vit", image_size=32, patch_size=8, width=48, layers=2, heads=4, mlp_dim=96, act="gelu",
                   ln_pre=False, patch_bias=True, ln_eps=1e-6)
TEXT = TextConfig(kind="bert", vocab_size=50, context_length=40, width=32, layers=3, heads=2, mlp_dim=64, act="gelu",
                  ln_eps=1e-12, eos_token_id=None, pad_token_id=0, pool="cls", cross_attention=True)
HEAD = dict(num_tags=11, width=32, layers=2, heads=4, mlp_dim=64)


def _cfg(variant):
    if variant == "tag2text":
        tagging = TaggingConfig(**HEAD, encoder_width=VIS.width, label_source="learned", classifier="groupwise")
        return Tag2TextConfig(variant="tag2text", vision=VIS, tagging=tagging, text=TEXT, bos_token_id=48,
                              enc_token_id=49, sep_token_id=3)
    tagging = TaggingConfig(**HEAD, encoder_width=16, label_dim=16,
                            descriptions_per_tag=3 if variant == "ram_plus" else 1)
    return Tag2TextConfig(variant="ram", vision=VIS, tagging=tagging, text=TEXT, image_proj_dim=16,
                          captioning=variant != "ram_plus", bos_token_id=48, enc_token_id=49, sep_token_id=3)


class _TorchModel(torch.nn.Module):
    """recognize-anything's attribute layout, built from timm / transformers modules."""

    def __init__(self, cfg: Tag2TextConfig, seed=0):
        super().__init__()
        timm = import_timm()
        torch.manual_seed(seed)
        v = cfg.vision
        self.visual_encoder = timm.models.vision_transformer.VisionTransformer(
            img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.width, depth=v.layers, num_heads=v.heads,
            mlp_ratio=v.mlp_dim / v.width, qkv_bias=True, num_classes=0, global_pool="")
        if cfg.image_proj_dim:
            self.image_proj = torch.nn.Linear(v.width, cfg.image_proj_dim)
        head = _torch_head(cfg.tagging, seed)
        for name, child in head.named_children():
            setattr(self, name, child)
        for name, p in head.named_parameters(recurse=False):
            setattr(self, name, p)
        self.head = head
        self.cfg = cfg
        if cfg.captioning:
            t = cfg.text
            kw = dict(vocab_size=t.vocab_size, hidden_size=t.width, num_hidden_layers=t.layers,
                      num_attention_heads=t.heads, intermediate_size=t.mlp_dim, max_position_embeddings=t.context_length,
                      layer_norm_eps=t.ln_eps, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      is_decoder=True, add_cross_attention=True, pad_token_id=t.pad_token_id)
            enc = transformers.BertModel(transformers.BertConfig(**kw), add_pooling_layer=False)
            for i, layer in enumerate(enc.encoder.layer):  # bidirectional, image-width cross-attention
                layer.attention.self.is_causal = False
                layer.crossattention.self.key = torch.nn.Linear(cfg.image_width, t.width)
                layer.crossattention.self.value = torch.nn.Linear(cfg.image_width, t.width)
                if i < cfg.tagging.layers:
                    # the release's tie (BLIP's tie_encoder_decoder_weights) shares the weight and
                    # bias Parameters, not the modules: each side keeps its own head count
                    tl = head.tagging_head.encoder.layer[i]
                    for sub in ("crossattention", "intermediate", "output"):
                        mine, theirs = dict(getattr(layer, sub).named_modules()), dict(getattr(tl, sub).named_modules())
                        for name, mod in mine.items():
                            if isinstance(mod, (torch.nn.Linear, torch.nn.LayerNorm)):
                                mod.weight, mod.bias = theirs[name].weight, theirs[name].bias
            enc.config.is_decoder = False
            enc.config.use_cache = False
            self.tag_encoder = enc
            self.text_decoder = transformers.BertLMHeadModel(transformers.BertConfig(**kw))
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():  # non-trivial values everywhere but the head (already randomised)
            for name, p in self.named_parameters():
                if name.startswith(("tagging_head", "label_embed", "fc", "wordvec_proj", "reweight", "head.")):
                    continue
                if "norm" in name.lower():
                    p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
        self.eval()

    def state_dict_numpy(self):
        sd = {k: to_numpy(v) for k, v in self.state_dict().items() if not k.startswith("head.")}
        return {k: v for k, v in sd.items() if "position_ids" not in k}

    @torch.no_grad()
    def forward(self, images, tag_ids, caption_ids):
        x = self.visual_encoder.forward_features(torch.tensor(images).permute(0, 3, 1, 2))
        if self.cfg.image_proj_dim:
            x = self.image_proj(x)
        tag_logits, _ = self.head(x)
        out = dict(tag_logits=tag_logits.numpy(), image_cls=x[:, 0].numpy())
        if self.cfg.captioning:
            tids, cids = torch.tensor(tag_ids), torch.tensor(caption_ids)
            states = self.tag_encoder(tids, attention_mask=(tids != 0).long(), encoder_hidden_states=x).last_hidden_state
            out["caption_logits"] = self.text_decoder(cids, attention_mask=(cids != 0).long(),
                                                      encoder_hidden_states=states).logits.numpy()
        return out


def _inputs(cfg):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    tag_ids = np.array([[49, 5, 6, 7, 3, 0, 0], [49, 8, 9, 3, 0, 0, 0]])
    caption_ids = np.array([[48, 10, 11, 12, 13, 3], [48, 10, 11, 14, 3, 0]])
    return images, tag_ids, caption_ids


@pytest.mark.parametrize("variant", ["tag2text", "ram", "ram_plus"])
def test_whole_model_matches_torch_and_round_trips(variant, tmp_path):
    cfg = _cfg(variant)
    ref = _TorchModel(cfg)
    sd = ref.state_dict_numpy()
    if cfg.captioning:  # the tie is real in the reference: both copies in the state dict, equal
        k = "tag_encoder.encoder.layer.1.crossattention.self.key.weight"
        assert np.array_equal(sd[k], sd["tagging_head.encoder.layer.1.crossattention.self.key.weight"])
        assert "text_decoder.cls.predictions.decoder.weight" in sd
    variables = ram_from_state_dict(sd, cfg)
    images, tag_ids, caption_ids = _inputs(cfg)
    want = ref(images, tag_ids, caption_ids)
    params = tie_tag_encoder(variables["params"])
    got = Tag2Text(cfg).apply({**variables, "params": params}, jnp.asarray(images), jnp.asarray(tag_ids),
                              jnp.asarray(caption_ids))
    for key in want:
        a, b = np.asarray(got[key]), want[key]
        if key == "caption_logits":
            keep = caption_ids != 0
            a, b = a[keep], b[keep]
        err = float(np.max(np.abs(a - b)))
        print(f"{variant} {key}: max abs err {err:.2e}")
        assert err < TOL, (key, err)

    back = ram_to_state_dict(variables, cfg)
    assert set(back) == set(sd), sorted(set(back) ^ set(sd))
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
    path = str(tmp_path / "model.pth")
    save_ram_checkpoint(variables, cfg, path)
    again = load_ram_checkpoint(path, cfg)
    assert jax.tree.all(jax.tree.map(np.array_equal, again, variables))
    # the torch model loads the export strictly
    ref.load_state_dict({k: torch.tensor(v) for k, v in back.items()}, strict=False)


def test_untied_and_wrong_checkpoints_are_refused():
    cfg = _cfg("tag2text")
    sd = _TorchModel(cfg).state_dict_numpy()
    bad = dict(sd)
    k = "tag_encoder.encoder.layer.0.intermediate.dense.weight"
    bad[k] = bad[k] + 1.0
    with pytest.raises(CheckpointError, match="tie"):
        ram_from_state_dict(bad, cfg)
    missing = {k: v for k, v in sd.items() if not k.startswith("text_decoder.cls")}
    with pytest.raises(CheckpointError, match="cls.predictions"):
        ram_from_state_dict(missing, cfg)
    with pytest.raises(CheckpointError):  # a RAM file read as Tag2Text
        ram_from_state_dict(_TorchModel(_cfg("ram")).state_dict_numpy(), cfg)


def test_tie_reaches_the_head_through_both_paths():
    """Training through the tie: the tagging head's tensors get the tag encoder's gradient too,
    the tag encoder's own copies of the tied slices get none."""
    cfg = _cfg("tag2text")
    model = Tag2Text(cfg)
    images, tag_ids, caption_ids = (jnp.asarray(x) for x in _inputs(cfg))
    variables = model.init(jax.random.PRNGKey(0), images, tag_ids, caption_ids)
    from flax import linen as nn

    params = nn.unbox(variables["params"])

    def caption_loss(p):
        return jnp.sum(model.apply({"params": tie_tag_encoder(p)}, images, tag_ids, caption_ids)["caption_logits"] ** 2)

    g = jax.grad(caption_loss)(params)
    head_g = g["tagging_head"]["transformer"]["layers"]["mlp"]["fc1"]["kernel"]
    enc_g = g["tag_encoder"]["transformer"]["layers"]["mlp"]["fc1"]["kernel"]
    assert float(jnp.abs(head_g).sum()) > 0  # the caption loss trains the head's tensors
    assert float(jnp.abs(enc_g[: cfg.tagging.layers]).sum()) == 0  # dead copies
    assert float(jnp.abs(enc_g[cfg.tagging.layers:]).sum()) > 0


def test_config_checks_and_round_trip():
    cfg = _cfg("ram")
    assert Tag2TextConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="16-wide image tokens"):
        dataclasses.replace(cfg, image_proj_dim=None)
    with pytest.raises(ValueError, match="variant"):
        dataclasses.replace(cfg, variant="blip")


def test_swin_model_round_trip_bitwise():
    """The released models' Swin tower inside the whole layout (the tower's own parity against
    transformers and timm is tests/test_swin.py)."""
    from flax import linen as nn

    from clipjax.models.tag2text import init_inputs

    swin = dict(image_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
    tagging = TaggingConfig(**HEAD, encoder_width=16, label_dim=16)
    cfg = Tag2TextConfig(variant="ram", vision_kind="swin", swin=swin, tagging=tagging, text=TEXT, image_proj_dim=16,
                         bos_token_id=48, enc_token_id=49, sep_token_id=3)
    assert cfg.vision_width == 32
    variables = nn.unbox(Tag2Text(cfg).init(jax.random.PRNGKey(0), *init_inputs(cfg, 2)))
    variables = jax.tree.map(np.asarray, {**variables, "params": tie_tag_encoder(variables["params"])})
    sd = ram_to_state_dict(variables, cfg)
    assert "visual_encoder.layers.0.blocks.1.attn_mask" in sd and "visual_encoder.norm.weight" in sd
    back = ram_from_state_dict(sd, cfg)
    assert jax.tree.all(jax.tree.map(np.array_equal, back, variables))
    out = Tag2Text(cfg).apply(back, *init_inputs(cfg, 2))
    assert out["tag_logits"].shape == (2, HEAD["num_tags"]) and out["image_cls"].shape == (2, 16)


def test_released_configs_describe_the_release_layout():
    """Shapes of a few keys of the released checkpoints, from the layout's rules (abstract: no
    weights are built)."""
    from clipjax.convert.recognize_anything import _expected, ram_rules
    from clipjax.models.tag2text import released_config

    def torch_shapes(name):
        cfg = released_config(name)
        shapes = _expected(cfg)
        rules, _ = ram_rules(cfg)
        return {r.torch: shapes[r.jax] for r in rules}, cfg

    t2t, cfg = torch_shapes("tag2text_swin_14m")
    assert cfg.vision_width == 1024 and cfg.tagging.num_tags == 3429
    assert t2t["label_embed.weight"] == (3429, 768) and t2t["fc.W"] == (3429, 768)
    assert t2t["tag_encoder.encoder.layer.{i}.crossattention.self.key.weight"][1:] == (1024, 12, 64)
    ram, cfg = torch_shapes("ram_swin_large_14m")
    assert cfg.vision_width == 1536 and ram["image_proj.weight"] == (1536, 512)
    # Swin-L: 18 blocks in stage 3, fused qkv (one third of the rows per q/k/v rule)
    assert ram["visual_encoder.layers.2.blocks.17.attn.qkv.weight#0/3"][0] == 768
    plus, cfg = torch_shapes("ram_plus_swin_large_14m")
    assert not any(k.startswith(("tag_encoder.", "text_decoder.")) for k in plus)


def test_convert_cli_round_trip(tmp_path):
    """convert.py: a recognize-anything .pth (+ config JSON) -> clipjax -> .pth, bitwise."""
    import json

    import convert

    cfg = _cfg("ram")
    sd = _TorchModel(cfg).state_dict_numpy()
    src = str(tmp_path / "ram.pth")
    torch.save({"model": {k: torch.tensor(v) for k, v in sd.items()}}, src)
    spec = str(tmp_path / "cfg.json")
    json.dump(cfg.to_dict(), open(spec, "w"))
    assert convert.main(["--src", src, "--ram", spec, "--dst", str(tmp_path / "cj"), "--to", "clipjax"]) == 0
    assert convert.main(["--src", str(tmp_path / "cj"), "--dst", str(tmp_path / "back.pth"), "--to", "ram"]) == 0
    back = torch.load(str(tmp_path / "back.pth"), weights_only=True)["model"]
    assert set(back) == set(sd)
    assert all(np.array_equal(back[k].numpy(), sd[k]) for k in sd)
    assert convert.main(["--src", src, "--ram", "ram_tiny", "--dst", str(tmp_path / "x"), "--to", "clipjax"]) == 2


def test_alignment_branch_matches_blip_recipe_and_round_trips():
    """ITC / ITM (alignment_dim > 0) against BLIP's recipe (blip_pretrain.py) on the torch
    reference: the tag encoder in text mode on [CLS] + caption for ITC, with cross-attention on
    [ENC] + caption for ITM, BLIP's projections / itm_head / temp, and BLIP's ITM batch order.
    The negatives are the deterministic choice (most similar non-matching, `key=None`)."""
    F = torch.nn.functional
    cfg = dataclasses.replace(_cfg("tag2text"), alignment_dim=24)
    ref = _TorchModel(cfg)
    torch.manual_seed(5)
    vision_proj, text_proj = torch.nn.Linear(VIS.width, 24), torch.nn.Linear(TEXT.width, 24)
    itm_head, temp = torch.nn.Linear(TEXT.width, 2), torch.tensor(0.07)
    sd = ref.state_dict_numpy()
    for name, mod in (("vision_proj", vision_proj), ("text_proj", text_proj), ("itm_head", itm_head)):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = to_numpy(mod.weight), to_numpy(mod.bias)
    sd["temp"] = to_numpy(temp)
    variables = ram_from_state_dict(sd, cfg)
    back = ram_to_state_dict(variables, cfg)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)

    rng = np.random.default_rng(1)
    images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    text_ids = np.array([[1, 10, 11, 12, 3, 0], [1, 13, 14, 3, 0, 0], [1, 15, 16, 17, 18, 3]])
    model = Tag2Text(cfg)
    v = {**variables, "params": tie_tag_encoder(variables["params"])}
    tokens = model.apply(v, jnp.asarray(images), method=Tag2Text.image_tokens)
    got = model.apply(v, tokens, jnp.asarray(text_ids), method=Tag2Text.align)

    with torch.no_grad():
        x = ref.visual_encoder.forward_features(torch.tensor(images).permute(0, 3, 1, 2))
        ids = torch.tensor(text_ids)
        mask = (ids != 0).long()
        image_feat = F.normalize(vision_proj(x[:, 0]), dim=-1)
        text_feat = F.normalize(text_proj(ref.tag_encoder(ids, attention_mask=mask).last_hidden_state[:, 0]), dim=-1)
        sim_i2t = image_feat @ text_feat.t() / temp
        target = torch.arange(3)
        itc = (F.cross_entropy(sim_i2t, target) + F.cross_entropy(sim_i2t.t(), target)) / 2
        eye = torch.eye(3, dtype=torch.bool)
        neg_t = sim_i2t.masked_fill(eye, -float("inf")).argmax(1)
        neg_i = sim_i2t.t().masked_fill(eye, -float("inf")).argmax(1)
        enc_ids = ids.clone()
        enc_ids[:, 0] = cfg.enc_token_id

        def cls(t_index, i_index):
            return ref.tag_encoder(enc_ids[t_index], attention_mask=mask[t_index],
                                   encoder_hidden_states=x[i_index]).last_hidden_state[:, 0]

        ar = torch.arange(3)
        # BLIP: [positives; (negative image, text); (image, negative text)]
        itm = itm_head(torch.cat([cls(ar, ar), cls(ar, neg_i), cls(neg_t, ar)]))
    errs = {"sim": np.abs(np.asarray(got["sim_i2t"]) - sim_i2t.numpy()).max(),
            "itc": abs(float(itc_loss_from_similarities(got["sim_i2t"], got["sim_t2i"])) - float(itc)),
            "itm": np.abs(np.asarray(got["itm_logits"]) - itm.numpy()).max()}
    print("alignment vs BLIP recipe:", {k: f"{e:.1e}" for k, e in errs.items()})
    assert max(errs.values()) <= TOL
    assert np.array_equal(np.asarray(got["itm_labels"]), [1, 1, 1, 0, 0, 0, 0, 0, 0])
