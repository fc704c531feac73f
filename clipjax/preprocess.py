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


# ---------------------------------------------------------------------------------------------
# Input -> RGB uint8 PIL image
# ---------------------------------------------------------------------------------------------


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb for PIL: transparency is composited onto white (a bare
    ``convert("RGB")`` would keep the hidden colour of transparent pixels, often black)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


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
    far from the file name)."""
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_rgb(image)
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


def preprocess_images(images, image_size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """(B, image_size, image_size, 3) float32 NHWC pixels for CLIP.

    ``images``: one or a list of PIL images (any mode; transparency goes onto white), file paths,
    uint8 HWC arrays, float HWC arrays in [0, 1], or grayscale HW arrays.
    """
    # A 4-D array is a batch; anything else that is not a list/tuple is one image.
    is_batch = isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)
    images = list(images) if is_batch else [images]
    if not images:
        raise ValueError("no images given")
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return np.stack([_preprocess_one(image, image_size, mean, std) for image in images])


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


__all__ = ["CLIP_MEAN", "CLIP_STD", "preprocess_images", "hf_image_processor", "to_rgb", "resize_shape"]
