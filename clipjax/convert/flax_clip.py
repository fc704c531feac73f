"""transformers 4.x `FlaxCLIPModel` directories (config.json + flax_model.msgpack) <-> clipjax.

transformers v5 removed Flax, so a directory that `FlaxCLIPModel.save_pretrained` wrote has no
loader left there. This module reads and writes one with `flax.serialization` alone: no torch,
no transformers Flax code. transformers' config classes fill the defaults a config.json leaves
out, through `hf_clip.config_from_hf`, exactly as for a PyTorch CLIPModel directory.

The layout: `flax_model.msgpack` is `flax.serialization.to_bytes(params)` of the FlaxCLIPModule
parameter tree (no "params" level), e.g.

    text_model/encoder/layers/0/self_attn/q_proj/kernel   (in, out)   <- torch weight.T
    vision_model/embeddings/patch_embedding/kernel        HWIO        <- torch OIHW
    */layer_norm1/scale, */token_embedding/embedding, vision_model/embeddings/class_embedding,
    logit_scale (0-d)

i.e. the PyTorch CLIPModel's keys ("." -> "/", with kernel / scale / embedding for weight). A
model over transformers' shard size (10 GB) was written as flax_model-0000k-of-0000n.msgpack
plus flax_model.msgpack.index.json; both are read. Every rule here is derived from
`hf_clip.rules`, so the two layouts can't drift apart; kernels are stored in the same (in, out)
and HWIO orders clipjax uses, so every transform is a reshape and round trips are bitwise.
"""

from __future__ import annotations

import json
import os

import numpy as np

from clipjax.convert.common import WEIGHT_FILES, Rule, hf_model_type, torch_to_variables, variables_to_torch
from clipjax.convert.hf_clip import config_from_hf, config_to_hf, expected_clip_shapes, rules as hf_rules
from clipjax.models.config import CLIPConfig
from clipjax.variables import CheckpointError, short_error

WEIGHTS_NAME = "flax_model.msgpack"
INDEX_NAME = "flax_model.msgpack.index.json"
# A msgpack file is read whole into memory. transformers 4.x shards at 10 GB (1e10 bytes), so no
# file it wrote is larger than 10 GB unless a single tensor is; refuse anything past this.
MAX_MSGPACK_BYTES = 12 * 2**30


def is_flax_clip_dir(path: str) -> bool:
    """A directory with flax_model.msgpack (or its shard index) and a config.json whose
    model_type is "clip"."""
    return (os.path.isdir(path) and hf_model_type(path) == "clip"
            and any(os.path.isfile(os.path.join(path, n)) for n in (WEIGHTS_NAME, INDEX_NAME)))


def has_torch_weights(path: str) -> bool:
    """Whether a transformers directory also holds PyTorch weights (then those are read as "hf";
    Hub repositories often carry both)."""
    return any(os.path.isfile(os.path.join(path, n)) for n in WEIGHT_FILES)


def is_flax_only_clip_dir(path: str) -> bool:
    """A FlaxCLIPModel directory with no PyTorch weights beside it: read it with load_flax_clip."""
    return is_flax_clip_dir(path) and not has_torch_weights(path)


# ----------------------------------------------------------------------------- rules


def _flax_key(rule: Rule) -> str:
    parts = rule.torch.split(".")
    if parts[-1] == "weight":
        if rule.kind in ("linear", "conv"):
            parts[-1] = "kernel"
        elif parts[-2].endswith("embedding"):  # nn.Embed
            parts[-1] = "embedding"
        else:  # LayerNorm
            parts[-1] = "scale"
    return "/".join(parts)


def _flax_shape(rule: Rule, shape: tuple) -> tuple:
    """The Flax tensor's shape (per layer) for a clipjax variable of (per-layer) `shape`."""
    if rule.kind == "linear":
        return (int(np.prod(shape[:rule.n_in])), int(np.prod(shape[rule.n_in:])))
    if rule.kind == "bias":
        return (int(np.prod(shape)),)
    if rule.kind in ("copy", "conv"):  # conv: HWIO on both sides
        return tuple(shape)
    raise CheckpointError(f"converter bug: no Flax layout for rule kind {rule.kind!r} ({rule.jax})")


def rules(cfg: CLIPConfig) -> list[Rule]:
    """hf_clip's rules, re-keyed to the Flax parameter paths; each is a pure reshape with the Flax
    shape given exactly (checked on read, restored on write)."""
    shapes = expected_clip_shapes(cfg)
    out = []
    for r in hf_rules(cfg):
        shape = tuple(shapes[r.jax])
        per_layer = shape[1:] if r.stacked else shape
        out.append(Rule(r.jax, _flax_key(r), "bias" if r.kind == "bias" else "copy",
                        torch_shape=_flax_shape(r, per_layer)))
    return out


# ----------------------------------------------------------------------------- files


