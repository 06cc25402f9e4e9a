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
