"""CLIP image preprocessing, pixel for pixel what transformers' ``CLIPImageProcessorPil`` does,
but channels-last (NHWC) for Flax:

    RGB uint8 -> resize short side to image_size (PIL bicubic) -> center crop -> /255 -> normalise

    x = preprocess_images(["cat.jpg", pil_image, uint8_array])   # (3, 224, 224, 3) float32
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torchvision's ImageNet statistics (transformers' IMAGENET_DEFAULT_MEAN / _STD): what the CIDAS
# CLIPSeg checkpoints' ViTImageProcessor normalises with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL's resampling filters by name; the integers are what a preprocessor_config.json "resample" holds
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def resample_name(value) -> str:
    """A PIL filter given as its name or as the integer of a preprocessor_config.json -> its name."""
    if isinstance(value, str) and value.lower() in RESAMPLE:
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool):
        for name, code in RESAMPLE.items():
            if code == value:
                return name
    raise ValueError(f"unknown resampling filter {value!r}: expected one of {sorted(RESAMPLE)} or 0-5 (PIL's codes)")


# ---------------------------------------------------------------------------------------------
# Input -> RGB uint8 PIL image
# ---------------------------------------------------------------------------------------------


def pil_to_rgb_array(img: Image.Image) -> tuple[np.ndarray, bool]:
    """PIL image of any mode -> (uint8 (H, W, 3), whether a conversion happened): the one
    decoder of every path (clipjax.load's encode_image / segment / tag, and the training and
    evaluation readers in clipjax.data.images), so one file gives one embedding everywhere.

    Transparency is composited onto white (transformers' convert_to_rgb; a bare
    ``convert("RGB")`` would show the hidden colour of transparent pixels, often black).
    16-bit images (I;16, and I up to 65535) are rescaled (v / 257) and 32-bit ints by their
    maximum; float images (F) in [0, 1] are scaled by 255. transformers' processor differs
    there: PIL's ``convert("RGB")`` clips a 16-bit PNG at 255 (most of a photo turns white)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, np.uint8), False
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        if mode == "I" and a.max(initial=0) > 65535:
            scale = a.max() / 255.0
        g = np.clip(np.round(a / scale), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1), True
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, np.float64))
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        g = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1), True
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in img.info) or (
        mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), np.uint8), True
    return np.asarray(img.convert("RGB"), np.uint8), True


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """An RGB PIL image by `pil_to_rgb_array`'s rules."""
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    return Image.fromarray(pil_to_rgb_array(image)[0], mode="RGB")


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 passes; floats must be in [0, 1] and are mapped with round(x * 255)."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise ValueError(
                f"float image arrays must hold values in [0, 1], got [{array.min()}, {array.max()}]"
            )
        return np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"image arrays must be uint8 or float in [0, 1], got dtype {array.dtype}")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    """HW, HW1, HW3 or HW4 (channels-last) array -> RGB PIL image."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(
            f"image arrays must be HW, HW1, HW3 or HW4 (channels last), got shape {array.shape}"
        )
    if min(array.shape[:2]) == 0:
        raise ValueError(f"image array is empty, shape {array.shape}")
    array = _array_to_uint8(array)
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.shape[-1] == 4:
        # transformers' numpy branch of convert_to_rgb: blend onto white, then round.
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _load_file(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode a file (PIL decodes lazily: truncation would otherwise surface later,
    far from the file name), upright by its EXIF orientation and converted by
    `pil_to_rgb_array`, as the training and evaluation readers do. (transformers' processor
    ignores EXIF orientation and clips 16-bit files: see pil_to_rgb_array.)"""
    from PIL import ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image file {os.fspath(path)!r}: {e}") from e


def to_rgb(image) -> Image.Image:
    """Any supported single image -> RGB uint8 PIL image."""
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, (str, pathlib.Path)):
        return _load_file(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise ValueError(
        "unsupported image input: expected a PIL image, a file path or a numpy array, "
        f"got {type(image).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# Geometry, as transformers computes it
# ---------------------------------------------------------------------------------------------


def resize_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side = short_side and the long side truncated with int(),
    as transformers' get_resize_output_image_size (torchvision's old rule, not round())."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Crop an HWC array to size x size; the offsets floor as in transformers' center_crop. The
    resized image's short side already equals size, so the padding branch there never applies."""
    height, width = array.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return array[top : top + size, left : left + size]


def _preprocess_one(image, image_size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    rgb = to_rgb(image)
    new_h, new_w = resize_shape(rgb.height, rgb.width, image_size)
    resized = np.asarray(rgb.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
    crop = center_crop(resized, image_size)
    # transformers' rescale: multiply in float64, then cast; normalise in float32.
    pixels = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (pixels - mean) / std


def image_list(images) -> list:
    """One image or a batch -> a non-empty list. A list/tuple or a 4-D array is a batch."""
    is_batch = isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)
    images = list(images) if is_batch else [images]
    if not images:
        raise ValueError("no images given")
    return images


def preprocess_images(images, image_size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """(B, image_size, image_size, 3) float32 NHWC pixels for CLIP.

    ``images``: one or a list of PIL images (any mode; transparency goes onto white), file paths,
    uint8 HWC arrays, float HWC arrays in [0, 1], or grayscale HW arrays.
    """
    images = image_list(images)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return np.stack([_preprocess_one(image, image_size, mean, std) for image in images])


def resize_images(images, height: int, width: int, resample: str = "bilinear", mean=IMAGENET_MEAN,
                  std=IMAGENET_STD) -> np.ndarray:
    """(B, height, width, 3) float32 NHWC: each whole image resized to height x width (the aspect
    ratio is not kept and nothing is cropped) with PIL's `resample` filter, then x/255 and
    (x - mean) / std -- pixel for pixel what transformers' ``ViTImageProcessor`` does with its PIL
    backend (``ViTImageProcessorPil``; the torchvision backend resizes tensors and can differ by
    a grey level). The defaults are that processor's: bilinear, ImageNet mean/std. ``images`` as
    for ``preprocess_images``."""
    filt = Image.Resampling(RESAMPLE[resample_name(resample)])
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out = []
    for image in image_list(images):
        rgb = to_rgb(image)
        resized = np.asarray(rgb.resize((width, height), resample=filt))
        pixels = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
        out.append((pixels - mean) / std)
    return np.stack(out)


def hf_image_processor(image_size: int = 224, mean=CLIP_MEAN, std=CLIP_STD):
    """transformers' CLIP image processor with this module's settings, for exported checkpoints.

    The PIL backend needs no torchvision, and saves ``"image_processor_type": "CLIPImageProcessor"``
    so CLIPImageProcessor / AutoImageProcessor / AutoProcessor.from_pretrained all load it.
    """
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(mean),
        image_std=list(std),
    )


__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "RESAMPLE", "preprocess_images", "resize_images",
           "hf_image_processor", "to_rgb", "resize_shape", "resample_name", "image_list"]
