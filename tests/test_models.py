"""Architecture: exact parameter counts, output shapes for odd sizes, tasks, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hydrajax
from hydrajax.models import HydraNet


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("num_classes,tasks,expected", [
    (40, ("segm", "depth"), 3_070_057),
    (6, ("segm", "depth"), 2_991_687),
    (46, ("segm", "depth"), 3_083_887),
    (40, ("segm", "depth", "normals"), 3_077_228),
])
def test_parameter_count_matches_official_model(num_classes, tasks, expected):
  model = HydraNet(num_classes=num_classes, tasks=tasks)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert _count(shapes["params"]) == expected
  assert _count(shapes["params"]["encoder"]) == 1_812_800


def test_hydrajax_init_gives_same_tree_as_flax_init():
  variables = hydrajax.init(0, num_classes=6)
  model = HydraNet(num_classes=6)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert jax.tree.structure(shapes) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(variables)):
    assert a.shape == b.shape and a.dtype == b.dtype


def test_init_is_deterministic_per_key_and_differs_across_keys():
  a, b, c = (hydrajax.init(k, num_classes=6) for k in (jax.random.key(1), jax.random.key(1),
                                                      jax.random.key(2)))
  ka = a["params"]["decoder"]["conv3"]["kernel"]
  np.testing.assert_array_equal(ka, b["params"]["decoder"]["conv3"]["kernel"])
  assert not np.array_equal(ka, c["params"]["decoder"]["conv3"]["kernel"])
  # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in of conv3 is 24.
  assert np.abs(ka).max() <= 1 / np.sqrt(24) and np.abs(ka).max() > 0.9 / np.sqrt(24)


@pytest.mark.parametrize("tasks", [("depth",), ("segm",), ("segm", "depth", "normals")])
def test_task_subsets_have_only_their_heads(tasks):
  variables = hydrajax.init(0, num_classes=5, tasks=tasks)
  cfg = hydrajax.model_config(variables)
  assert cfg["tasks"] == tasks
  heads = {k for k in variables["params"] if k.startswith("head_")}
  assert len(heads) == len(tasks)


def test_raw_outputs_are_quarter_resolution_for_odd_sizes():
  model = HydraNet(num_classes=7, tasks=("segm", "depth", "normals"))
  x = jnp.zeros((2, 97, 131, 3))
  shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x)[0])
  assert shapes["segm"].shape == (2, 25, 33, 7)  # ceil(97/4), ceil(131/4)
  assert shapes["depth"].shape == (2, 25, 33)
  assert shapes["normals"].shape == (2, 25, 33, 3)


def test_unknown_task_is_rejected():
  with pytest.raises(ValueError, match="tasks must be"):
    hydrajax.init(0, tasks=("segm", "flow"))


def test_train_mode_updates_batch_stats(variables):
  model = hydrajax.model_from_variables(variables)
  x = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  old = variables["batch_stats"]["encoder"]["layer1"]["bn"]["mean"]
  new = updates["batch_stats"]["encoder"]["layer1"]["bn"]["mean"]
  assert new.shape == old.shape and not np.allclose(new, old)
