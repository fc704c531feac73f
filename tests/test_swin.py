"""Swin Transformer tower against transformers' SwinModel (random weights from tiny configs)
and, through the Microsoft layout recognize-anything uses, against timm's SwinTransformer
(timm's own `checkpoint_filter_fn` converts that layout); bitwise conversion round trips."""

import sys

import numpy as np
import pytest
import jax
import jax.numpy as jnp

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables  # noqa: E402
from clipjax.convert.common import to_numpy
from clipjax.convert.swin import (  # noqa: E402
    detect_layout,
    swin_config_from_hf,
    swin_config_to_hf,
    swin_from_state_dict,
    swin_rules,
    swin_to_state_dict,
)
from clipjax.models.swin import SWIN_PRESETS, SwinConfig, SwinTransformer, swin_preset  # noqa: E402

TOL = 1e-4

# name: (image_size, window, depths, heads, input size). Stage grids / windows / shifts:
HF_CASES = {
    # 14x14 (window 7, shift 3, 2x2 windows) -> 7x7 (= window: no shift)
    "w7_shift_then_equal": (56, 7, (2, 2), (2, 4), 56),
    # 8x8 (window 4, shift 2) -> 4x4 (= window: no shift)
    "w4_shift_then_equal": (32, 4, (2, 2), (2, 4), 32),
    # 9x9 (padded to 12, shift 2) -> odd merge (padded to 10) -> 5x5 (padded to 8, shift 2)
    "w4_padding_odd_merge": (36, 4, (2, 2), (2, 4), 36),
}


def _report(name, a, b, tol=TOL):
    d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    print(f"{name}: max abs diff {d:.3g}")
    assert d <= tol, f"{name}: max abs diff {d}"
    return d


def _assert_bitwise(a: dict, b: dict):
    a, b = flatten_variables(a), flatten_variables(b)  # nested variables or flat state dicts
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and x.dtype == y.dtype, (k, x.shape, y.shape, x.dtype, y.dtype)
        assert np.array_equal(np.ascontiguousarray(x).view(np.uint8), np.ascontiguousarray(y).view(np.uint8)), k


def _hf_swin(image, window, depths, heads, seed=0):
    torch.manual_seed(seed)
    hc = transformers.SwinConfig(image_size=image, patch_size=4, embed_dim=16, depths=list(depths),
                                 num_heads=list(heads), window_size=window, attn_implementation="eager")
    model = transformers.SwinModel(hc).eval()
    with torch.no_grad():  # transformers zero-initialises the bias tables and LayerNorms: randomise all
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return model


def _random_variables(cfg, seed=0):
    """Model-initialised variables with every leaf replaced by random values (float32)."""
    shapes = jax.eval_shape(lambda: SwinTransformer(cfg).init(
        jax.random.PRNGKey(0), jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.in_chans))))
    rng = np.random.default_rng(seed)
    flat = {}
    for k, v in flatten_variables(jax.tree.map(lambda x: x, shapes["params"], is_leaf=lambda x: hasattr(x, "value"))).items():
        v = getattr(v, "value", v)
        x = rng.standard_normal(v.shape).astype(np.float32) * 0.2
        flat["params/" + k] = (x + 1) if k.endswith("scale") else x
    return unflatten_variables(flat)


