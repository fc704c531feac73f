"""The OpenAI / open_clip state-dict layout <-> clipjax.

Covers OpenAI's `clip/model.py` CLIP: a ViT (`VisionTransformer`) or `ModifiedResNet` image
tower and the causal text transformer; open_clip's CLIP class for these towers uses the same
keys. Key map:

  visual.conv1.weight / class_embedding / positional_embedding / ln_pre / ln_post   (ViT)
  visual.transformer.resblocks.{i}.attn.in_proj_weight|bias (fused q|k|v rows), .attn.out_proj,
      .ln_1, .mlp.c_fc, .mlp.c_proj, .ln_2                                           (ViT)
  visual.proj (width, embed) — already (in, out)                                     (ViT)
  visual.conv1/bn1/conv2/bn2/conv3/bn3, visual.layerN.M.{conv,bn}{1,2,3},
      visual.layerN.M.downsample.0 (conv) / .1 (BN), visual.attnpool.positional_embedding,
      visual.attnpool.{q,k,v,c}_proj                                                 (ResNet)
  token_embedding.weight, positional_embedding, transformer.resblocks.{i}..., ln_final,
  text_projection (width, embed) — already (in, out), logit_scale

BatchNorm running_mean / running_var go to the "batch_stats" collection; num_batches_tracked
has no clipjax counterpart: ignored on load, written as int64 0 on save.

`config_from_state_dict` infers the shapes as OpenAI's `build_model` does (heads = width // 64
for the text and ViT towers, width * 32 // 64 for the ResNet attention pool; QuickGELU;
pooling at argmax(ids)). open_clip models whose head count or activation differ from OpenAI's
rule (e.g. ViT-H/14: 16 heads of 80, exact GELU) cannot be told from the weights alone: pass
`cfg=` to `load_openai`. `save_openai` also writes the full clipjax config to a
`<file>.clipjax.json` sidecar, which `load_openai(file)` prefers to inference.

TorchScript archives (the `.pt` files OpenAI publishes): reading one means `torch.jit.load`,
which PyTorch itself refuses under `weights_only=True` because it is not a restricted
unpickler. clipjax therefore refuses them by default with a clear error; pass
`allow_torchscript=True` (or set CLIPJAX_ALLOW_TORCHSCRIPT=1) for files you trust, or re-save
the state dict once with `torch.save(torch.jit.load(f, map_location="cpu").state_dict(), out)`.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from typing import Optional, Union

import numpy as np

from clipjax.variables import CheckpointError
from clipjax.convert.common import Constant, Rule, block_rules, expected_shapes, linear_rules, norm_rules, read_state_dict, to_numpy, write_state_dict, torch_to_variables, variables_to_torch
from clipjax.models.config import CLIPConfig, TextConfig, VisionConfig
from clipjax.models.clip import CLIP

OPENAI_BLOCK = dict(
    query="attn.in_proj_weight|attn.in_proj_bias#0/3",
    key="attn.in_proj_weight|attn.in_proj_bias#1/3",
    value="attn.in_proj_weight|attn.in_proj_bias#2/3",
    out="attn.out_proj",
    ln1="ln_1",
    ln2="ln_2",
    fc1="mlp.c_fc",
    fc2="mlp.c_proj",
)

# Scalars some OpenAI checkpoints (the TorchScript ones) carry beside the weights; build_model
# deletes them, and so do we.
SCALAR_KEYS = ("input_resolution", "context_length", "vocab_size")

ENV_ALLOW_TORCHSCRIPT = "CLIPJAX_ALLOW_TORCHSCRIPT"
SIDECAR_SUFFIX = ".clipjax.json"


def _num_batches_tracked():
    return np.zeros((), np.int64)


def _conv_bn(jconv: str, jbn: str, tconv: str, tbn: str) -> tuple[list[Rule], list[Constant]]:
    r = [
        Rule(f"params/{jconv}/kernel", f"{tconv}.weight", "conv"),
        Rule(f"params/{jbn}/scale", f"{tbn}.weight"),
        Rule(f"params/{jbn}/bias", f"{tbn}.bias"),
        Rule(f"batch_stats/{jbn}/mean", f"{tbn}.running_mean"),
        Rule(f"batch_stats/{jbn}/var", f"{tbn}.running_var"),
    ]
    return r, [Constant(f"{tbn}.num_batches_tracked", _num_batches_tracked)]


def _resnet_rules(cfg: VisionConfig) -> tuple[list[Rule], list[Constant]]:
    rules: list[Rule] = []
    consts: list[Constant] = []

    def add(pair):
        rules.extend(pair[0])
        consts.extend(pair[1])

    for n in (1, 2, 3):
        add(_conv_bn(f"visual/conv{n}", f"visual/bn{n}", f"visual.conv{n}", f"visual.bn{n}"))
    inplanes = cfg.resnet_width
    for s, depth in enumerate(cfg.resnet_layers):
        planes = cfg.resnet_width * 2**s
        stride = 1 if s == 0 else 2
        for m in range(depth):
            j, t = f"visual/layer{s + 1}_{m}", f"visual.layer{s + 1}.{m}"
            for n in (1, 2, 3):
                add(_conv_bn(f"{j}/conv{n}", f"{j}/bn{n}", f"{t}.conv{n}", f"{t}.bn{n}"))
            if m == 0 and (stride > 1 or inplanes != planes * 4):
                add(_conv_bn(f"{j}/downsample_conv", f"{j}/downsample_bn", f"{t}.downsample.0", f"{t}.downsample.1"))
            inplanes = planes * 4
    a, ta = "params/visual/attnpool", "visual.attnpool"
    rules.append(Rule(f"{a}/pos_embed", f"{ta}.positional_embedding"))
    for p in ("q_proj", "k_proj", "v_proj"):
        rules += linear_rules(f"{a}/{p}", f"{ta}.{p}")
    rules += linear_rules(f"{a}/c_proj", f"{ta}.c_proj", n_in=2)
    return rules, consts


def _vit_rules() -> list[Rule]:
    v = "params/visual"
    return [
        Rule(f"{v}/patch_embed/kernel", "visual.conv1.weight", "conv"),
        Rule(f"{v}/cls", "visual.class_embedding"),
        Rule(f"{v}/pos_embed", "visual.positional_embedding"),
        *norm_rules(f"{v}/ln_pre", "visual.ln_pre"),
        *block_rules(f"{v}/transformer/layers", "visual.transformer.resblocks.{i}", OPENAI_BLOCK),
        *norm_rules(f"{v}/ln_post", "visual.ln_post"),
        Rule(f"{v}/proj/kernel", "visual.proj"),  # (width, embed): already in -> out
    ]


def _text_rules() -> list[Rule]:
    t = "params/text"
    return [
        Rule(f"{t}/token_embed/embedding", "token_embedding.weight"),
        Rule(f"{t}/pos_embed", "positional_embedding"),
        *block_rules(f"{t}/transformer/layers", "transformer.resblocks.{i}", OPENAI_BLOCK),
        *norm_rules(f"{t}/ln_final", "ln_final"),
        Rule(f"{t}/proj/kernel", "text_projection"),  # (width, embed): already in -> out
    ]


def rules(cfg: CLIPConfig) -> tuple[list[Rule], list[Constant]]:
    """(rules, constants) tying every clipjax variable of `cfg` to its OpenAI key."""
    if cfg.text.kind != "causal":
        raise CheckpointError(f"the OpenAI layout holds a causal text tower; this model's is {cfg.text.kind!r}")
    if cfg.vision.kind == "vit":
        if cfg.vision.patch_bias or not cfg.vision.ln_pre or cfg.vision.pooler:
            raise CheckpointError("the OpenAI layout's ViT has ln_pre, no patch bias and no pooler; "
                                  "this model's vision tower differs")
        r, consts = _vit_rules(), []
    elif cfg.vision.kind == "resnet":
        r, consts = _resnet_rules(cfg.vision)
    else:
        raise CheckpointError(f"unknown vision tower kind {cfg.vision.kind!r}")
    if cfg.logit_bias_init is not None:
        raise CheckpointError("the OpenAI layout has no logit_bias (sigmoid-loss models are not OpenAI CLIP)")
    return r + _text_rules() + [Rule("params/logit_scale", "logit_scale")], consts


# ----------------------------------------------------------------------------- config


def _need(sd: dict, key: str):
    if key not in sd:
        raise CheckpointError(f"not an OpenAI/open_clip CLIP state dict: it lacks {key!r}")
    return sd[key]


def _count(sd: dict, prefix: str) -> int:
    """Number of blocks `prefix`N.… (N = 0, 1, ...). A gap means whole blocks are missing:
    the file must not load as a shallower model, so it is refused with every missing key
    (the keys of the blocks present, at the missing indices)."""
    idx = set()
    for k in sd:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".")[0]
            if head.isdigit():
                idx.add(int(head))
    if not idx:
        return 0
    gaps = sorted(set(range(max(idx) + 1)) - idx)
    if gaps:
        first = min(idx)
        suffixes = sorted(k[len(f"{prefix}{first}."):] for k in sd if k.startswith(f"{prefix}{first}."))
        missing = [f"{prefix}{i}.{s}" for i in gaps for s in suffixes]
        raise CheckpointError(f"blocks {gaps} of {prefix}0..{max(idx)} are missing from the state dict, so it would "
                              f"load as a shallower model; refusing. Missing keys ({len(missing)}): "
                              + ", ".join(missing))
    return len(idx)


def config_from_state_dict(sd: dict) -> CLIPConfig:
    """Model shapes from the weights, as OpenAI's `build_model` infers them."""
    text_w = int(_need(sd, "ln_final.weight").shape[0])
    text_layers = _count(sd, "transformer.resblocks.")
    if text_layers == 0:
        raise CheckpointError("not an OpenAI/open_clip CLIP state dict: no transformer.resblocks.* keys")
    text = TextConfig(
        kind="causal",
        vocab_size=int(_need(sd, "token_embedding.weight").shape[0]),
        context_length=int(_need(sd, "positional_embedding").shape[0]),
        width=text_w,
        layers=text_layers,
        heads=max(1, text_w // 64),
        mlp_dim=int(_need(sd, "transformer.resblocks.0.mlp.c_fc.weight").shape[0]),
        act="quick_gelu",
        ln_eps=1e-5,
        eos_token_id=None,  # OpenAI pools at argmax(ids)
    )
    embed_dim = int(_need(sd, "text_projection").shape[1])
    if "visual.proj" in sd:  # ViT
        conv = _need(sd, "visual.conv1.weight")
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        n_pos = int(_need(sd, "visual.positional_embedding").shape[0])
        grid = round((n_pos - 1) ** 0.5)
        if grid * grid + 1 != n_pos:
            raise CheckpointError(f"visual.positional_embedding has {n_pos} rows, not a square grid + 1")
        layers = _count(sd, "visual.transformer.resblocks.")
        vision = VisionConfig(
            kind="vit", image_size=patch * grid, patch_size=patch, width=width, layers=layers,
            heads=max(1, width // 64),
            mlp_dim=int(_need(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight").shape[0]),
            act="quick_gelu", ln_eps=1e-5, ln_pre=True, patch_bias=False, pooler=False,
        )
    elif "visual.attnpool.positional_embedding" in sd or "visual.layer1.0.conv1.weight" in sd:  # ModifiedResNet
        depths = tuple(_count(sd, f"visual.layer{b}.") for b in (1, 2, 3, 4))
        width = int(_need(sd, "visual.layer1.0.conv1.weight").shape[0])
        n_pos = int(_need(sd, "visual.attnpool.positional_embedding").shape[0])
        grid = round((n_pos - 1) ** 0.5)
        if grid * grid + 1 != n_pos:
            raise CheckpointError(f"visual.attnpool.positional_embedding has {n_pos} rows, not a square grid + 1")
        vision = VisionConfig(kind="resnet", image_size=grid * 32, resnet_layers=depths, resnet_width=width,
                              heads=width * 32 // 64)
    else:
        raise CheckpointError("not an OpenAI/open_clip CLIP state dict: neither visual.proj (ViT) nor "
                              "visual.attnpool.* (ModifiedResNet) keys found")
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text)


# ----------------------------------------------------------------------------- IO


def is_torchscript_archive(path: str) -> bool:
    """A TorchScript zip (torch.jit.save) rather than a torch.save state dict."""
    if not (os.path.isfile(path) and zipfile.is_zipfile(path)):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _read_torchscript(path: str) -> dict[str, np.ndarray]:
    import torch

    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"Cannot read TorchScript archive {path}: {type(e).__name__}: {e}") from None
    return {k: to_numpy(v) for k, v in module.state_dict().items()}


def read_openai_state_dict(path: str, allow_torchscript: Optional[bool] = None) -> dict[str, np.ndarray]:
    """Read an OpenAI-layout weight file (.pt/.pth/.bin via torch.load(weights_only=True), or
    .safetensors). TorchScript archives only with `allow_torchscript` (see the module doc)."""
    if allow_torchscript is None:
        allow_torchscript = os.environ.get(ENV_ALLOW_TORCHSCRIPT, "") not in ("", "0", "false", "False")
    if is_torchscript_archive(path):
        if not allow_torchscript:
            raise CheckpointError(
                f"{path} is a TorchScript archive (OpenAI's published .pt files are). Reading one runs "
                f"torch.jit.load, which is not restricted the way torch.load(weights_only=True) is, so "
                f"clipjax does not do it unasked. If you trust the file, set {ENV_ALLOW_TORCHSCRIPT}=1 "
                f"(or call clipjax.convert.openai_clip.load_openai(path, allow_torchscript=True)), or re-save "
                f"its weights once with "
                f"torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'weights.pt')")
        return _read_torchscript(path)
    return read_state_dict(path)


def _as_numpy_sd(sd: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if not hasattr(v, "shape"):
            if k in SCALAR_KEYS:  # plain ints in hand-made dicts
                continue
            raise CheckpointError(f"state dict entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = to_numpy(v)
    return out


def expected_clip_shapes(cfg: CLIPConfig) -> dict[str, tuple]:
    import jax.numpy as jnp

    s = cfg.vision.image_size
    return expected_shapes(CLIP(cfg), jnp.zeros((1, s, s, 3)), jnp.zeros((1, cfg.text.context_length), jnp.int32))


class GuessedArchitectureWarning(UserWarning):
    """An OpenAI-layout checkpoint's activation and head counts were guessed (OpenAI's rules)."""


def guess_warning(what: str, cfg: CLIPConfig) -> str:
    v, t = cfg.vision, cfg.text
    vision = f"vision {v.heads} heads of {v.width // max(v.heads, 1)}" if v.kind == "vit" else f"attention pool {v.heads} heads"
    return (f"{what}: architecture GUESSED by OpenAI's rules: QuickGELU activation, {vision}, text {t.heads} heads "
            f"of {t.width // max(t.heads, 1)}. open_clip's own models (most LAION / DataComp checkpoints) use exact "
            "GELU, and ViT-H/g/bigG other head widths: if this is one, the embeddings will be wrong. Name the model: "
            "convert.py --arch NAME / clipjax.load(path, arch=NAME), e.g. ViT-B-32 or ViT-B-32-quickgelu.")


def config_sidecar(path: str) -> str:
    """Where `save_openai` records the full clipjax config beside an OpenAI-layout file."""
    return os.fspath(path) + SIDECAR_SUFFIX


def load_openai(path_or_sd: Union[str, os.PathLike, dict], cfg: Optional[CLIPConfig] = None,
                allow_torchscript: Optional[bool] = None, arch: Optional[str] = None) -> tuple[CLIPConfig, dict]:
    """OpenAI / open_clip state dict (a file path or a dict of tensors/arrays) ->
    (config, variables); variables = {"params": ..., ["batch_stats": ...]} as float32 numpy.

    The config is, in order: `cfg` if given; `arch`, an open_clip model name (ViT-B-32,
    ViT-H-14-quickgelu, RN50, ...: clipjax.convert.open_clip_archs), whose heads and activation
    are applied to the shapes read from the weights (checked against that model); for a path,
    the `<path>.clipjax.json` sidecar that `save_openai` writes, if present; else inferred from
    the shapes as OpenAI's build_model does (QuickGELU, heads = width // 64), with a warning
    naming that guess and `arch`. Every key, shape and variable is checked (CheckpointError)."""
    if isinstance(path_or_sd, (str, os.PathLike)):
        path = os.fspath(path_or_sd)
        what = f"OpenAI CLIP checkpoint {path}"
        sd = read_openai_state_dict(path, allow_torchscript)
        side = config_sidecar(path)
        if cfg is None and arch is None and os.path.exists(side):
            try:
                with open(side) as f:
                    cfg = CLIPConfig.from_dict(json.load(f))
            except (OSError, ValueError, TypeError) as e:
                raise CheckpointError(f"Cannot read the clipjax config {side}: {type(e).__name__}: {e}") from None
            what += f" (config from {side})"
    elif isinstance(path_or_sd, dict) or hasattr(path_or_sd, "items"):
        what = "OpenAI CLIP state dict"
        sd = path_or_sd
    else:
        raise TypeError(f"load_openai takes a path or a state dict, not {type(path_or_sd).__name__}")
    sd = _as_numpy_sd(sd)
    for k in SCALAR_KEYS:
        sd.pop(k, None)
    if cfg is None:
        cfg = config_from_state_dict(sd)
        if arch is not None:
            from clipjax.convert.open_clip_archs import arch_config

            cfg = arch_config(arch, cfg)
        else:
            warnings.warn(guess_warning(what, cfg), GuessedArchitectureWarning, stacklevel=2)
    r, consts = rules(cfg)
    variables = torch_to_variables(sd, r, expected_clip_shapes(cfg), consts, what=what, dtype=np.float32)
    return cfg, variables


def to_openai_state_dict(variables: dict, cfg: CLIPConfig) -> dict[str, np.ndarray]:
    """clipjax variables -> OpenAI-layout state dict (numpy; dtypes kept as stored)."""
    r, consts = rules(cfg)
    return variables_to_torch(variables, r, consts)


def save_openai(variables: dict, cfg: CLIPConfig, path: str, write_config: bool = True) -> None:
    """Write an OpenAI-layout state dict: safetensors for *.safetensors, else torch.save (.pt).
    OpenAI's `build_model(torch.load(path))` and open_clip's loaders read the result.

    The layout cannot express head counts or the activation, and OpenAI's loader infers them
    by rule (width // 64, QuickGELU); with `write_config` the full clipjax config also goes to
    `<path>.clipjax.json`, which `load_openai(path)` prefers, so models outside that rule
    (e.g. the tiny presets) come back exactly."""
    write_state_dict(to_openai_state_dict(variables, cfg), path)
    side = config_sidecar(path)
    if write_config:
        with open(side, "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
    elif os.path.exists(side):
        os.remove(side)  # a stale config would override the weights' own shapes on load
