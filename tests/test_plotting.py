"""Sample grids and learning curves are written as PNGs of the expected layout."""

from __future__ import annotations

import numpy as np
import pytest

from artifex_rl.plotting import _tile, save_learning_curve, save_sample_grid


def _png_size(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape[:2]


def test_tile_places_images_row_by_row_on_a_blank_background():
    images = [np.full((2, 2), float(i)) for i in range(5)]
    canvas = _tile([images[:3], images[3:]], 2, 2)
    assert canvas.shape == (2 * 3 + 1, 3 * 3 + 1)
    np.testing.assert_array_equal(canvas[1:3, 4:6], 1.0)  # row 0, column 1
    np.testing.assert_array_equal(canvas[4:6, 1:3], 3.0)  # row 1, column 0
    np.testing.assert_array_equal(canvas[4:6, 7:9], -1.0)  # row 1 has only two images
    assert canvas[0].max() == -1.0 and canvas[:, 3].max() == -1.0  # gaps


def test_save_sample_grid_conditional_and_unconditional(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.5, 1.5, (40, 8, 8, 1)).astype(np.float32)  # out-of-range values are clipped
    labels = np.repeat(np.arange(4), 10)
    by_class = save_sample_grid(images, str(tmp_path / "sub" / "by_class.png"), labels=labels, title="t")
    plain = save_sample_grid(images[:16], str(tmp_path / "plain.png"), nrow=2)
    for path in (by_class, plain):
        height, width = _png_size(path)
        assert height > 20 and width > 20
    # 4 rows of 10 are wider than tall; 2 rows of 8 even more so.
    h, w = _png_size(by_class)
    assert w > h


def test_save_sample_grid_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"images must have shape \(N, H, W, 1\)"):
        save_sample_grid(np.zeros((4, 8, 8, 3)), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        save_sample_grid(np.zeros((4, 8, 8, 1)), str(tmp_path / "x.png"), labels=np.zeros(3))
    with pytest.raises(ValueError, match="nrow must be a positive int"):
        save_sample_grid(np.zeros((4, 8, 8, 1)), str(tmp_path / "x.png"), nrow=0)


def test_save_learning_curve(tmp_path):
    steps = np.arange(10)
    path = save_learning_curve(
        steps, {"loss": np.exp(-steps), "cfd": 1 + np.exp(-steps)}, str(tmp_path / "c.png"), log_y=True
    )
    assert min(_png_size(path)) > 100
    with pytest.raises(ValueError, match=r"curves\['loss'\] has shape \(3,\), expected \(10,\)"):
        save_learning_curve(steps, {"loss": np.zeros(3)}, str(tmp_path / "c.png"))
