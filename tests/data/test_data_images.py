"""The tf.data resize matches openpi's PIL resize_with_pad; augmentation is a pure function of its seed."""
import numpy as np
import pytest
import tensorflow as tf

from shallow_pi_jax.data import tf_image, transforms


@pytest.mark.parametrize("hw", [(256, 256), (180, 320), (100, 150), (64, 64), (224, 224)])
def test_tf_resize_with_pad_matches_pil_within_one_level(hw):
    h, w = hw
    rng = np.random.default_rng(h * w)
    y, x = np.mgrid[0:h, 0:w]
    img = np.clip(np.stack([x % 256, y % 256, (x * y) % 256], -1) * 0.5 + rng.normal(0, 20, (h, w, 3)) + 60,
                  0, 255).astype(np.uint8)
    want = transforms.resize_with_pad(img, 224, 224).astype(int)
    got = tf_image.resize_with_pad(tf.constant(img), 224).numpy().astype(int)
    assert got.shape == want.shape == (224, 224, 3)
    assert np.abs(got - want).max() <= 1
    # Same letterbox rows/columns as openpi.
    np.testing.assert_array_equal((got == 0).all(-1), (want == 0).all(-1))


def test_augment_is_deterministic_in_seed_and_stays_in_range():
    img = tf.random.stateless_uniform([32, 32, 3], seed=[0, 1])
    a = tf_image.augment(img, tf.constant([5, 6], tf.int64), geometric=True).numpy()
    b = tf_image.augment(img, tf.constant([5, 6], tf.int64), geometric=True).numpy()
    c = tf_image.augment(img, tf.constant([5, 7], tf.int64), geometric=True).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.shape == (32, 32, 3)


@pytest.mark.parametrize("value", [np.nan, np.inf, -0.5, 1.5, 255.0])
def test_float_images_outside_unit_range_are_refused_not_wrapped(value):
    img = np.full((8, 8, 3), 0.5, np.float32)
    img[3, 4, 1] = value
    with pytest.raises(ValueError, match=r"cam: a float image must hold finite values in \[0, 1\]"):
        transforms.as_uint8_hwc(img, "cam")
    np.testing.assert_array_equal(transforms.as_uint8_hwc(np.full((8, 8, 3), 1.0, np.float32), "cam"), 255)


def test_empty_image_is_refused_before_the_resize_divides_by_zero():
    with pytest.raises(ValueError, match=r"non-empty image, got shape \(0, 0, 3\)"):
        transforms.resize_with_pad(np.zeros((0, 0, 3), np.uint8), 224, 224)
