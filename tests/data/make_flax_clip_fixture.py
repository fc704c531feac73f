"""Make tests/data/flax_clip/: a small random transformers 4.x FlaxCLIPModel directory and the
outputs of the PyTorch CLIPModel that transformers 4.x builds from it with `from_flax=True`.

transformers v5 has no Flax, so this runs once, in a separate environment, never in the tests:

    python3 -m venv /tmp/tf4
    /tmp/tf4/bin/pip install "transformers==4.49.0" "jax==0.4.13" "jaxlib==0.4.13" "flax==0.7.0" \
        "numpy==1.26.4" torch==2.13.0
    JAX_PLATFORMS=cpu /tmp/tf4/bin/python tests/data/make_flax_clip_fixture.py   # from the repository root

jax 0.4.13 / flax 0.7.0 are the newest versions transformers 4.x's "flax" extra admits.
transformers 4.49.0 rather than the last 4.x (4.57.6): 4.57's `from_pretrained(..., from_flax=True)`
builds the model on the meta device and copies the Flax weights into it with a plain
`load_state_dict`, which leaves every parameter on meta (the first forward fails with "Tensor on
device cpu is not on the expected device meta"). The script checks that the PyTorch model holds
exactly the Flax weights before it computes anything.

To check that a directory clipjax's `save_flax_clip` wrote loads in transformers 4.x (both
FlaxCLIPModel and CLIPModel(from_flax=True)) and reproduces the reference:

    JAX_PLATFORMS=cpu /tmp/tf4/bin/python tests/data/make_flax_clip_fixture.py --check DIR

Writes
  tests/data/flax_clip/model/config.json, flax_model.msgpack   (FlaxCLIPModel.save_pretrained)
  tests/data/flax_clip/reference.npz                            (inputs and PyTorch outputs)

The towers differ in width (vision 48, text 32) and head count, so a swapped mapping can't pass;
every parameter is random (LayerNorm scales around 1, biases non-zero, logit_scale moved off its
default), so no test passes on zeros and ones. The text config names its own end-of-text id (255, the
largest id, as 49407 is in CLIP's vocabulary): transformers' default, 49407, is outside this
vocabulary and would make both models pool at position 0.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flax_clip")
MODEL_DIR = os.path.join(HERE, "model")

VOCAB, CONTEXT, IMAGE = 256, 16, 32
BOS, EOS = VOCAB - 2, VOCAB - 1  # the end-of-text token has the largest id, as in CLIP's vocabulary


def randomized(params, seed: int = 0):
    from flax.traverse_util import flatten_dict, unflatten_dict

    rng = np.random.default_rng(seed)
    flat = flatten_dict(params)
    out = {}
    for path, v in flat.items():
        v = np.asarray(v)
        name = path[-1]
        if name == "logit_scale":
            x = np.full(v.shape, np.log(1 / 0.07) + 0.1)
        elif name == "scale":  # LayerNorm
            x = 1.0 + 0.1 * rng.standard_normal(v.shape)
        elif "norm" in "/".join(path) or "layrnorm" in "/".join(path):
            x = 0.1 * rng.standard_normal(v.shape)
        else:
            x = 0.02 * rng.standard_normal(v.shape)
        out[path] = x.astype(v.dtype)
    return unflatten_dict(out)


def token_ids(batch: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.zeros((batch, CONTEXT), np.int64)
    for b in range(batch):
        n = 2 + 5 * b  # end-of-text at positions 2, 7, 12
        ids[b, 0] = BOS
        ids[b, 1:n] = rng.integers(1, BOS, n - 1)
        ids[b, n] = EOS
    return ids


def main() -> None:
    import flax
    import flax.traverse_util
    import jax
    import torch
    import transformers
    from transformers import CLIPConfig, CLIPModel, FlaxCLIPModel

    assert transformers.__version__.startswith("4."), "needs transformers 4.x (v5 has no Flax)"
    cfg = CLIPConfig(
        projection_dim=24,
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=CONTEXT,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE, patch_size=8),
    )
    flax_model = FlaxCLIPModel(cfg, seed=0)
    flax_model.params = randomized(flax_model.params)
    os.makedirs(MODEL_DIR, exist_ok=True)
    flax_model.save_pretrained(MODEL_DIR)

    torch_model = CLIPModel.from_pretrained(MODEL_DIR, from_flax=True, attn_implementation="eager").eval()
    sd = torch_model.state_dict()
    n_params = len(flax.traverse_util.flatten_dict(flax_model.params))
    assert not [k for k, v in sd.items() if v.device.type == "meta"], "from_flax left weights on meta"
    assert n_params == len([k for k in sd if not k.endswith("position_ids")]), "not every weight was loaded"
    assert np.array_equal(sd["text_model.encoder.layers.1.mlp.fc1.weight"].numpy(),
                          np.asarray(flax_model.params["text_model"]["encoder"]["layers"]["1"]["mlp"]["fc1"]["kernel"]).T)
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32)  # NCHW, as transformers takes them
    ids = token_ids(3)
    with torch.no_grad():
        pt, it = torch.from_numpy(pixels), torch.from_numpy(ids)
        out = torch_model(input_ids=it, pixel_values=pt)
        ref = dict(
            pixel_values=pixels,
            input_ids=ids.astype(np.int32),
            image_features=torch_model.get_image_features(pixel_values=pt).numpy(),
            text_features=torch_model.get_text_features(input_ids=it).numpy(),
            image_embeds=out.image_embeds.numpy(),
            text_embeds=out.text_embeds.numpy(),
            logits_per_image=out.logits_per_image.numpy(),
        )
    fout = flax_model(input_ids=ids.astype(np.int32), pixel_values=pixels)
    ref["flax_logits_per_image"] = np.asarray(fout.logits_per_image)  # FlaxCLIPModel's own, for comparison
    np.savez(os.path.join(HERE, "reference.npz"), **ref)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, jax {jax.__version__}, "
          f"flax {flax.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    print("max |flax - torch| logits_per_image:",
          float(np.abs(ref["flax_logits_per_image"] - ref["logits_per_image"]).max()))
    for f in sorted(os.listdir(MODEL_DIR)):
        print(f, os.path.getsize(os.path.join(MODEL_DIR, f)), "bytes")


def check(directory: str) -> None:
    import torch
    from transformers import CLIPModel, FlaxCLIPModel

    ref = np.load(os.path.join(HERE, "reference.npz"))
    pixels, ids = ref["pixel_values"], ref["input_ids"]
    f = FlaxCLIPModel.from_pretrained(directory)(input_ids=ids, pixel_values=pixels)
    t = CLIPModel.from_pretrained(directory, from_flax=True, attn_implementation="eager").eval()
    with torch.no_grad():
        o = t(input_ids=torch.from_numpy(ids.astype(np.int64)), pixel_values=torch.from_numpy(pixels))
    for name, got in (("FlaxCLIPModel", np.asarray(f.logits_per_image)), ("CLIPModel from_flax", o.logits_per_image.numpy())):
        err = float(np.abs(got - ref["logits_per_image"]).max())
        print(f"{name}: max |logits_per_image - reference| = {err:.2e}")
        assert err <= 1e-5, name


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        check(sys.argv[2])
    else:
        main()
