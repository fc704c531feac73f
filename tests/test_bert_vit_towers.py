"""BERT / DistilBERT text towers and the HF ViTModel image layout against transformers
(random weights from small configs), plus bitwise conversion round trips."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clipjax.variables import CheckpointError, flatten_variables  # noqa: E402
from clipjax.convert.common import Rule, to_numpy, torch_to_variables, variables_to_torch
from clipjax.convert.hf_bert import (  # noqa: E402
    bert_config_from_hf,
    bert_config_to_hf,
    bert_from_state_dict,
    bert_rules,
    bert_to_state_dict,
    load_hf_bert,
    save_hf_bert,
)
from clipjax.convert.hf_vit import (  # noqa: E402
    load_hf_vit,
    save_hf_vit,
    vit_config_from_hf,
    vit_config_to_hf,
    vit_from_state_dict,
    vit_to_state_dict,
)
from clipjax.models.bert import BertEncoder  # noqa: E402
from clipjax.models.vit import VisionTransformer  # noqa: E402

TOL = 1e-4
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _sd(model):
    return {k: to_numpy(v) for k, v in model.state_dict().items()}


def _report(name, a, b):
    d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    print(f"{name}: max abs diff {d:.3g}")
    assert d <= TOL, f"{name}: max abs diff {d}"
    return d


def _assert_bitwise(a: dict, b: dict):
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and x.dtype == y.dtype, (k, x.shape, y.shape, x.dtype, y.dtype)
        assert np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8)), k


def _text_inputs(seed=0, b=2, t=12, vocab=1000):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    types = np.zeros((b, t), np.int64)
    types[:, t // 2:] = 1
    return ids, mask, types


def _bert(**kw):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=1000, max_position_embeddings=64, type_vocab_size=2,
                                  attn_implementation="eager", **SMALL, **kw)
    return transformers.BertModel(cfg).eval()


# ----------------------------------------------------------------------------- BERT


def test_bert_parity_and_round_trip():
    hf = _bert()
    cfg = bert_config_from_hf(hf.config.to_dict())
    assert cfg.kind == "bert" and cfg.pool == "pooler" and cfg.ln_eps == 1e-12 and cfg.act == "gelu"
    sd = _sd(hf)
    variables = bert_from_state_dict(sd, cfg)
    ids, mask, types = _text_inputs()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    out = BertEncoder(cfg).apply(variables, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                 token_type_ids=jnp.asarray(types))
    _report("BertModel last_hidden_state", out["tokens"], ref.last_hidden_state.numpy())
    _report("BertModel pooler_output", out["pooled"], ref.pooler_output.numpy())
    assert out["embeds"] is None and out["hidden"] is None

    # projection head and per-layer outputs
    proj = BertEncoder(cfg, embed_dim=16)
    pv = proj.init(jax.random.PRNGKey(1), jnp.asarray(ids))
    pv = {"params": {**variables["params"], "proj": jax.tree.map(np.asarray, pv["params"]["proj"])}}
    out2 = proj.apply(pv, jnp.asarray(ids), attention_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types),
                      return_hidden=True)
    assert out2["embeds"].shape == (2, 16) and out2["hidden"].shape == (2, 2, 12, 64)
    np.testing.assert_array_equal(out2["hidden"][-1], out2["tokens"])
    # the projection is not part of BertModel: written state dict is unchanged
    _assert_bitwise(bert_to_state_dict(pv, cfg), sd)

    _assert_bitwise(bert_to_state_dict(variables, cfg), sd)
    assert bert_config_from_hf(bert_config_to_hf(cfg)) == cfg

    # mean pooling = mask-weighted mean of last_hidden_state
    mcfg = bert_config_from_hf(hf.config.to_dict(), pool="mean")
    mvars = bert_from_state_dict({k: v for k, v in sd.items() if not k.startswith("pooler.")}, mcfg)
    mout = BertEncoder(mcfg).apply(mvars, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                                   token_type_ids=jnp.asarray(types))
    h, m = ref.last_hidden_state.numpy(), mask[..., None].astype(np.float32)
    _report("BERT mean pool", mout["pooled"], (h * m).sum(1) / m.sum(1))


def test_bert_directory_round_trip(tmp_path):
    hf = _bert()
    hf.save_pretrained(tmp_path / "hf")
    cfg, variables = load_hf_bert(str(tmp_path / "hf"))
    save_hf_bert(variables, cfg, str(tmp_path / "back"))
    from clipjax.convert.common import read_state_dict

    _assert_bitwise(read_state_dict(str(tmp_path / "back")), read_state_dict(str(tmp_path / "hf")))
    back = transformers.BertModel.from_pretrained(str(tmp_path / "back")).eval()
    _assert_bitwise(_sd(back), _sd(hf))


def _cross_bert(encoder_width):
    """BertModel with cross-attention whose key/value read `encoder_width` inputs (the BLIP /
    Tag2Text "med" layout) and bidirectional self-attention.

    transformers 5 only builds cross-attention layers with is_decoder=True (which also makes
    its self-attention causal) and sizes their key/value by hidden_size. So: build it as a
    decoder, swap in key/value Linear(encoder_width, hidden), then turn the model-level
    causal mask off (layers keep using cross-attention: they read is_decoder at build time).
    """
    hf = _bert(is_decoder=True, add_cross_attention=True)
    torch.manual_seed(1)
    for layer in hf.encoder.layer:
        xa = layer.crossattention.self
        xa.key = torch.nn.Linear(encoder_width, 64)
        xa.value = torch.nn.Linear(encoder_width, 64)
        layer.attention.self.is_causal = False
    hf.config.is_decoder = False
    hf.config.use_cache = False
    return hf.eval()


def test_bert_cross_attention_parity():
    enc_w = 48
    hf = _cross_bert(enc_w)
    cfg = bert_config_from_hf(hf.config.to_dict())
    assert cfg.cross_attention
    sd = _sd(hf)
    variables = bert_from_state_dict(sd, cfg)  # encoder width read from the checkpoint
    assert variables["params"]["transformer"]["layers"]["cross_attn"]["key"]["kernel"].shape == (2, enc_w, 4, 16)
    ids, mask, types = _text_inputs(seed=1)
    rng = np.random.default_rng(2)
    enc = rng.standard_normal((2, 9, enc_w)).astype(np.float32)
    enc_mask = np.ones((2, 9), np.int64)
    enc_mask[0, 6:] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types),
                 encoder_hidden_states=torch.tensor(enc), encoder_attention_mask=torch.tensor(enc_mask))
        ref_text = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types))
    model = BertEncoder(cfg, encoder_width=enc_w)
    out = model.apply(variables, jnp.asarray(ids), attention_mask=jnp.asarray(mask), token_type_ids=jnp.asarray(types),
                      encoder_hidden_states=jnp.asarray(enc), encoder_attention_mask=jnp.asarray(enc_mask))
    _report("BertModel+cross-attention last_hidden_state", out["tokens"], ref.last_hidden_state.numpy())
    _report("BertModel+cross-attention pooler_output", out["pooled"], ref.pooler_output.numpy())
    # without encoder states both skip the cross-attention sub-layers
    out_text = model.apply(variables, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                           token_type_ids=jnp.asarray(types))
    _report("BertModel+cross-attention, text only", out_text["tokens"], ref_text.last_hidden_state.numpy())
    # the cross-attention really contributes (and, by the parity above, HF self-attention is bidirectional)
    assert np.abs(ref.last_hidden_state.numpy() - ref_text.last_hidden_state.numpy()).max() > 1e-2
    # init without encoder states sizes the key/value kernels by encoder_width
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(ids)))
    assert shapes["params"]["transformer"]["layers"]["cross_attn"]["value"]["kernel"].value.shape == (2, enc_w, 4, 16)
    _assert_bitwise(bert_to_state_dict(variables, cfg), sd)


def test_distilbert_parity_and_round_trip():
    torch.manual_seed(0)
    hc = transformers.DistilBertConfig(vocab_size=1000, max_position_embeddings=64, dim=64, n_layers=2, n_heads=4,
                                       hidden_dim=128, attn_implementation="eager")
    hf = transformers.DistilBertModel(hc).eval()
    cfg = bert_config_from_hf(hf.config.to_dict())
    assert cfg.kind == "distilbert" and cfg.pool == "cls" and cfg.ln_eps == 1e-12
    sd = _sd(hf)
    variables = bert_from_state_dict(sd, cfg)
    assert "type_embed" not in variables["params"] and "pooler" not in variables["params"]
    ids, mask, _ = _text_inputs(seed=3)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    out = BertEncoder(cfg).apply(variables, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    _report("DistilBertModel last_hidden_state", out["tokens"], ref)
    _report("DistilBertModel CLS", out["pooled"], ref[:, 0])
    _assert_bitwise(bert_to_state_dict(variables, cfg), sd)
    assert bert_config_from_hf(bert_config_to_hf(cfg)) == cfg
    with pytest.raises(ValueError):
        BertEncoder(cfg).apply(variables, jnp.asarray(ids), token_type_ids=jnp.zeros_like(jnp.asarray(ids)))


def test_bert_nested_prefix_in_clip():
    """The same rules place a BertModel under "text_model." into CLIP's "params/text"."""
    from clipjax.convert.common import expected_shapes
    from clipjax.models.clip import CLIP
    from clipjax.models.config import CLIPConfig, VisionConfig

    hf = _bert()
    tcfg = bert_config_from_hf(hf.config.to_dict())
    ccfg = CLIPConfig(embed_dim=16, text=tcfg, vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=1,
                                                                   heads=4, mlp_dim=128))
    sd = {f"text_model.{k}": v for k, v in _sd(hf).items()}
    rules, constants = bert_rules(tcfg, "params/text", "text_model.")
    full = expected_shapes(CLIP(ccfg), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32))
    text_shapes = {k: v for k, v in full.items() if k.startswith("params/text/") and "/proj/" not in k}
    variables = torch_to_variables(sd, rules, text_shapes, constants)
    _assert_bitwise(variables_to_torch(variables, rules, constants), sd)
    ids, mask, types = _text_inputs()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).pooler_output.numpy()
    init = CLIP(ccfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 8), jnp.int32))
    init = jax.tree.map(np.asarray, nn.unbox(init))
    init["params"]["text"].update(variables["params"]["text"])
    emb = CLIP(ccfg).apply(init, jnp.asarray(ids), jnp.asarray(mask), method=CLIP.encode_text)
    expect = ref @ init["params"]["text"]["proj"]["kernel"]
    _report("CLIP.encode_text with a BERT tower", emb, expect)


