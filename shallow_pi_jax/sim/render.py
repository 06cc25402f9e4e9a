"""Pure-numpy rasteriser for the reach task: a top-down table camera and a wrist camera.

Both cameras are the same orthographic view of the world with a different centre and extent:
the main camera sees the whole table, the wrist camera a window centred on the end-effector
(`zoom` times closer), so it shows the fine offset between gripper and object. A pixel takes a
shape's colour when its centre lies inside the shape (hard edges, no anti-aliasing), which keeps
frames exactly reproducible. Rectangles are slice assignments and round shapes only touch their
bounding box, so a 64x64 frame takes tens of microseconds.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from shallow_pi_jax.sim.scene import PALETTE, Scene, SceneConfig

# Mid-grey: 0 in the model's [-1, 1] pixel space. A beige table (205, 190, 160) was a large constant
# component of every patch, so a from-scratch ViT's patch tokens were near-identical (cosine 0.97 at
# init, 0.998 after training) and the policy never learned to look at the objects.
TABLE_RGB = (128, 128, 128)
FLOOR_RGB = (60, 60, 66)  # outside the table; only the wrist camera sees it
EE_RGB = (25, 25, 25)
EE_RING = (0.045, 0.085)  # inner/outer radius: a ring, so the object under the gripper stays visible
FINGER_OFFSET, FINGER_HALF = 0.13, (0.025, 0.06)  # wrist camera only: the two gripper fingers

# As uint8 arrays once, so drawing does not convert tuples on every call.
_PALETTE = {name: np.array(rgb, dtype=np.uint8) for name, rgb in PALETTE.items()}
_TABLE, _EE = np.array(TABLE_RGB, dtype=np.uint8), np.array(EE_RGB, dtype=np.uint8)


@functools.lru_cache(maxsize=8)
def _floor(size: int) -> np.ndarray:
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[...] = FLOOR_RGB
    image.flags.writeable = False  # shared template: render_view copies it
    return image


class _View:
    """Maps world coordinates to pixel index ranges of one camera (pixel c has centre x0 + c * pixel)."""

    def __init__(self, size: int, centre, half_extent: float):
        self.size = size
        self.pixel = 2.0 * half_extent / size
        self.x0 = float(centre[0]) - half_extent + 0.5 * self.pixel  # centre of column 0
        self.y0 = float(centre[1]) + half_extent - 0.5 * self.pixel  # centre of row 0 (the top)

    def _range(self, start: float, lo: float, hi: float, sign: float) -> tuple[int, int]:
        # Indices i with lo <= start + sign * i * pixel <= hi, clipped to the image.
        a, b = (lo - start) / self.pixel, (hi - start) / self.pixel
        if sign < 0:
            a, b = -b, -a
        return max(math.ceil(a), 0), min(math.floor(b) + 1, self.size)

    def cols(self, lo: float, hi: float):
        return self._range(self.x0, lo, hi, 1.0)

    def rows(self, lo: float, hi: float):
        return self._range(self.y0, lo, hi, -1.0)

    def fill_rect(self, image, lo, hi, rgb):
        c0, c1 = self.cols(lo[0], hi[0])
        r0, r1 = self.rows(lo[1], hi[1])
        if c0 < c1 and r0 < r1:
            image[r0:r1, c0:c1] = rgb

    def fill_annulus(self, image, centre, r_in: float, r_out: float, rgb):
        cx, cy = centre
        c0, c1 = self.cols(cx - r_out, cx + r_out)
        r0, r1 = self.rows(cy - r_out, cy + r_out)
        if c0 >= c1 or r0 >= r1:
            return
        dx = self.x0 + np.arange(c0, c1) * self.pixel - cx
        dy = self.y0 - np.arange(r0, r1) * self.pixel - cy
        d2 = dx[None, :] ** 2 + dy[:, None] ** 2
        mask = d2 <= r_out * r_out
        if r_in > 0:
            mask &= d2 >= r_in * r_in
        np.copyto(image[r0:r1, c0:c1], rgb, where=mask[..., None])


def render_view(scene: Scene, ee, size: int, centre=(0.0, 0.0), half_extent: float = 1.0,
                object_size: float = SceneConfig.object_size, fingers: bool = False) -> np.ndarray:
    """Renders the scene with the end-effector at `ee` as uint8 [size, size, 3]."""
    view = _View(size, centre, half_extent)
    image = _floor(size).copy()
    view.fill_rect(image, (-1.0, -1.0), (1.0, 1.0), _TABLE)
    s = object_size
    for (px, py), colour, shape in zip(scene.positions.tolist(), scene.colours, scene.shapes):
        if shape == "block":
            view.fill_rect(image, (px - s, py - s), (px + s, py + s), _PALETTE[colour])
        elif shape == "ball":
            view.fill_annulus(image, (px, py), 0.0, s, _PALETTE[colour])
        else:
            raise ValueError(f"shape: expected 'block' or 'ball', got {shape!r}")
    ex, ey = float(ee[0]), float(ee[1])
    view.fill_annulus(image, (ex, ey), EE_RING[0], EE_RING[1], _EE)
    if fingers:
        hx, hy = FINGER_HALF
        for fx in (ex - FINGER_OFFSET, ex + FINGER_OFFSET):
            view.fill_rect(image, (fx - hx, ey - hy), (fx + hx, ey + hy), _EE)
    return image


def render_main(scene: Scene, ee, size: int, object_size: float = SceneConfig.object_size) -> np.ndarray:
    """Top-down camera over the whole table."""
    return render_view(scene, ee, size, object_size=object_size)


def render_wrist(scene: Scene, ee, size: int, zoom: float = 2.0,
                 object_size: float = SceneConfig.object_size) -> np.ndarray:
    """Camera on the gripper: a window of half-width 1/zoom centred on the end-effector."""
    if zoom <= 0:
        raise ValueError(f"zoom: expected > 0, got {zoom}")
    return render_view(scene, ee, size, centre=(float(ee[0]), float(ee[1])), half_extent=1.0 / zoom,
                       object_size=object_size, fingers=True)