def _images(size, b=2, seed=0):
    return np.random.default_rng(seed).standard_normal((b, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("name", list(HF_CASES))
def test_transformers_parity_and_round_trip(name, tmp_path):
    image, window, depths, heads, size = HF_CASES[name]
    hf = _hf_swin(image, window, depths, heads)
    cfg = swin_config_from_hf(hf.config.to_dict())
    assert cfg == SwinConfig(image_size=image, embed_dim=16, depths=depths, num_heads=heads, window_size=window)
    assert swin_config_from_hf(swin_config_to_hf(cfg)) == cfg
    sd = {k: to_numpy(v) for k, v in hf.state_dict().items()}
    assert detect_layout(sd) == "hf_native"
    variables = swin_from_state_dict(sd, cfg)

    x = _images(size)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), output_hidden_states=True)
    out = jax.jit(lambda v, im: SwinTransformer(cfg).apply(v, im, return_hidden=True))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    n = (cfg.stage_resolution(cfg.num_stages - 1)) ** 2
    assert out["tokens"].shape == (2, 1 + n, cfg.width) and out["pooled"].shape == (2, cfg.width)
    _report(f"{name} last_hidden_state", out["tokens"][:, 1:], ref.last_hidden_state.numpy())
    _report(f"{name} pooler_output", out["pooled"], ref.pooler_output.numpy())
    np.testing.assert_array_equal(out["tokens"][:, 0], out["pooled"])
    assert len(out["hidden"]) == len(ref.hidden_states) == len(depths) + 1
    for i, (a, b) in enumerate(zip(out["hidden"], ref.hidden_states)):
        _report(f"{name} hidden_states[{i}]", a, b.numpy())

    # round trips: in-memory layout, the file layout save_pretrained writes, the Microsoft layout
    _assert_bitwise(swin_to_state_dict(variables, cfg, "hf_native"), sd)
    hf.save_pretrained(tmp_path)
    from safetensors.numpy import load_file

    file_sd = load_file(str(tmp_path / "model.safetensors"))
    assert detect_layout(file_sd) == "hf"
    _assert_bitwise(swin_to_state_dict(variables, cfg, "hf"), file_sd)
    _assert_bitwise(swin_from_state_dict(file_sd, cfg), variables)
    if name == "w4_padding_odd_merge":  # the Microsoft code pads nothing
        with pytest.raises(CheckpointError, match="pads nothing"):
            swin_to_state_dict(variables, cfg, "original")
        return
    orig = swin_to_state_dict(variables, cfg, "original")
    assert all(k.startswith("visual_encoder.") for k in orig)
    assert detect_layout(orig, "visual_encoder.") == "original"
    back = swin_from_state_dict(orig, cfg)  # layout and prefix detected
    _assert_bitwise(back, variables)
    _assert_bitwise(swin_to_state_dict(back, cfg, "original"), orig)
    # a whole RAM checkpoint: other modules' keys are outside the prefix and not read
    _assert_bitwise(swin_from_state_dict({**orig, "label_embed": np.zeros(3)}, cfg, "original"), variables)


# ----------------------------------------------------------------------------- timm


def _timm_swin():
    """timm.models.swin_transformer; timm imports torchvision (datasets, transforms), which
    cannot import beside this torch, so torchvision_stub's stand-in is registered for the
    import only (plus the submodules timm.data touches)."""
    try:
        import timm.models.swin_transformer as ts

        return ts
    except ImportError:
        for k in [k for k in sys.modules if k == "timm" or k.startswith("timm.")]:
            del sys.modules[k]
    import torchvision_stub

    if hasattr(torchvision_stub, "import_timm"):  # the shared helper, where this checkout has it
        try:
            torchvision_stub.import_timm()
            import timm.models.swin_transformer as ts

            return ts
        except ImportError as e:
            pytest.skip(f"timm does not import here: {e}")
    names = tuple(torchvision_stub._NAMES) + ("torchvision.datasets", "torchvision.transforms.v2", "torchvision.io",
                                               "torchvision.models", "torchvision.utils")
    for name in names:
        sys.modules[name] = torchvision_stub._StubModule(name)
    for name in names:
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        import timm.models.swin_transformer as ts
    except ImportError as e:
        pytest.skip(f"timm does not import here: {e}")
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return ts


TIMM_CASES = {
    # 8x8 (window 4, shift 2) -> 4x4 (= window) -> 2x2 (< window: window 2, 3x3 bias table)
    "w4_three_stages_below_window": (32, 4, (2, 2, 2), (2, 4, 8)),
    # 14x14 (window 7, shift 3) -> 7x7 (= window)
    "w7_shift_then_equal": (56, 7, (2, 2), (2, 4)),
}


