"""The one-update table of docs/testing.md: hydrajax's training step against the authors'
network trained in PyTorch, float64, from the same converted weights (tests/helpers/train_parity.py).

  python benchmarks/train_parity.py                         # 8 rooms at 120x160, 1 device
  python benchmarks/train_parity.py --devices 2             # synchronised BatchNorm
  python benchmarks/train_parity.py --size 64 96 --steps 2 --rate 0.1

Prints, after each update, the loss and the worst max-difference relative to each tensor's
max among parameters, BatchNorm running means and running variances (with that tensor).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--count", type=int, default=8, help="rooms in the batch")
  parser.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
  parser.add_argument("--devices", type=int, default=1, help="fake CPU devices (pmap)")
  parser.add_argument("--steps", type=int, default=1, help="updates (the poly schedule's)")
  parser.add_argument("--rate", type=float, default=1.0, help="x the recipe's learning rates")
  args = parser.parse_args(argv)
  # Before JAX starts: fake devices and 64-bit floats.
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      f"--xla_force_host_platform_device_count={args.devices}"])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax
  jax.config.update("jax_enable_x64", True)
  import torch

  from tests.helpers import train_parity

  torch.set_num_threads(1)
  with tempfile.TemporaryDirectory() as tmp:
    net, npz = train_parity.official_weights(tmp)
    batch = train_parity.rooms(args.count, *args.size)
    config = train_parity.recipe(npz, args.steps, args.rate, args.count)
    ours, losses = train_parity.run_hydrajax(config, batch, args.devices)
    ref, ref_losses = train_parity.run_torch(net, config, batch)
  print(f"{args.count} rooms at {args.size[0]}x{args.size[1]}, {args.devices} device(s), "
        f"rates x{args.rate}, float64")
  for step in range(args.steps):
    print(f"\nafter update {step + 1}:\n| quantity | max difference relative to the tensor's max "
          f"| worst tensor |\n|---|---|---|")
    loss_rel = abs(losses[step] - ref_losses[step]) / abs(ref_losses[step])
    print(f"| step-{step + 1} loss | {loss_rel:.1e} | |")
    rows = train_parity.table(train_parity.relative_differences(ours[step], ref[step]))
    for title, (value, name) in rows.items():
      print(f"| {title} | {value:.1e} | `{name}` |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
