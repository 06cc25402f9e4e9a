"""Image ops inside the tf.data graph: decode, resize-with-pad, and openpi's training augmentation.

Augmentation follows openpi's JAX training recipe (augmax, applied per example): for cameras
whose name does not contain "wrist": random crop to 95 % of the side, resize back, rotate by
U(-5°, 5°); for every camera: colour jitter with brightness 0.3, contrast 0.4, saturation 0.5.
It runs here, once per example and seeded by (seed, example index), so teacher and student see
exactly the same pixels; the model must therefore be called without its own augmentation.
"""
from __future__ import annotations

import math

import tensorflow as tf

CROP_FRACTION = 0.95
MAX_ROTATION_DEG = 5.0
BRIGHTNESS, CONTRAST, SATURATION = 0.3, 0.4, 0.5
_GRAY = (0.299, 0.587, 0.114)


def decode(image) -> tf.Tensor:
    """Encoded bytes (JPEG/PNG/...) → uint8 [H, W, 3]; raw uint8 tensors pass through."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=3, expand_animations=False, dtype=tf.uint8)
    return image


def resize_with_pad(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [h, w, 3] → uint8 [size, size, 3]; same geometry as openpi's PIL resize_with_pad.

    The scale factor and the resized extent are computed in float64 exactly as Python does, so the
    padding lands on the same rows/columns as openpi's; the pixel values agree with PIL's bilinear
    filter to within a couple of uint8 levels (tests measure it).
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    target = tf.constant(float(size), tf.float64)
    ratio = tf.maximum(w / target, h / target)
    new_h = tf.cast(tf.floor(h / ratio), tf.int32)
    new_w = tf.cast(tf.floor(w / ratio), tf.int32)

    def _resize():
        resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
        resized = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
        top, left = (size - new_h) // 2, (size - new_w) // 2
        return tf.image.pad_to_bounding_box(resized, top, left, size, size)

    same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    out = tf.cond(same, lambda: tf.cast(image, tf.uint8), _resize)
    return tf.ensure_shape(out, [size, size, 3])


def _rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Rotate about the image centre, bilinear, black outside (maps output pixels to input pixels)."""
    size = tf.shape(image)[:2]
    cy = (tf.cast(size[0], tf.float32) - 1.0) / 2.0
    cx = (tf.cast(size[1], tf.float32) - 1.0) / 2.0
    c, s = tf.cos(angle), tf.sin(angle)
    transform = tf.stack([c, s, cx - c * cx - s * cy, -s, c, cy + s * cx - c * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=size, fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    return out[0]


def _gray(image: tf.Tensor) -> tf.Tensor:
    return tf.tensordot(image, tf.constant(_GRAY, tf.float32), axes=[[-1], [0]])[..., None]


def augment(image: tf.Tensor, seed: tf.Tensor, geometric: bool) -> tf.Tensor:
    """float32 [R, R, 3] in [0, 1] → augmented, same shape; `seed` is a stateless seed [2]."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    size = image.shape[0]
    if geometric:
        crop = int(size * CROP_FRACTION)
        image = tf.image.stateless_random_crop(image, [crop, crop, 3], seed=seeds[0])
        image = tf.image.resize(image, [size, size], method="bilinear")
        max_rad = MAX_ROTATION_DEG * math.pi / 180.0
        angle = tf.random.stateless_uniform([], seeds[1], minval=-max_rad, maxval=max_rad)
        image = _rotate(image, angle)
    b = tf.random.stateless_uniform([], seeds[2], 1.0 - BRIGHTNESS, 1.0 + BRIGHTNESS)
    image = tf.clip_by_value(image * b, 0.0, 1.0)
    c = tf.random.stateless_uniform([], seeds[3], 1.0 - CONTRAST, 1.0 + CONTRAST)
    mean = tf.reduce_mean(_gray(image))
    image = tf.clip_by_value((image - mean) * c + mean, 0.0, 1.0)
    s = tf.random.stateless_uniform([], seeds[4], 1.0 - SATURATION, 1.0 + SATURATION)
    gray = _gray(image)
    image = tf.clip_by_value(gray + (image - gray) * s, 0.0, 1.0)
    return tf.ensure_shape(image, [size, size, 3])


def to_model_range(image_uint8: tf.Tensor) -> tf.Tensor:
    return tf.cast(image_uint8, tf.float32) / 255.0 * 2.0 - 1.0
