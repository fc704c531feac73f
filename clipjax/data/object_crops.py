"""Crops and visual prompts of one object of an image, given its mask: what both CLIPSeg
training sources (clipjax_shapes' objects, and other datasets through the segmentation
adapter) make of each example."""

from __future__ import annotations



def _bbox(mask):
    """(y0, x0, y1, x1) float of a (H, W) 0/1 mask (whole image when empty)."""
    import tensorflow as tf

    h, w = tf.shape(mask)[0], tf.shape(mask)[1]
    ys = tf.where(tf.reduce_any(mask > 0, axis=1))[:, 0]
    xs = tf.where(tf.reduce_any(mask > 0, axis=0))[:, 0]
    empty = tf.equal(tf.size(ys), 0)
    return tf.cond(empty, lambda: tf.cast(tf.stack([0, 0, h, w]), tf.float32),
                   lambda: tf.cast(tf.stack([tf.reduce_min(ys), tf.reduce_min(xs), tf.reduce_max(ys) + 1,
                                             tf.reduce_max(xs) + 1]), tf.float32))


def crop_keeping(image, mask, seed, out_size: int, crop_scale=(0.75, 1.0)):
    """Random square crop (side a `crop_scale` fraction of the short side) with the mask's
    bounding box inside when it fits; resized."""
    import tensorflow as tf

    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    side = tf.minimum(h, w) * tf.random.stateless_uniform([], seed, crop_scale[0], crop_scale[1])
    y0, x0, y1, x1 = tf.unstack(_bbox(mask))
    u = tf.random.stateless_uniform([2], seed + 1, 0.0, 1.0)

    def start(lo, hi, r, s):  # keep [lo, hi) inside [a, a + side) when possible, within [0, s - side]
        a_min = tf.maximum(0.0, hi - side)
        a_max = tf.minimum(s - side, lo)
        a_max = tf.maximum(a_max, a_min)
        return a_min + r * (a_max - a_min)

    top, left = start(y0, y1, u[0], h), start(x0, x1, u[1], w)
    box = tf.stack([top / h, left / w, (top + side) / h, (left + side) / w])[None]
    img = tf.image.crop_and_resize(tf.cast(image, tf.float32)[None], box, [0], [out_size, out_size],
                                   method="bilinear")[0]
    m = tf.image.crop_and_resize(tf.cast(mask, tf.float32)[None, :, :, None], box, [0], [out_size, out_size],
                                 method="bilinear")[0, :, :, 0]
    return img, tf.cast(m > 0.5, tf.float32)


def visual_prompt(image, mask, out_size: int):
    """The object's bounding-box crop, background at 10% brightness and blurred (0-255 float)."""
    import tensorflow as tf

    img = tf.cast(image, tf.float32)
    blur = tf.nn.avg_pool2d(img[None], 5, 1, "SAME")[0]
    m = tf.cast(mask, tf.float32)[:, :, None]
    vp = m * img + (1.0 - m) * 0.1 * blur
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    y0, x0, y1, x1 = tf.unstack(_bbox(mask))
    half = tf.maximum(y1 - y0, x1 - x0) * 0.6 + 2.0
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    box = tf.stack([(cy - half) / h, (cx - half) / w, (cy + half) / h, (cx + half) / w])[None]
    return tf.image.crop_and_resize(vp[None], box, [0], [out_size, out_size], method="bilinear",
                                    extrapolation_value=0.0)[0]