@pytest.mark.parametrize("name", list(TIMM_CASES))
def test_original_layout_against_timm(name):
    ts = _timm_swin()
    image, window, depths, heads = TIMM_CASES[name]
    cfg = SwinConfig(image_size=image, embed_dim=16, depths=depths, num_heads=heads, window_size=window)
    variables = _random_variables(cfg, seed=1)
    sd = swin_to_state_dict(variables, cfg, "original", torch_prefix="")
    _assert_bitwise(swin_from_state_dict(sd, cfg, "original", torch_prefix=""), variables)

    torch.manual_seed(0)
    ref = ts.SwinTransformer(img_size=image, patch_size=4, embed_dim=16, depths=depths, num_heads=heads,
                             window_size=window, num_classes=0).eval()
    # the buffers the writer produces are the ones the Microsoft code (and timm) compute
    buffers = {k: to_numpy(v) for k, v in ref.named_buffers()}
    written = {k: v for k, v in sd.items() if k.endswith(("relative_position_index", "attn_mask"))}
    assert set(written) == set(buffers), sorted(set(written) ^ set(buffers))
    for k, v in written.items():
        assert v.dtype == (np.int64 if k.endswith("index") else np.float32), (k, v.dtype)
        np.testing.assert_array_equal(v, buffers[k], err_msg=k)

    tsd = ts.checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in sd.items()}, ref)
    ref.load_state_dict(tsd, strict=True)
    x = _images(image, seed=3)
    with torch.no_grad():
        feats = ref.forward_features(torch.from_numpy(x)).numpy()  # (B, H, W, C)
    out = jax.jit(SwinTransformer(cfg).apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    r = cfg.stage_resolution(cfg.num_stages - 1)
    _report(f"timm {name} forward_features", np.asarray(out["tokens"][:, 1:]).reshape(2, r, r, cfg.width), feats)
    _report(f"timm {name} mean token", out["pooled"], feats.mean(axis=(1, 2)))

    if name == "w4_three_stages_below_window":  # transformers cannot hold this config
        with pytest.raises(CheckpointError, match="below"):
            swin_rules(cfg, "hf")


# ----------------------------------------------------------------------------- errors, configs


def test_checkpoint_errors_and_bad_inputs():
    cfg = SwinConfig(image_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
    sd = swin_to_state_dict(_random_variables(cfg), cfg, "original")
    missing = dict(sd)
    del missing["visual_encoder.layers.1.blocks.0.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): visual_encoder.layers.1.blocks.0.attn.qkv.weight"):
        swin_from_state_dict(missing, cfg, "original")
    with pytest.raises(CheckpointError, match="unexpected keys.*visual_encoder.head.weight"):
        swin_from_state_dict({**sd, "visual_encoder.head.weight": np.zeros((3, 32), np.float32)}, cfg, "original")
    wrong = SwinConfig(image_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=2)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        swin_from_state_dict(sd, wrong, "original")
    # buffers are optional on read (RAM's loader deletes them)
    bare = {k: v for k, v in sd.items() if not k.endswith(("relative_position_index", "attn_mask"))}
    _assert_bitwise(swin_from_state_dict(bare, cfg, "original"), swin_from_state_dict(sd, cfg, "original"))

    model = SwinTransformer(cfg)
    variables = _random_variables(cfg)
    with pytest.raises(ValueError, match="relative position table"):  # 16 -> 4x4 then 2x2 < window
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="expected images"):
        jax.eval_shape(model.apply, variables, jnp.zeros((1, 3, 32, 32)))
    # another size with the same windows (12x12 grid, padded to 12; then 6x6 -> 8) runs
    assert jax.eval_shape(model.apply, variables, jnp.zeros((1, 48, 48, 3)))["tokens"].shape == (1, 1 + 36, 32)


def test_presets_config_dtype_and_remat():
    assert swin_preset("swin_b_384").width == 1024 and swin_preset("swin_l_384").width == 1536
    b384 = swin_preset("swin_b_384")
    assert [b384.stage_resolution(s) for s in range(4)] == [96, 48, 24, 12]
    assert [b384.stage_shift(s) for s in range(4)] == [6, 6, 6, 0] and b384.stage_window(3) == 12
    assert swin_preset("swin_l_224").window_size == 7 and swin_preset("swin_b_224").stage_window(3) == 7
    for name in SWIN_PRESETS:
        c = swin_preset(name)
        assert SwinConfig.from_dict(c.to_dict()) == c
        swin_rules(c, "hf")
        swin_rules(c, "original")
    with pytest.raises(ValueError):
        swin_preset("swin_t")

    cfg = SwinConfig(image_size=32, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4)
    variables = _random_variables(cfg)
    x = jnp.asarray(_images(32).transpose(0, 2, 3, 1))
    ref = jax.jit(SwinTransformer(cfg).apply)(variables, x)["tokens"]
    remat = SwinTransformer(cfg, remat_policy="full")
    np.testing.assert_allclose(jax.jit(remat.apply)(variables, x)["tokens"], ref, atol=1e-5)
    g = jax.jit(jax.grad(lambda v: jnp.sum(remat.apply(v, x)["pooled"] ** 2)))(variables)
    assert all(np.isfinite(np.asarray(t)).all() for t in jax.tree.leaves(g))
    bf16 = SwinTransformer(cfg, dtype="bfloat16")
    out = jax.jit(bf16.apply)(variables, x)["tokens"]
    assert out.dtype == jnp.bfloat16
    _report("bf16 vs fp32 tokens", out.astype(jnp.float32), ref, tol=0.25)
    # logical axis names on every parameter
    boxed = jax.eval_shape(SwinTransformer(cfg).init, jax.random.PRNGKey(0), x[:1])["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda t: hasattr(t, "names"))
    assert leaves and all(hasattr(t, "names") and len(t.names) == t.value.ndim for t in leaves)