def _restore(file: str, max_bytes: int) -> dict:
    from flax.serialization import msgpack_restore

    try:
        size = os.path.getsize(file)
    except OSError as e:
        raise CheckpointError(f"Cannot read Flax checkpoint {file}: {short_error(e)}") from None
    if size > max_bytes:
        raise CheckpointError(f"Flax checkpoint {file} is {size:,} bytes, over the {max_bytes:,} bytes a single "
                              f"msgpack file is read up to (MAX_MSGPACK_BYTES)")
    try:
        with open(file, "rb") as f:
            tree = msgpack_restore(f.read())
    except Exception as e:  # noqa: BLE001 - truncated / corrupt: msgpack's and numpy's errors alike
        raise CheckpointError(f"Cannot read Flax checkpoint {file}: not a complete msgpack parameter tree "
                              f"({short_error(e)})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"Flax checkpoint {file} holds a value of type {type(tree).__name__}, not a parameter tree")
    return tree


def _flatten(tree: dict, file: str, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, file, key + "/"))
        elif isinstance(v, np.ndarray) or hasattr(v, "shape"):
            out[key] = np.asarray(v)
        else:
            raise CheckpointError(f"Flax checkpoint {file}: entry {key!r} is not an array ({type(v).__name__})")
    return out


def read_flax_params(path: str, max_bytes: int = MAX_MSGPACK_BYTES) -> dict[str, np.ndarray]:
    """The flat ("/"-joined) parameters of a FlaxCLIPModel directory, or of one .msgpack file."""
    if os.path.isfile(path):
        return _flatten(_restore(path, max_bytes), path)
    single, index = os.path.join(path, WEIGHTS_NAME), os.path.join(path, INDEX_NAME)
    if os.path.isfile(single):
        return _flatten(_restore(single, max_bytes), single)
    if not os.path.isfile(index):
        raise CheckpointError(f"No Flax weights in {path}: expected {WEIGHTS_NAME} or {INDEX_NAME}")
    try:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"Cannot read Flax shard index {index}: {short_error(e)}") from None
    out: dict[str, np.ndarray] = {}
    for shard in shards:
        if os.path.basename(shard) != shard:
            raise CheckpointError(f"Flax shard index {index} names a file outside its directory: {shard!r}")
        file = os.path.join(path, shard)
        if not os.path.isfile(file):
            raise CheckpointError(f"Flax shard index {index} names {shard}, which is missing")
        out.update(_flatten(_restore(file, max_bytes), file))
    return out


def from_flax_params(flat: dict[str, np.ndarray], cfg: CLIPConfig, what: str = "Flax CLIP checkpoint") -> dict:
    """Flat Flax parameters -> clipjax variables (float32 numpy). Every problem (missing,
    unexpected, mis-shaped keys) in one line."""
    try:
        return torch_to_variables(flat, rules(cfg), expected_clip_shapes(cfg), what=what, dtype=np.float32)
    except CheckpointError as e:
        raise CheckpointError("; ".join(line.strip() for line in str(e).splitlines())) from None


def read_config(path: str) -> CLIPConfig:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise CheckpointError(f"{path} has no config.json; not a transformers model directory")
    try:
        with open(file) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {file}: {short_error(e)}") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{file} does not hold a JSON object")
    return config_from_hf(hf)


def load_flax_clip(path: str, max_bytes: int = MAX_MSGPACK_BYTES) -> tuple[CLIPConfig, dict]:
    """Read a transformers 4.x FlaxCLIPModel directory -> (config, variables as float32 numpy).
    A msgpack file over `max_bytes` is refused before it is read."""
    cfg = read_config(path)
    flat = read_flax_params(path, max_bytes)
    return cfg, from_flax_params(flat, cfg, what=f"Flax CLIP checkpoint {path}")


def to_flax_params(variables: dict, cfg: CLIPConfig) -> dict:
    """clipjax variables -> the nested FlaxCLIPModel parameter tree (numpy, dtypes kept), keys
    sorted at every level as jax's tree flattening leaves transformers' params."""
    flat = variables_to_torch(variables, rules(cfg))
    tree: dict = {}
    for key in sorted(flat):
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = flat[key]

    def ordered(d):
        return {k: ordered(d[k]) if isinstance(d[k], dict) else d[k] for k in sorted(d)}

    return ordered(tree)


def save_flax_clip(variables: dict, cfg: CLIPConfig, path: str) -> None:
    """Write config.json + flax_model.msgpack as transformers 4.x's FlaxCLIPModel.save_pretrained
    does (what FlaxCLIPModel.from_pretrained and CLIPModel.from_pretrained(..., from_flax=True)
    read). Existing files of those names are replaced; each appears whole or not at all."""
    from flax.serialization import to_bytes

    data = to_bytes(to_flax_params(variables, cfg))
    hf = config_to_hf(cfg)
    # config_to_hf writes pad_token_id=1 whatever the config says; keep the model's own, so that
    # a directory read and written again has the same config (the causal tower never reads it).
    hf["text_config"]["pad_token_id"] = cfg.text.pad_token_id
    os.makedirs(path, exist_ok=True)
    _write_atomic(os.path.join(path, WEIGHTS_NAME), data)
    _write_atomic(os.path.join(path, "config.json"),
                  (json.dumps(hf, indent=2, sort_keys=True) + "\n").encode())


def _write_atomic(file: str, data: bytes) -> None:
    tmp = f"{file}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
