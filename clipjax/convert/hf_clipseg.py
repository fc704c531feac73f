"""CLIPSeg checkpoints <-> clipjax, in two layouts:

- transformers' `CLIPSegForImageSegmentation` directories (config.json + safetensors/.bin):
  the whole model, `clip.*` (the CLIPModel layout under a prefix) and `decoder.*`;
- the original repository's decoder-only files (timojl/clipseg: rd64-uni.pth,
  rd64-uni-refined.pth, rd16-uni.pth): `film_mul`, `film_add`, `reduces.N`,
  `blocks.N` (torch.nn.TransformerEncoderLayer: fused `self_attn.in_proj_*`, `linear1/2`,
  `norm1/2`) and `trans_conv` (one ConvTranspose2d, or Sequential indices 0/2/4 in the refined
  head), combined with a CLIP checkpoint in any format clipjax reads. The original's unused
  `reduce` Linear is ignored on read and not written. Its decoder configuration is inferred
  from the tensor shapes; the extract layers, which no tensor records, default to (3, 6, 9)
  as for every released model.

Preprocessing travels with the config (CLIPSegConfig.image_size / image_mean / image_std /
resample): a transformers directory's preprocessor_config.json is read (a ViTImageProcessor:
the whole image resized, no crop); a directory without one, and an original decoder file, get
the CIDAS checkpoints' settings -- 352 x 352, PIL bilinear, x/255, ImageNet mean/std
(0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) -- the former with a warning. An export writes
preprocessor_config.json and the CLIP tokenizer files, so `CLIPSegProcessor.from_pretrained`
works on it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from typing import Optional

import numpy as np

from clipjax.convert import hf_clip
from clipjax.variables import CheckpointError
from clipjax.convert.common import Rule, block_rules, hf_model_type, linear_rules, read_state_dict, torch_to_variables, variables_to_torch, write_state_dict
from clipjax.models.clipseg import CLIPSegConfig
from clipjax.convert.common import expected_shapes as module_shapes
from clipjax.models.clipseg import CLIPSeg, init_inputs
from clipjax.convert.openai_clip import save_openai
from clipjax.models.clipseg import clip_variables
from clipjax.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESAMPLE, resample_name
from clipjax.tokenizer import clip_tokenizer

# The CIDAS checkpoints' preprocessor_config.json (a ViTImageProcessor), and the original
# repository's transform (ImageNet normalisation, a 352 x 352 bilinear resize)
CIDAS_PREPROCESSING = dict(image_size=352, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample="bilinear")

HF_DECODER_BLOCK = hf_clip.HF_BLOCK
ORIGINAL_BLOCK = dict(query="self_attn.in_proj_weight|self_attn.in_proj_bias#0/3",
                      key="self_attn.in_proj_weight|self_attn.in_proj_bias#1/3",
                      value="self_attn.in_proj_weight|self_attn.in_proj_bias#2/3",
                      out="self_attn.out_proj", ln1="norm1", ln2="norm2", fc1="linear1", fc2="linear2")


def decoder_rules(cfg: CLIPSegConfig, torch_prefix: str, block: dict, head: str, blocks: str) -> list[Rule]:
    d, t = "params/decoder", torch_prefix
    r = [*linear_rules(f"{d}/film_mul", f"{t}film_mul"), *linear_rules(f"{d}/film_add", f"{t}film_add")]
    for i in range(len(cfg.extract_layers)):
        r += linear_rules(f"{d}/reduces_{i}", f"{t}reduces.{i}")
        r += block_rules(f"{d}/layers_{i}", f"{t}{blocks}.{i}", block)
    if cfg.complex_head:
        r += [Rule(f"{d}/head_conv/kernel", f"{t}{head}.0.weight", "conv"), Rule(f"{d}/head_conv/bias", f"{t}{head}.0.bias"),
              Rule(f"{d}/head_up1/kernel", f"{t}{head}.2.weight", "convT"), Rule(f"{d}/head_up1/bias", f"{t}{head}.2.bias"),
              Rule(f"{d}/head_up2/kernel", f"{t}{head}.4.weight", "convT"), Rule(f"{d}/head_up2/bias", f"{t}{head}.4.bias")]
    else:
        r += [Rule(f"{d}/head/kernel", f"{t}{head}.weight", "convT"), Rule(f"{d}/head/bias", f"{t}{head}.bias")]
    return r


def hf_rules(cfg: CLIPSegConfig) -> list[Rule]:
    clip = [dataclasses.replace(x, jax=x.jax.replace("params/", "params/clip/", 1), torch="clip." + x.torch)
            for x in hf_clip.rules(cfg.clip)]
    return clip + decoder_rules(cfg, "decoder.", HF_DECODER_BLOCK, "transposed_convolution", "layers")


def expected_shapes(cfg: CLIPSegConfig) -> dict:
    return module_shapes(CLIPSeg(cfg), **init_inputs(cfg))


# --------------------------------------------------------------------------- transformers
def config_from_hf(hf: dict, image_size: int = 352, preprocessing: Optional[dict] = None) -> CLIPSegConfig:
    """`preprocessing`: CLIPSegConfig's image_mean / image_std / resample (default: the CIDAS
    checkpoints', CIDAS_PREPROCESSING)."""
    pre = {k: v for k, v in {**CIDAS_PREPROCESSING, **(preprocessing or {})}.items() if k != "image_size"}
    return CLIPSegConfig(
        clip=hf_clip.config_from_hf({**hf, "model_type": "clip"}),
        extract_layers=tuple(int(i) for i in hf.get("extract_layers", (3, 6, 9))),
        reduce_dim=int(hf.get("reduce_dim", 64)),
        decoder_heads=int(hf.get("decoder_num_attention_heads", 4)),
        decoder_mlp_dim=int(hf.get("decoder_intermediate_size", 2048)),
        conditional_layer=int(hf.get("conditional_layer", 0)),
        complex_head=bool(hf.get("use_complex_transposed_convolution", False)),
        image_size=image_size,
        **pre,
    )


