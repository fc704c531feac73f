"""tf.data image transforms for CLIP training and evaluation.

Training (`train_transform`): open_clip's default training transform, in TensorFlow:
RandomResizedCrop(image_size, scale=(0.9, 1.0), ratio=(3/4, 4/3), interpolation=bicubic), then
to float in [0, 1] and CLIP mean/std. The crop follows torchvision's algorithm (10 tries of an
area fraction drawn uniformly in `scale` and a log-uniform aspect ratio, the first that fits
wins; else a centre crop at the clamped ratio), with all randomness *stateless*, drawn from
(seed, example index): the same example index always gets the same crop, so a resumed run sees
exactly the pixels an uninterrupted one would. The resize is `tf.image.resize(...,
method="bicubic", antialias=True)` kernel (Keys cubic, a = -0.5) applied to the crop window of the
whole image, rounded to uint8: close to but not bit-identical with torchvision's or PIL's
bicubic; training does not need parity with either. The stream ships uint8 and normalises on
the device.

Evaluation: `eval_transform` runs `clipjax.preprocess.preprocess_images` (PIL bicubic resize of
the short side, centre crop, CLIP mean/std) through `tf.numpy_function`, so it IS identical to
the inference preprocessing. `eval_transform_tf` is a pure-TensorFlow approximation (no Python
in the graph, faster, parallel); exact parity with `clipjax.preprocess` is NOT claimed for it.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from clipjax.preprocess import CLIP_MEAN, CLIP_STD, preprocess_images

DEFAULT_SCALE = (0.9, 1.0)  # open_clip's default RandomResizedCrop scale for CLIP training
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_TRIES = 10


def example_seed(seed, index, salt: int = 0) -> tf.Tensor:
    """Stateless-RNG seed (int32 shape (2,)) for example `index` under run `seed`; `salt`
    separates independent draws (crop, caption choice, ...) of the same example."""
    index = tf.cast(index, tf.int64)
    lo = tf.cast(tf.bitwise.bitwise_and(index, 0x7FFFFFFF), tf.int32)
    hi = tf.cast(tf.bitwise.right_shift(index, 31), tf.int32)
    base = tf.stack([tf.constant(int(seed) & 0x7FFFFFFF, tf.int32), tf.constant(int(salt), tf.int32)])
    return tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(base, lo), hi)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """(H, W, C) with C in {1, 3, 4} -> (H, W, 3): grayscale tiled, alpha dropped."""
    c = tf.shape(image)[-1]
    return tf.case([(tf.equal(c, 1), lambda: tf.image.grayscale_to_rgb(image[..., :1])),
                    (tf.equal(c, 4), lambda: image[..., :3])], default=lambda: image[..., :3])


def random_resized_crop_window(seed, height, width, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO):
    """(top, left, h, w) int32 as torchvision's RandomResizedCrop.get_params draws it, from a
    stateless seed (all tries drawn at once, the first valid one taken)."""
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    area = h_f * w_f
    s_area, s_ratio, s_top, s_left = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    target = area * tf.random.stateless_uniform([_TRIES], s_area, scale[0], scale[1])
    log_r = tf.random.stateless_uniform([_TRIES], s_ratio, math.log(ratio[0]), math.log(ratio[1]))
    ar = tf.exp(log_r)
    ws = tf.cast(tf.round(tf.sqrt(target * ar)), tf.int32)
    hs = tf.cast(tf.round(tf.sqrt(target / ar)), tf.int32)
    ok = (ws > 0) & (hs > 0) & (ws <= width) & (hs <= height)
    any_ok = tf.reduce_any(ok)
    first = tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)

    # fallback: centre crop at the ratio clamped into `ratio`
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio < ratio[0], width, tf.where(
        in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width))
    fb_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), height)
    fb_w = tf.minimum(fb_w, width)
    fb_h = tf.minimum(fb_h, height)

    h = tf.where(any_ok, hs[first], fb_h)
    w = tf.where(any_ok, ws[first], fb_w)
    u_top = tf.random.stateless_uniform([], s_top, 0.0, 1.0)
    u_left = tf.random.stateless_uniform([], s_left, 0.0, 1.0)
    top_rand = tf.cast(tf.floor(u_top * tf.cast(height - h + 1, tf.float32)), tf.int32)
    left_rand = tf.cast(tf.floor(u_left * tf.cast(width - w + 1, tf.float32)), tf.int32)
    top = tf.where(any_ok, tf.minimum(top_rand, height - h), (height - h) // 2)
    left = tf.where(any_ok, tf.minimum(left_rand, width - w), (width - w) // 2)
    return top, left, h, w


def normalize(pixels01: tf.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> tf.Tensor:
    return (pixels01 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def train_crop_resize(image: tf.Tensor, seed, image_size: int, scale=DEFAULT_SCALE,
                      ratio=DEFAULT_RATIO) -> tf.Tensor:
    """uint8 (H, W, C) -> uint8 (image_size, image_size, 3): the random resized crop, drawn with
    the stateless `seed` (see `example_seed`), resized bicubic with antialiasing.

    One `ScaleAndTranslate` (the kernel behind `tf.image.resize(..., antialias=True)`) maps the
    crop window onto the output grid straight from the whole image, as PIL's `resize(box=...)`
    does: no copy of the crop, no float copy of the input, and filter taps near the window's
    edge read the real neighbouring pixels instead of a clamped border. The result is rounded
    to uint8 like PIL's / torchvision's bicubic output; shipping uint8 batches is 4x less host
    memory traffic than float32 (normalisation happens on the device, `normalize_on_device`)."""
    image = to_rgb(image)
    shape = tf.shape(image)
    top, left, h, w = random_resized_crop_window(seed, shape[0], shape[1], scale, ratio)
    sy = image_size / tf.cast(h, tf.float32)
    sx = image_size / tf.cast(w, tf.float32)
    out = tf.raw_ops.ScaleAndTranslate(
        images=image[None], size=tf.constant([image_size, image_size], tf.int32), scale=tf.stack([sy, sx]),
        translation=tf.stack([-tf.cast(top, tf.float32) * sy, -tf.cast(left, tf.float32) * sx]),
        kernel_type="keyscubic", antialias=True)[0]
    out = tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(out, (image_size, image_size, 3))


def train_transform(image: tf.Tensor, seed, image_size: int, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO,
                    mean=CLIP_MEAN, std=CLIP_STD) -> tf.Tensor:
    """uint8 (H, W, C) -> float32 (image_size, image_size, 3): `train_crop_resize`, then to
    [0, 1] and CLIP mean/std (what the training stream yields after `normalize_on_device`)."""
    out = tf.cast(train_crop_resize(image, seed, image_size, scale, ratio), tf.float32) / 255.0
    return normalize(out, mean, std)


def eval_transform(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 (H, W, C) -> float32 (image_size, image_size, 3) through
    `clipjax.preprocess.preprocess_images` (PIL; identical to inference preprocessing)."""
    def fn(arr):
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return preprocess_images(arr, image_size)[0].astype(np.float32)

    out = tf.numpy_function(fn, [image], tf.float32, stateful=False)
    return tf.ensure_shape(out, (image_size, image_size, 3))


def eval_transform_tf(image: tf.Tensor, image_size: int, mean=CLIP_MEAN, std=CLIP_STD) -> tf.Tensor:
    """Pure-TF resize of the short side (bicubic, antialias) + centre crop + CLIP mean/std.
    Same geometry as `clipjax.preprocess` (int() long side, floor crop offsets) but a different
    bicubic kernel implementation: close to, not identical with, `eval_transform`."""
    image = to_rgb(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    new_h = tf.where(w <= h, tf.cast(tf.floor(image_size * hf / wf), tf.int32), image_size)
    new_w = tf.where(w <= h, image_size, tf.cast(tf.floor(image_size * wf / hf), tf.int32))
    out = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]), method="bicubic", antialias=True)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    out = out[top:top + image_size, left:left + image_size]
    out = tf.clip_by_value(tf.round(out), 0.0, 255.0) / 255.0
    return tf.ensure_shape(normalize(out, mean, std), (image_size, image_size, 3))
