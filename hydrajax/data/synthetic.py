"""Procedural indoor scenes: a box room with furniture, ray-cast from a random camera.

The embedded default dataset: every sample is generated in memory (numpy only, no files, no
downloads), deterministically from `(seed, index)`, with consistent RGB, per-pixel class,
metric depth and surface normals. Classes are told apart by colour, texture and geometry, so a
small network learns them in minutes on a CPU, while per-sample colour jitter, shading and
noise keep the task from being a colour lookup.

Conventions: camera frame x right, y down, z forward (OpenCV). `depth` is the z-distance of
the hit point in metres (like a Kinect depth map, not the ray length). `normals` are unit
vectors in the camera frame pointing towards the camera.
"""

from __future__ import annotations

import numpy as np

SYNTHETIC_CLASSES = ("floor", "wall", "ceiling", "cabinet", "table", "picture", "ball")
FLOOR, WALL, CEILING, CABINET, TABLE, PICTURE, BALL = range(len(SYNTHETIC_CLASSES))

# Base colours (RGB, 0..1) per class; each sample jitters them.
_BASE_COLOURS = np.array(
    [
        [0.55, 0.38, 0.22],  # floor: wood
        [0.80, 0.78, 0.70],  # wall: beige
        [0.95, 0.95, 0.95],  # ceiling: white
        [0.20, 0.35, 0.60],  # cabinet: blue
        [0.45, 0.22, 0.12],  # table: dark wood
        [0.75, 0.20, 0.25],  # picture: red frame/canvas
        [0.25, 0.65, 0.25],  # ball: green
    ],
    dtype=np.float32,
)


def _box_hits(origin: np.ndarray, inv: tuple, lo, hi, inside: bool = False):
  """Slab test of rays against an axis-aligned box; `inv` = (1/dx, 1/dy, 1/dz), each (N,).

  Returns (t, tmins/tmaxs): the hit distance along the rays (inf where missed) and the three
  per-axis slab entries (or exits with `inside`, for the room around the camera), from which
  the face hit is the argmax (argmin) on the few rays that need it. Per-axis (N,) arrays
  instead of (N, 3) reductions are much faster in numpy.
  """
  t1 = [(lo[k] - origin[k]) * inv[k] for k in range(3)]
  t2 = [(hi[k] - origin[k]) * inv[k] for k in range(3)]
  if inside:
    tmax = [np.maximum(a, b) for a, b in zip(t1, t2)]
    return np.minimum(np.minimum(tmax[0], tmax[1]), tmax[2]), tmax
  tmin = [np.minimum(a, b) for a, b in zip(t1, t2)]
  near = np.maximum(np.maximum(tmin[0], tmin[1]), tmin[2])
  far = np.minimum(np.minimum(np.maximum(t1[0], t2[0]), np.maximum(t1[1], t2[1])), np.maximum(t1[2], t2[2]))
  return np.where((near <= far) & (near > 1e-4), near, np.inf), tmin


def _sphere_hits(origin: np.ndarray, dirs: np.ndarray, centre, radius: float):
  """Ray-sphere intersection: (t, outward unit normal) with t = inf where missed."""
  oc = origin - np.asarray(centre, np.float32)
  a = np.einsum("ij,ij->i", dirs, dirs)
  b = 2.0 * (dirs @ oc)
  c = oc @ oc - radius * radius
  disc = b * b - 4 * a * c
  with np.errstate(invalid="ignore"):
    t = (-b - np.sqrt(disc)) / (2 * a)
  t = np.where((disc >= 0) & (t > 1e-4), t, np.inf)
  return t


