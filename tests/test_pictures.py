"""The evaluation picture: a title row, then image | true/pred segm | true/pred depth."""
import os

import numpy as np
from PIL import Image

from hydrajax.inference import pictures


def _sample(seed, h=32, w=48):
  rng = np.random.default_rng(seed)
  depth = rng.uniform(0.5, 4.0, (h, w)).astype(np.float32)
  segm = rng.integers(0, 7, (h, w)).astype(np.uint8)
  return dict(image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), segm=segm,
              pred_segm=segm, depth=depth, pred_depth=depth * 0.5)


def test_grid_has_title_row_and_one_row_of_five_cells_per_example(tmp_path):
  path = str(tmp_path / "eval" / "samples.png")
  pictures.save_grid(path, [_sample(0), _sample(1)], max_depth=4.0)
  grid = np.asarray(Image.open(path).convert("RGB"))
  gap = 4
  assert grid.shape[1] == 5 * 48 + 4 * gap
  title = grid.shape[0] - 2 * (32 + gap)
  assert 10 <= title <= 40, grid.shape  # the title strip, then the two example rows
  assert (grid[:title - gap] < 128).any()  # some title text is drawn
  np.testing.assert_array_equal(grid[title:title + 32, :48], _sample(0)["image"])
  # Same depth scale for truth and prediction: half the depth is a different colour.
  truth = grid[title:title + 32, 3 * (48 + gap):3 * (48 + gap) + 48]
  pred = grid[title:title + 32, 4 * (48 + gap):4 * (48 + gap) + 48]
  assert np.abs(truth.astype(int) - pred).mean() > 10
  assert os.listdir(tmp_path / "eval") == ["samples.png"]  # written atomically, no leftovers