def preprocessing_from_hf(pp: dict, what: str = "preprocessor_config.json") -> dict:
    """A transformers image processor's settings -> CLIPSegConfig fields (image_size, image_mean,
    image_std, resample). Only what LoadedCLIPSeg reproduces is accepted: a resize of the whole
    image to a square, x/255, normalisation; anything else is refused by name. Missing keys take
    ViTImageProcessor's defaults (bilinear, mean = std = 0.5, size 224), as transformers would."""
    def refuse(why):
        raise CheckpointError(f"{what}: {why}; CLIPSeg in clipjax resizes the whole image to a square, "
                              "rescales by 1/255 and normalises")

    if not pp.get("do_resize", True):
        refuse("do_resize is false")
    if pp.get("do_center_crop", False):
        refuse("do_center_crop is true")
    if pp.get("do_pad", False):
        refuse("do_pad is true")
    if not pp.get("do_rescale", True) or abs(float(pp.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        refuse("the rescale is not x/255")
    size = pp.get("size", {"height": 224, "width": 224})
    if isinstance(size, int):
        h = w = size
    elif isinstance(size, dict) and "height" in size and "width" in size:
        h, w = int(size["height"]), int(size["width"])
    else:
        refuse(f"size {size!r} is not a fixed height x width")
    if h != w:
        refuse(f"size {h} x {w} is not square (transformers' CLIPSeg decoder needs a square patch grid)")
    if pp.get("do_normalize", True):
        mean = tuple(float(x) for x in pp.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(float(x) for x in pp.get("image_std", (0.5, 0.5, 0.5)))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    try:
        resample = resample_name(pp.get("resample", RESAMPLE["bilinear"]))
    except ValueError as e:
        refuse(str(e))
    return dict(image_size=h, image_mean=mean, image_std=std, resample=resample)


def read_preprocessing(path: str) -> Optional[dict]:
    """The CLIPSegConfig preprocessing fields of a transformers directory: its
    preprocessor_config.json, else the "image_processor" entry of the processor_config.json that
    transformers v5's `CLIPSegProcessor.save_pretrained` writes; None when neither exists."""
    file = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(file):
        with open(file) as f:
            return preprocessing_from_hf(json.load(f), what=file)
    file = os.path.join(path, "processor_config.json")
    if os.path.isfile(file):
        with open(file) as f:
            pp = json.load(f).get("image_processor")
        if isinstance(pp, dict):
            return preprocessing_from_hf(pp, what=f"{file} (image_processor)")
    return None


def hf_image_processor(cfg: CLIPSegConfig):
    """transformers' ViTImageProcessor (PIL backend, no torchvision needed) with cfg's settings:
    what CLIPSegProcessor pairs with the CLIP tokenizer."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size},
                                resample=RESAMPLE[cfg.resample], do_rescale=True, rescale_factor=1 / 255,
                                do_normalize=True, image_mean=list(cfg.image_mean), image_std=list(cfg.image_std))


def config_to_hf(cfg: CLIPSegConfig) -> dict:
    hf = hf_clip.config_to_hf(cfg.clip)
    hf.pop("architectures", None)
    hf.update(model_type="clipseg", architectures=["CLIPSegForImageSegmentation"],
              extract_layers=list(cfg.extract_layers), reduce_dim=cfg.reduce_dim,
              decoder_num_attention_heads=cfg.decoder_heads, decoder_intermediate_size=cfg.decoder_mlp_dim,
              conditional_layer=cfg.conditional_layer, use_complex_transposed_convolution=cfg.complex_head)
    return hf


def is_hf_clipseg_dir(path: str) -> bool:
    return hf_model_type(path) == "clipseg"


def from_hf_state_dict(sd: dict, cfg: CLIPSegConfig, what: str = "transformers CLIPSeg checkpoint") -> dict:
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    return torch_to_variables(sd, hf_rules(cfg), expected_shapes(cfg), what=what, dtype=np.float32)


def load_hf_clipseg(path: str, image_size: Optional[int] = None) -> tuple[CLIPSegConfig, dict]:
    """(CLIPSegConfig, variables) of a transformers CLIPSegForImageSegmentation directory. The
    preprocessing comes from its preprocessor_config.json; without one, the CIDAS checkpoints'
    (352 px, bilinear, ImageNet mean/std) with a warning. `image_size`, when given, overrides
    the processor's size (the model runs at any multiple of the patch size)."""
    if not is_hf_clipseg_dir(path):
        raise CheckpointError(f"{path} is not a transformers CLIPSeg directory (config.json with model_type clipseg)")
    pre = read_preprocessing(path)
    if pre is None:
        pre = dict(CIDAS_PREPROCESSING)
        warnings.warn(f"{path} has no preprocessor_config.json: assuming the CIDAS CLIPSeg checkpoints' preprocessing "
                      "(the whole image resized to 352 x 352 with PIL bilinear, x/255, ImageNet mean "
                      "(0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225))", stacklevel=2)
    size = int(image_size) if image_size is not None else pre["image_size"]
    with open(os.path.join(path, "config.json")) as f:
        cfg = config_from_hf(json.load(f), size, pre)
    cfg.validate()
    return cfg, from_hf_state_dict(read_state_dict(path), cfg, what=f"transformers CLIPSeg checkpoint {path}")


def to_hf_state_dict(variables: dict, cfg: CLIPSegConfig) -> dict:
    return variables_to_torch(variables, hf_rules(cfg))


def save_hf_clipseg(variables: dict, cfg: CLIPSegConfig, path: str, with_processor: bool = True) -> None:
    """Write a self-contained transformers CLIPSegForImageSegmentation directory: config.json,
    model.safetensors and (with_processor) the processor files -- preprocessor_config.json (a
    ViTImageProcessor with cfg's size, resample, mean/std) and the CLIP tokenizer built from the
    vendored OpenAI BPE files (no hub download) -- so `CLIPSegProcessor.from_pretrained(path)`
    and `pipeline` work on it."""
    from transformers import CLIPSegConfig as HFConfig

    os.makedirs(path, exist_ok=True)
    HFConfig.from_dict(config_to_hf(cfg)).save_pretrained(path)
    write_state_dict(to_hf_state_dict(variables, cfg), os.path.join(path, "model.safetensors"))
    if with_processor:  # the CIDAS layout: preprocessor_config.json + tokenizer files
        tok = copy.copy(clip_tokenizer())  # the cached tokenizer stays untouched
        tok.model_max_length = cfg.clip.text.context_length
        tok.save_pretrained(path)
        hf_image_processor(cfg).save_pretrained(path)


# --------------------------------------------------------------------------- original layout
def original_rules(cfg: CLIPSegConfig) -> list[Rule]:
    return decoder_rules(cfg, "", ORIGINAL_BLOCK, "trans_conv", "blocks")


def infer_original_config(sd: dict, clip_cfg, extract_layers=(3, 6, 9), image_size: int = 352) -> CLIPSegConfig:
    """Decoder sizes from the tensors of an original decoder-only state dict."""
    if "film_mul.weight" not in sd:
        raise CheckpointError("not an original CLIPSeg decoder file: no film_mul.weight")
    reduce_dim, cond_dim = sd["film_mul.weight"].shape
    if cond_dim != clip_cfg.embed_dim:
        raise CheckpointError(f"decoder conditions on {cond_dim}-d vectors, the CLIP embeds {clip_cfg.embed_dim}")
    n = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if n != len(extract_layers):
        raise CheckpointError(f"{n} decoder blocks but extract_layers={tuple(extract_layers)}")
    mlp = sd["blocks.0.linear1.weight"].shape[0]
    complex_head = "trans_conv.0.weight" in sd
    pre = {k: v for k, v in CIDAS_PREPROCESSING.items() if k != "image_size"}  # the original repository's
    return CLIPSegConfig(clip=clip_cfg, extract_layers=tuple(extract_layers), reduce_dim=int(reduce_dim),
                         decoder_heads=4, decoder_mlp_dim=int(mlp), complex_head=complex_head, image_size=image_size,
                         **pre)


def load_original(decoder_path: str, clip, extract_layers=(3, 6, 9), decoder_heads: int = 4,
                  image_size: int = 352) -> tuple[CLIPSegConfig, dict]:
    """An original decoder file + its CLIP, (CLIPConfig, variables) as
    clipjax.convert.formats.read_any returns them for any CLIP checkpoint."""
    clip_cfg, clip_vars = clip
    sd = {k: v for k, v in read_state_dict(decoder_path).items() if not k.startswith("reduce.")}
    cfg = dataclasses.replace(infer_original_config(sd, clip_cfg, extract_layers, image_size), decoder_heads=decoder_heads)
    cfg.validate()
    expected = {k: v for k, v in expected_shapes(cfg).items() if k.startswith("params/decoder/")}
    dec = torch_to_variables(sd, original_rules(cfg), expected, what=f"CLIPSeg decoder {decoder_path}",
                             dtype=np.float32)
    variables = {"params": {"clip": clip_vars["params"], "decoder": dec["params"]["decoder"]}}
    return cfg, variables


def save_original(variables: dict, cfg: CLIPSegConfig, path: str, clip_path: Optional[str] = None) -> None:
    """Write the decoder in the original layout (a torch .pth); the CLIP part, when
    `clip_path` is given, in OpenAI's layout beside it (the original code loads CLIP itself)."""
    dec = {"params": {"decoder": variables["params"]["decoder"]}}
    write_state_dict(variables_to_torch(dec, original_rules(cfg)), path)
    if clip_path:
        save_openai(clip_variables(variables), cfg.clip, clip_path)