def _layout(rng: np.random.Generator):
  """Random room size, furniture (class, box lo, box hi) and balls (centre, radius)."""
  w, d, h = rng.uniform(4.0, 7.0), rng.uniform(4.0, 8.0), rng.uniform(2.5, 3.2)
  room = (np.array([-w / 2, 0.0, -d / 2]), np.array([w / 2, h, d / 2]))
  boxes, balls = [], []
  for _ in range(rng.integers(2, 5)):  # cabinets against a wall (x = +-w/2 or z = +-d/2)
    cw, cd, ch = rng.uniform(0.5, 1.5), rng.uniform(0.4, 0.7), rng.uniform(0.6, 2.0)
    side = rng.integers(4)
    along = rng.uniform(-0.5, 0.5)
    if side < 2:
      x0 = -w / 2 if side == 0 else w / 2 - cd
      z0 = along * (d - cw)
      boxes.append((CABINET, [x0, 0, z0], [x0 + cd, ch, z0 + cw]))
    else:
      z0 = -d / 2 if side == 2 else d / 2 - cd
      x0 = along * (w - cw)
      boxes.append((CABINET, [x0, 0, z0], [x0 + cw, ch, z0 + cd]))
  for _ in range(rng.integers(1, 3)):  # tables: a top and four legs
    tx, tz = rng.uniform(-w / 4, w / 4), rng.uniform(-d / 4, d / 4)
    tw, td, th = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.6, 0.8)
    boxes.append((TABLE, [tx, th - 0.05, tz], [tx + tw, th, tz + td]))
    for lx, lz in ((tx, tz), (tx + tw - 0.06, tz), (tx, tz + td - 0.06), (tx + tw - 0.06, tz + td - 0.06)):
      boxes.append((TABLE, [lx, 0, lz], [lx + 0.06, th - 0.05, lz + 0.06]))
    if rng.random() < 0.5:
      r = rng.uniform(0.1, 0.2)
      balls.append(([tx + tw / 2, th + r, tz + td / 2], r))
  for _ in range(rng.integers(2, 5)):  # pictures: thin boxes on the walls
    pw, ph, py = rng.uniform(0.6, 1.5), rng.uniform(0.4, 1.0), rng.uniform(1.1, 1.6)
    side = rng.integers(4)
    if side < 2:
      x0 = -w / 2 if side == 0 else w / 2 - 0.03
      z0 = rng.uniform(-d / 2 + 0.1, d / 2 - pw - 0.1)
      boxes.append((PICTURE, [x0, py, z0], [x0 + 0.03, py + ph, z0 + pw]))
    else:
      z0 = -d / 2 if side == 2 else d / 2 - 0.03
      x0 = rng.uniform(-w / 2 + 0.1, w / 2 - pw - 0.1)
      boxes.append((PICTURE, [x0, py, z0], [x0 + pw, py + ph, z0 + 0.03]))
  for _ in range(rng.integers(1, 4)):  # balls on the floor
    r = rng.uniform(0.15, 0.4)
    balls.append(([rng.uniform(-w / 3, w / 3), r, rng.uniform(-d / 3, d / 3)], r))
  return room, boxes, balls