def test_bert_checkpoint_errors():
    hf = _bert()
    cfg = bert_config_from_hf(hf.config.to_dict())
    sd = _sd(hf)
    bad = dict(sd)
    bad["encoder.layer.1.attention.self.query.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        bert_from_state_dict(bad, cfg)
    missing = {k: v for k, v in sd.items() if k != "embeddings.token_type_embeddings.weight"}
    with pytest.raises(CheckpointError, match="missing keys"):
        bert_from_state_dict(missing, cfg)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        bert_from_state_dict({**sd, "cls.predictions.bias": np.zeros(1000, np.float32)}, cfg)
    # old files' persisted buffers are ignored
    legacy = {**sd, "embeddings.position_ids": np.arange(64)[None], "embeddings.token_type_ids": np.zeros((1, 64))}
    bert_from_state_dict(legacy, cfg)


# ----------------------------------------------------------------------------- ViT


def _vit(pooler=True):
    torch.manual_seed(0)
    hc = transformers.ViTConfig(image_size=32, patch_size=8, attn_implementation="eager", **SMALL)
    return transformers.ViTModel(hc, add_pooling_layer=pooler).eval()


@pytest.mark.parametrize("size", [(32, 32), (48, 40)])
def test_vit_parity(size):
    hf = _vit()
    cfg = vit_config_from_hf(hf.config.to_dict(), pooler=True)
    assert cfg.ln_eps == 1e-12 and cfg.act == "gelu" and not cfg.ln_pre and cfg.patch_bias
    variables = vit_from_state_dict(_sd(hf), cfg)  # in-memory (native) names
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, *size)).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=torch.tensor(x), interpolate_pos_encoding=size != (32, 32))
    model = VisionTransformer(cfg)
    out = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert out["tokens"].shape == (2, 1 + (size[0] // 8) * (size[1] // 8), 64)
    # ln_post over every token (HF's last_hidden_state); VisionTransformer.final_norm creates
    # its LayerNorm inside a module method, which flax refuses outside setup/compact.
    last = nn.LayerNorm(epsilon=cfg.ln_eps).apply({"params": variables["params"]["ln_post"]}, out["tokens"])
    _report(f"ViTModel last_hidden_state {size}", last, ref.last_hidden_state.numpy())
    _report(f"ViTModel pooler_output {size}", out["pooled"], ref.pooler_output.numpy())


def test_vit_round_trips(tmp_path):
    from clipjax.convert.common import read_state_dict

    for pooler in (True, False):
        hf = _vit(pooler)
        cfg = vit_config_from_hf(hf.config.to_dict(), pooler=pooler)
        native = _sd(hf)
        variables = vit_from_state_dict(native, cfg)
        assert variables["params"]["cls"].shape == (64,) and variables["params"]["pos_embed"].shape == (17, 64)
        _assert_bitwise(vit_to_state_dict(variables, cfg, native=True), native)
        # file layout: what save_pretrained writes
        d = tmp_path / f"hf{pooler}"
        hf.save_pretrained(d)
        on_disk = read_state_dict(str(d))
        assert "encoder.layer.0.attention.attention.query.weight" in on_disk
        cfg2, v2 = load_hf_vit(str(d))
        assert cfg2 == cfg
        _assert_bitwise(flatten_variables(v2), flatten_variables(variables))
        _assert_bitwise(vit_to_state_dict(v2, cfg), on_disk)
        save_hf_vit(v2, cfg, str(tmp_path / f"back{pooler}"))
        _assert_bitwise(read_state_dict(str(tmp_path / f"back{pooler}")), on_disk)
        back = transformers.ViTModel.from_pretrained(str(tmp_path / f"back{pooler}"), add_pooling_layer=pooler)
        _assert_bitwise(_sd(back), native)
        assert vit_config_from_hf(vit_config_to_hf(cfg), pooler=pooler) == cfg


def test_vit_checkpoint_errors():
    hf = _vit()
    cfg = vit_config_from_hf(hf.config.to_dict())
    sd = _sd(hf)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        vit_from_state_dict({**sd, "embeddings.cls_token": np.zeros((1, 64), np.float32)}, cfg)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        vit_from_state_dict({**sd, "layers.0.mlp.fc1.weight": np.zeros((64, 64), np.float32)}, cfg)
    with pytest.raises(CheckpointError, match="missing keys"):
        vit_from_state_dict({k: v for k, v in sd.items() if not k.startswith("pooler.")}, cfg)
    other = vit_config_from_hf({**hf.config.to_dict(), "image_size": 48})  # 36 patches, not 16
    with pytest.raises(CheckpointError, match="shape mismatch"):
        vit_from_state_dict(sd, other)


def test_rule_torch_shape_restored():
    sd = {"a": np.arange(6, dtype=np.float32).reshape(1, 1, 6)}
    rules = [Rule("params/a", "a", torch_shape=(1, 1, 6))]
    v = torch_to_variables(sd, rules, {"params/a": (6,)})
    assert v["params"]["a"].shape == (6,)
    _assert_bitwise(variables_to_torch(v, rules), sd)
    with pytest.raises(CheckpointError):
        torch_to_variables({"a": np.zeros((6,), np.float32)}, rules, {"params/a": (6,)})
