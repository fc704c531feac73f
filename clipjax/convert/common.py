"""The machinery every layout converter shares.

A converter is a table of `Rule`s, each tying one clipjax variable (a "/"-joined path whose
first part is the collection, e.g. "params/visual/proj/kernel") to one PyTorch key and a
transform. Layer-stacked variables (from `nn.scan`) take a torch key with "{i}" and are
stacked over layers; a key ending in "#k/n" is chunk k of n along axis 0 (fused qkv).
Transforms are transposes and reshapes only, so conversions round-trip bitwise.

Loading checks everything: every rule's key must exist, every key of the file must be
used, every shape must match the model's, every model variable must be produced; failures
raise one `CheckpointError` naming the keys and shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Iterable, Optional

import numpy as np

from clipjax.variables import CheckpointError, flatten_variables, unflatten_variables  # noqa: F401  (re-used by converters)


# ----------------------------------------------------------------------------- file IO


def _torch():
    import torch

    return torch


def to_numpy(t) -> np.ndarray:
    """torch tensor -> numpy, keeping bfloat16 as ml_dtypes.bfloat16."""
    torch = _torch()
    if isinstance(t, np.ndarray):
        return t
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def to_torch(a: np.ndarray):
    torch = _torch()
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True, order="C"))  # keeps 0-d arrays 0-d


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def hf_model_type(path: str) -> Optional[str]:
    """`model_type` of a transformers model directory's config.json; None when `path` is not
    a directory with a config.json, "unreadable" when that file is not JSON."""
    cfg = os.path.join(path, "config.json")
    if not (os.path.isdir(path) and os.path.isfile(cfg)):
        return None
    try:
        with open(cfg) as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return "unreadable"


def find_weight_file(directory: str) -> str:
    for name in WEIGHT_FILES:
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    raise CheckpointError(f"No weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"RIFF": "a RIFF (WebP / WAV) file", b"%PDF": "a PDF"}


def _check_torch_file(path: str) -> None:
    """A torch.save file is a zip (PyTorch >= 1.6) or a pickle (older); anything else gets one
    line saying what it looks like, not torch's unpickling error."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    what = next((v for k, v in _MAGIC.items() if head.startswith(k)), None)
    if what is None:
        stripped = head.lstrip()
        what = ("JSON" if stripped[:1] in (b"{", b"[") else "text") if _is_text(head) else "not a PyTorch file"
    raise CheckpointError(f"{path} is not a checkpoint clipjax reads ({what}): expected a clipjax (Orbax) "
                          "directory, a transformers CLIP directory, or a PyTorch / safetensors weight file")


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a PyTorch weight file (or a directory holding one) without unpickling objects:
    safetensors, or `torch.load(weights_only=True)` for .bin/.pt/.pth. Sharded
    checkpoints (*.index.json) are read shard by shard."""
    if os.path.isdir(path):
        path = find_weight_file(path)
    if not os.path.exists(path):
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if path.endswith(".index.json"):
        with open(path) as f:
            index = json.load(f)
        shards = sorted(set(index["weight_map"].values()))
        out = {}
        for shard in shards:
            out.update(read_state_dict(os.path.join(os.path.dirname(path), shard)))
        return out
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            try:
                return dict(load_file(path))
            except TypeError:  # bfloat16 is not a numpy dtype: go through torch
                from safetensors.torch import load_file as load_torch

                return {k: to_numpy(v) for k, v in load_torch(path).items()}
        _check_torch_file(path)
        torch = _torch()
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # truncated / corrupt / pickled objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in str(e).lower() or "weights_only" in str(e):
            # PyTorch's advice here (weights_only=False) runs arbitrary code from the file: never say it
            raise CheckpointError(f"Cannot read checkpoint {path}: it pickles Python objects other than tensors, "
                                  "which clipjax does not unpickle (an untrusted file could run code); re-save "
                                  "its state dict (torch.save(model.state_dict(), ...)) or use safetensors") from None
        raise CheckpointError(f"Cannot read checkpoint {path}: {type(e).__name__}: {first}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # open_clip training checkpoints wrap the weights
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if k.startswith("module."):  # DDP-wrapped
            k = k[len("module."):]
        if not hasattr(v, "shape"):
            raise CheckpointError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k] = to_numpy(v)
    return out


def write_state_dict(sd: dict[str, np.ndarray], path: str) -> None:
    """Write safetensors for *.safetensors, else a plain torch state dict (torch.save)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tensors = {k: to_torch(v) for k, v in sd.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    else:
        _torch().save(tensors, path)


# ----------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """One clipjax variable <-> one torch key.

    kind: "copy"   same shape (reshaped to the target, e.g. 0-d scalars)
          "linear" torch (out, in) weight <-> kernel whose first `n_in` axes are inputs
          "conv"   torch OIHW <-> flax HWIO
          "convT"  torch ConvTranspose2d (in, out, kH, kW) <-> flax ConvTranspose kernel
                   (kH, kW, in, out), spatially flipped (PyTorch's transposed conv is the
                   adjoint of a correlation; flax's with transpose_kernel=False is not)
          "bias"   flat torch vector <-> any shape (e.g. (heads, head_dim))
          "T"      plain 2-D transpose (kept for readability where "linear" reads oddly)
    """

    jax: str
    torch: str
    kind: str = "copy"
    n_in: int = 1
    # The torch tensor's exact shape (per layer for "{i}" rules) where the clipjax variable's
    # shape does not imply it, e.g. HF ViT's cls_token (1, 1, D) <-> (D,). Checked on read,
    # restored on write. None: no check, written in the shape the kind implies.
    torch_shape: Optional[tuple] = None

    @property
    def stacked(self) -> bool:
        return "{i}" in self.torch


@dataclasses.dataclass(frozen=True)
class Constant:
    """A torch key with no clipjax counterpart that a layout always has (e.g. BatchNorm's
    num_batches_tracked, position_ids buffers). Ignored when read, written with `value`."""

    torch: str
    value: Callable[[], np.ndarray]


def _t2j(x: np.ndarray, rule: Rule, shape: tuple) -> np.ndarray:
    if rule.kind == "linear" or rule.kind == "T":
        x = x.T
    elif rule.kind == "conv":
        x = x.transpose(2, 3, 1, 0)
    elif rule.kind == "convT":
        x = np.flip(x, (2, 3)).transpose(2, 3, 0, 1)
    elif rule.kind not in ("copy", "bias"):
        raise ValueError(f"unknown rule kind {rule.kind}")
    if x.size != int(np.prod(shape)):
        raise _ShapeMismatch(x.shape)
    return x.reshape(shape)


def _j2t(x: np.ndarray, rule: Rule, torch_shape: Optional[tuple]) -> np.ndarray:
    if rule.kind in ("linear", "T"):
        n = rule.n_in
        x = x.reshape(int(np.prod(x.shape[:n])), int(np.prod(x.shape[n:]))).T
    elif rule.kind == "conv":
        x = x.transpose(3, 2, 0, 1)
    elif rule.kind == "convT":
        x = np.flip(x.transpose(2, 3, 0, 1), (2, 3))
    elif rule.kind == "bias":
        x = x.reshape(-1)
    if torch_shape is not None:
        x = x.reshape(torch_shape)
    return np.array(x, copy=True, order="C")  # np.ascontiguousarray would make 0-d arrays 1-d


class _ShapeMismatch(Exception):
    def __init__(self, got):
        self.got = got


_CHUNK = re.compile(r"^(.*)#(\d+)/(\d+)$")


def _split_chunk(key: str):
    m = _CHUNK.match(key)
    if m:
        return m.group(1), int(m.group(2)), int(m.group(3))
    return key, None, None


def _layer_keys(rule: Rule, num_layers: int) -> list[str]:
    return [rule.torch.format(i=i) for i in range(num_layers)] if rule.stacked else [rule.torch]


def torch_to_variables(
    sd: dict[str, np.ndarray],
    rules: Iterable[Rule],
    expected: dict[str, tuple],
    constants: Iterable[Constant] = (),
    what: str = "checkpoint",
    dtype=None,
) -> dict:
    """Apply `rules` to a torch state dict; `expected` maps every clipjax variable path to its
    shape. Raises CheckpointError listing every missing / unexpected / mis-shaped key."""
    rules = list(rules)
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    out: dict[str, np.ndarray] = {}
    for rule in rules:
        if rule.jax not in expected:
            raise CheckpointError(f"converter bug: rule for unknown clipjax variable {rule.jax}")
        shape = tuple(expected[rule.jax])
        keys = _layer_keys(rule, shape[0] if rule.stacked else 1)
        per_layer_shape = shape[1:] if rule.stacked else shape
        parts = []
        for key in keys:
            base, k, n = _split_chunk(key)
            if base not in sd:
                missing.append(base)
                continue
            used.add(base)
            x = sd[base]
            if k is not None:
                if x.shape[0] % n:
                    mismatched.append(f"{base}: shape {tuple(x.shape)} cannot be split in {n}")
                    continue
                x = np.split(x, n, axis=0)[k]
            if rule.torch_shape is not None and tuple(x.shape) != tuple(rule.torch_shape):
                mismatched.append(f"{key}: checkpoint {tuple(x.shape)} vs expected {tuple(rule.torch_shape)} ({rule.jax})")
                continue
            try:
                parts.append(_t2j(np.asarray(x), rule, per_layer_shape))
            except _ShapeMismatch as e:
                # the checkpoint's own shape first; then both in clipjax's layout (transposed for linears)
                mismatched.append(f"{key}: checkpoint {tuple(np.shape(x))} (as clipjax {tuple(e.got)}) vs model "
                                  f"{per_layer_shape} ({rule.jax})")
        if len(parts) == len(keys):
            val = np.stack(parts) if rule.stacked else parts[0]
            out[rule.jax] = val.astype(dtype) if dtype is not None else val
    for c in constants:
        used.add(c.torch)
    # extra layers in the checkpoint show up as unexpected keys
    unexpected = sorted(k for k in sd if k not in used)
    not_produced = sorted(set(expected) - set(out) - {r.jax for r in rules})
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_fmt(sorted(set(missing)))}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): "
                        + _fmt([f"{k} {tuple(sd[k].shape)}" for k in unexpected]))
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_fmt(mismatched)}")
    if not_produced:
        problems.append(f"model variables with no source (converter bug): {_fmt(not_produced)}")
    if problems:
        raise CheckpointError(f"{what} does not fit the model:\n  " + "\n  ".join(problems))
    return unflatten_variables(out)


def variables_to_torch(variables: dict, rules: Iterable[Rule], constants: Iterable[Constant] = ()) -> dict[str, np.ndarray]:
    """Inverse of `torch_to_variables`."""
    flat = {k: np.asarray(v) for k, v in flatten_variables(variables).items()}
    sd: dict[str, np.ndarray] = {}
    chunks: dict[str, dict[int, np.ndarray]] = {}
    chunk_n: dict[str, int] = {}
    rules = list(rules)
    for rule in rules:
        if rule.jax not in flat:
            raise CheckpointError(f"variables lack {rule.jax}, which the target layout needs")
        x = flat[rule.jax]
        per_layer = list(x) if rule.stacked else [x]
        for i, key in enumerate(_layer_keys(rule, len(per_layer))):
            base, k, n = _split_chunk(key)
            y = _j2t(per_layer[i], rule, rule.torch_shape)
            if k is None:
                sd[base] = y
            else:
                chunks.setdefault(base, {})[k] = y
                chunk_n[base] = n
    for base, parts in chunks.items():
        n = chunk_n[base]
        if sorted(parts) != list(range(n)):
            raise CheckpointError(f"converter bug: incomplete chunks for {base}")
        sd[base] = np.concatenate([parts[i] for i in range(n)], axis=0)
    for c in constants:
        sd[c.torch] = c.value()
    leftover = sorted(set(flat) - {r.jax for r in rules})
    if leftover:
        raise CheckpointError(f"clipjax variables the target layout has no place for: {_fmt(leftover)}")
    return sd


def _fmt(items, limit: int = 12) -> str:
    items = list(items)
    s = ", ".join(items[:limit])
    if len(items) > limit:
        s += f", … and {len(items) - limit} more"
    return s


def expected_shapes(module, *init_args, **init_kwargs) -> dict[str, tuple]:
    """Flat path -> shape of every variable `module.init` would create (no memory used)."""
    import jax
    import flax.linen as nn

    abstract = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.PRNGKey(0), *init_args, **init_kwargs)))
    return {k: tuple(v.shape) for k, v in flatten_variables(abstract).items()}


def linear_rules(jax_prefix: str, torch_prefix: str, n_in: int = 1, bias: bool = True) -> list[Rule]:
    """A torch nn.Linear (`.weight`, `.bias`) <-> a flax Dense/DenseGeneral."""
    rules = [Rule(f"{jax_prefix}/kernel", f"{torch_prefix}.weight", "linear", n_in)]
    if bias:
        rules.append(Rule(f"{jax_prefix}/bias", f"{torch_prefix}.bias", "bias"))
    return rules


def norm_rules(jax_prefix: str, torch_prefix: str) -> list[Rule]:
    """A torch LayerNorm (`.weight`, `.bias`) <-> flax LayerNorm (`scale`, `bias`)."""
    return [Rule(f"{jax_prefix}/scale", f"{torch_prefix}.weight"),
            Rule(f"{jax_prefix}/bias", f"{torch_prefix}.bias")]


def block_rules(jax_prefix: str, torch_prefix: str, names: dict[str, str]) -> list[Rule]:
    """Rules for one `layers.Block` stack. `torch_prefix` contains "{i}"; `names` maps
    query/key/value/out/ln1/ln2/fc1/fc2 (and optionally cross_query/cross_key/cross_value/
    cross_out/ln_cross) to the torch sub-module names. A "#k/n" suffix on q/k/v names marks
    chunks of a fused in-projection (then given as full key stems, without .weight/.bias)."""
    j, t = jax_prefix, torch_prefix
    rules: list[Rule] = []
    for attn, pre in (("attn", ""), ("cross_attn", "cross_")):
        if pre + "query" not in names:
            continue
        for part in ("query", "key", "value"):
            src = names[pre + part]
            if "#" in src:  # fused: "<weight key stem>|<bias key stem>#k/3"
                w_stem, rest = src.split("|")
                b_stem, chunk = rest.split("#")
                rules.append(Rule(f"{j}/{attn}/{part}/kernel", f"{t}.{w_stem}#{chunk}", "linear"))
                rules.append(Rule(f"{j}/{attn}/{part}/bias", f"{t}.{b_stem}#{chunk}", "bias"))
            else:
                rules += linear_rules(f"{j}/{attn}/{part}", f"{t}.{src}")
        rules += linear_rules(f"{j}/{attn}/out", f"{t}.{names[pre + 'out']}", n_in=2)
    for ln in ("ln1", "ln2", "ln_cross"):
        if ln in names:
            rules += norm_rules(f"{j}/{ln}", f"{t}.{names[ln]}")
    rules += linear_rules(f"{j}/mlp/fc1", f"{t}.{names['fc1']}")
    rules += linear_rules(f"{j}/mlp/fc2", f"{t}.{names['fc2']}")
    return rules