def _camera(rng: np.random.Generator, room, boxes, balls):
  """A camera position in free space near the room's edge, looking inwards.

  Returns (origin (3,), rotation (3, 3)) with rotation columns = camera x (right),
  y (down), z (forward) in world coordinates (world y is up).
  """
  lo, hi = room
  for _ in range(20):
    pos = np.array([rng.uniform(lo[0] + 0.3, hi[0] - 0.3), rng.uniform(1.0, 1.7),
                    rng.uniform(lo[2] + 0.3, hi[2] - 0.3)])
    free = all(np.any(pos < np.array(a) - 0.2) or np.any(pos > np.array(b) + 0.2) for _, a, b in boxes)
    free &= all(np.linalg.norm(pos - np.array(c)) > r + 0.2 for c, r in balls)
    if free:
      break
  # Look roughly towards the room centre, with jitter.
  to_centre = -pos[[0, 2]]
  yaw = np.arctan2(to_centre[0], to_centre[1]) + rng.uniform(-0.6, 0.6)
  pitch = rng.uniform(-0.5, 0.25)  # radians, negative = looking down
  fwd = np.array([np.sin(yaw) * np.cos(pitch), np.sin(pitch), np.cos(yaw) * np.cos(pitch)])
  right = np.cross(fwd, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  down = np.cross(fwd, right)
  return pos.astype(np.float32), np.stack([right, down, fwd], axis=1).astype(np.float32)


def _texture(cls: np.ndarray, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Per-pixel brightness factor from world hit points `p` (N, 3): stripes, checks, grain."""
  f = np.ones(cls.shape, np.float32)
  floor = cls == FLOOR
  period = rng.uniform(0.15, 0.35)
  f[floor] = 0.85 + 0.15 * np.sign(np.sin(np.pi * p[floor, 0] / period))  # planks
  wall = cls == WALL
  f[wall] = 0.95 + 0.05 * np.sin(7.0 * p[wall, 1] + 3.0 * (p[wall, 0] + p[wall, 2]))
  cab = cls == CABINET
  f[cab] = np.where(np.abs(np.sin(np.pi * p[cab, 1] / 0.35)) < 0.08, 0.6, 1.0)  # drawers
  pic = cls == PICTURE
  f[pic] = 0.8 + 0.2 * np.sin(9.0 * (p[pic, 0] + p[pic, 1] + p[pic, 2]))
  return f


class SyntheticScenes:
  """Random-access source of synthetic indoor samples (Grain `MapDataset.source` ready).

  Each item is a dict: `image` uint8 (H, W, 3), `segm` uint8 (H, W) in 0..6, `depth`
  float32 (H, W) metres (> 0 everywhere), and `normals` float32 (H, W, 3) if `with_normals`.
  """

  num_classes = len(SYNTHETIC_CLASSES)

  def __init__(self, num_samples: int = 1000, height: int = 120, width: int = 160, *,
               seed: int = 0, fov_deg: float = 60.0, noise: float = 6.0, with_normals: bool = False):
    self.num_samples, self.height, self.width = num_samples, height, width
    self.seed, self.noise, self.has_normals = seed, noise, with_normals
    fx = (width / 2) / np.tan(np.deg2rad(fov_deg) / 2)  # horizontal field of view
    u = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / fx
    v = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / fx
    uu, vv = np.meshgrid(u, v)
    # Camera-frame ray directions with z = 1, so the hit parameter t is the z-depth.
    self._rays = np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size, np.float32)], axis=1)

  def __len__(self) -> int:
    return self.num_samples

  def key(self, index: int) -> str:
    return f"synthetic_{self.seed}_{index:06d}"

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_samples:
      raise IndexError(index)
    rng = np.random.default_rng([self.seed, int(index)])
    room, boxes, balls = _layout(rng)
    origin, rot = _camera(rng, room, boxes, balls)
    dirs = self._rays @ rot.T  # world-frame directions (N, 3), unnormalised
    n = dirs.shape[0]

    with np.errstate(divide="ignore", over="ignore"):
      inv = tuple(np.float32(1.0) / dirs[:, k] for k in range(3))
    t, tmax = _box_hits(origin, inv, *room, inside=True)
    axis = np.argmin(np.stack(tmax, axis=1), axis=1)
    sign = np.sign(dirs[np.arange(n), axis])
    cls = np.where(axis == 1, np.where(sign < 0, FLOOR, CEILING), WALL).astype(np.uint8)
    normal = np.zeros((n, 3), np.float32)
    normal[np.arange(n), axis] = -sign  # room faces point inwards
    for c, lo, hi in boxes:
      tb, tmin = _box_hits(origin, inv, lo, hi)
      closer = np.flatnonzero(tb < t)
      t[closer] = tb[closer]
      cls[closer] = c
      ab = np.argmax(np.stack([m[closer] for m in tmin], axis=1), axis=1)
      normal[closer] = 0.0
      normal[closer, ab] = -np.sign(dirs[closer, ab])
    for centre, r in balls:
      ts = _sphere_hits(origin, dirs, centre, r)
      closer = ts < t
      t = np.where(closer, ts, t)
      cls[closer] = BALL
      normal[closer] = (origin + ts[closer, None] * dirs[closer] - np.asarray(centre, np.float32)) / r

    p = origin + t[:, None] * dirs
    colours = np.clip(_BASE_COLOURS + rng.normal(0, 0.04, _BASE_COLOURS.shape), 0, 1).astype(np.float32)
    light = np.array([0.3, 1.0, 0.5], np.float32)
    light /= np.linalg.norm(light)
    shade = 0.6 + 0.4 * np.abs(normal @ light)
    brightness = rng.uniform(0.7, 1.1) * shade * _texture(cls, p, rng) / (1.0 + 0.03 * t)
    rgb = colours[cls] * brightness[:, None] * 255.0
    rgb += rng.normal(0.0, self.noise, rgb.shape).astype(np.float32)

    h, w = self.height, self.width
    sample = {
        "image": np.clip(rgb, 0, 255).astype(np.uint8).reshape(h, w, 3),
        "segm": cls.reshape(h, w),
        "depth": t.astype(np.float32).reshape(h, w),
    }
    if self.has_normals:
      sample["normals"] = (normal @ rot).astype(np.float32).reshape(h, w, 3)  # world -> camera
    return sample
