"""The user's own frames as a dataset: a folder of images with whatever labels there are.

Layout (ROOT = config.data_dir):
  ROOT/classes.txt (or .json)    class names in id order, one per line, each optionally
                                 followed by its colour: `chair 255 0 0` or `chair #ff0000`
  ROOT/intrinsics.json           optional {"fx", "fy", "cx", "cy"} in pixels at the images'
                                 size; kept in the trained weights for metric 3D output
  ROOT/train/images/NAME.{jpg,jpeg,png}
  ROOT/train/segm/NAME.png       optional: class ids (8-bit grey or palette PNG, 255 = ignore),
                                 or RGB colours of the classes file (black = ignore, unless a
                                 class has that colour)
  ROOT/train/depth/NAME.{png,npy,tiff,tif}  optional: 16-bit PNG (or 16-bit TIFF) divided by
                                 `depth_scale` (1000 for millimetres), or float metres (.npy,
                                 32-bit float TIFF); 0, negative or non-finite = invalid; a
                                 float frame whose range says millimetres stops (MM_MEDIAN)
  ROOT/val/...                   optional: else a seeded `val_fraction` of train

Any image may have either label, both or none; images may differ in size, but a label's size
must be its image's. A frame's key is "SPLITDIR/NAME" (teacher labels are stored by key).
Hidden files (`.NAME`: macOS's `._NAME.jpg`, unfinished `.tmp-*` writes) are skipped; a file
that is a symbolic link out of ROOT is refused, naming it (links within ROOT are fine). The
classes file is read up to MAX_CLASSES_BYTES.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
from typing import Any, Sequence

import numpy as np

from hydrajax.data import pngio
from hydrajax.data.palettes import generic_palette
from hydrajax.data.pngio import BadSampleError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SEGM_EXTS = (".png",)
DEPTH_EXTS = (".png", ".npy", ".tiff", ".tif")
SPLITS = ("train", "val")
IGNORE = 255
DEFAULT_DEPTH_SCALE = 1000.0
MAX_CLASSES_BYTES = 1 << 20  # a classes file is read up to this size, no further
# Float depth is metres: a frame whose median valid depth is above MM_MEDIAN metres while
# its nearest 1% is beyond MM_NEAR metres reads as millimetres (a sky-heavy outdoor frame in
# metres still has ground near the camera).
MM_MEDIAN, MM_NEAR = 100.0, 10.0
_ORIENTATION = 0x0112  # the EXIF tag
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


class FolderError(ValueError):
  """The folder breaks the layout: the message names the file(s) at fault."""


@dataclasses.dataclass(frozen=True)
class Classes:
  """names: class names, id order; palette: (C, 3) uint8 (given colours, generic ones for
  the rest); path: the classes file; coloured: which classes have a colour in the file."""
  names: tuple[str, ...]
  palette: np.ndarray
  path: str
  coloured: tuple[bool, ...]


@dataclasses.dataclass(frozen=True)
class Frame:
  """One image and its label files (None where absent); split_dir: "train" or "val"."""
  split_dir: str
  name: str
  image: str
  segm: str | None = None
  depth: str | None = None

  @property
  def key(self) -> str:
    return f"{self.split_dir}/{self.name}"

  def files(self) -> list[str]:
    return [p for p in (self.image, self.segm, self.depth) if p]


# --- the classes file and intrinsics ----------------------------------------------------


def outside_root(path: str, root: str) -> str | None:
  """Where `path` really is (symbolic links followed) when that is outside `root`, else None."""
  real, real_root = os.path.realpath(path), os.path.realpath(root)
  return real if os.path.commonpath([real, real_root]) != real_root else None


def _outside_message(path: str, target: str, root: str) -> str:
  return (f"{path}: a symbolic link out of the dataset root {root} (to {target}): refused; "
          f"copy the file into the folder")


def classes_path(root: str) -> str | None:
  """ROOT/classes.txt or ROOT/classes.json (FolderError if both, or if it links out of
  ROOT), or None."""
  found = [os.path.join(root, f"classes{e}") for e in (".txt", ".json")
           if os.path.isfile(os.path.join(root, f"classes{e}"))]
  if len(found) > 1:
    raise FolderError(f"{found[0]} and {found[1]}: two classes files; keep one")
  if found and outside_root(found[0], root):
    raise FolderError(_outside_message(found[0], outside_root(found[0], root), root))
  return found[0] if found else None


def read_classes(root: str) -> Classes | None:
  """The folder's classes (None without a classes file); FolderError naming the file and
  line for a bad entry."""
  if not root or not os.path.isdir(root):
    return None
  path = classes_path(root)
  if path is None:
    return None
  st = os.stat(path)
  return _read_classes(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_classes(path: str, mtime_ns: int, size: int) -> Classes:
  del mtime_ns, size  # cache keys: a changed file is read again
  try:
    with open(path, "rb") as f:
      data = f.read(MAX_CLASSES_BYTES + 1)  # never more: the file may be anything
    if len(data) > MAX_CLASSES_BYTES:
      raise FolderError(f"{path}: larger than {MAX_CLASSES_BYTES // 1024} KiB: not a classes "
                        f"file (at most {IGNORE} class names, one per line)")
    text = data.decode("utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise FolderError(f"{path}: cannot read the classes file ({e})") from e
  entries = _parse_json(path, text) if path.endswith(".json") else _parse_txt(path, text)
  if not entries:
    raise FolderError(f"{path}: no class names (one per line, in id order)")
  names = [n for n, _ in entries]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise FolderError(f"{path}: class name(s) listed twice: {', '.join(dup)}")
  colours = [c for _, c in entries if c is not None]
  if len(set(colours)) != len(colours):
    raise FolderError(f"{path}: two classes share a colour: colour masks would be ambiguous")
  palette = generic_palette(len(entries)).copy()
  for i, (_, colour) in enumerate(entries):
    if colour is not None:
      palette[i] = colour
  return Classes(tuple(names), palette, path, tuple(c is not None for _, c in entries))


def _colour(path: str, where: str, value: Any) -> tuple[int, int, int]:
  if isinstance(value, str) and _HEX.match(value):
    return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
  if (isinstance(value, (list, tuple)) and len(value) == 3
      and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
    return tuple(value)
  raise FolderError(f"{path}: {where}: colour {value!r} is not R G B (0-255) or #rrggbb")


def _too_many(path: str) -> FolderError:
  return FolderError(f"{path}: more than {IGNORE} classes; at most {IGNORE} (ids 0..254, "
                     f"255 = ignore)")


def _parse_txt(path: str, text: str) -> list[tuple[str, tuple | None]]:
  entries = []
  for n, line in enumerate(text.splitlines(), 1):
    tokens = line.split()
    if not tokens or tokens[0].startswith("#"):
      continue
    if len(entries) == IGNORE:
      raise _too_many(path)
    colour = None
    if _HEX.match(tokens[-1]) and len(tokens) > 1:
      colour, tokens = _colour(path, f"line {n}", tokens[-1]), tokens[:-1]
    elif len(tokens) > 3 and all(re.fullmatch(r"-?\d+", t) for t in tokens[-3:]):
      colour = _colour(path, f"line {n}", [int(t) for t in tokens[-3:]])
      tokens = tokens[:-3]
    entries.append((" ".join(tokens), colour))
  return entries


def _parse_json(path: str, text: str) -> list[tuple[str, tuple | None]]:
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise FolderError(f"{path}: not JSON ({e})") from e
  if isinstance(data, dict):
    data = data.get("classes")
  if not isinstance(data, list):
    raise FolderError(f'{path}: expected a list of class names or {{"name", "color"}} '
                      f'objects (or {{"classes": [...]}})')
  if len(data) > IGNORE:
    raise _too_many(path)
  entries = []
  for i, item in enumerate(data):
    if isinstance(item, str):
      entries.append((item, None))
    elif isinstance(item, dict) and isinstance(item.get("name"), str):
      colour = item.get("color", item.get("colour"))
      entries.append((item["name"], None if colour is None else
                      _colour(path, f"class {i}", colour)))
    else:
      raise FolderError(f'{path}: entry {i} ({item!r}) is neither a name nor {{"name": ..., '
                        f'"color": [r, g, b]}}')
    if not entries[-1][0].strip():
      raise FolderError(f"{path}: entry {i} has an empty name")
  return entries


def read_intrinsics(root: str) -> dict | None:
  """ROOT/intrinsics.json as {"fx", "fy", "cx", "cy"} floats (pixels), or None if absent;
  FolderError naming the file and key otherwise."""
  path = os.path.join(root, "intrinsics.json") if root else ""
  if not path or not os.path.isfile(path):
    return None
  if outside_root(path, root):
    raise FolderError(_outside_message(path, outside_root(path, root), root))
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise FolderError(f"{path}: cannot read intrinsics ({e})") from e
  if not isinstance(data, dict):
    raise FolderError(f'{path}: expected {{"fx": ..., "fy": ..., "cx": ..., "cy": ...}}')
  out = {}
  for key in ("fx", "fy", "cx", "cy"):
    value = data.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (key in ("fx", "fy") and value <= 0) or value < 0:
      raise FolderError(f"{path}: {key}={value!r}: expected a "
                        f"{'positive' if key in ('fx', 'fy') else 'non-negative'} number of "
                        f"pixels")
    out[key] = float(value)
  for key in ("width", "height"):
    if key in data:
      if not isinstance(data[key], int) or data[key] <= 0:
        raise FolderError(f"{path}: {key}={data[key]!r}: expected a positive int (pixels)")
      out[key] = data[key]
  return out


# --- finding the files --------------------------------------------------------------------


@dataclasses.dataclass
class Scan:
  """The folder's frames per split directory, and what is wrong with the file names.

  problems: (path, message) that stop training; orphans: label files without an image;
  ignored: files of unsupported types (not an error).
  """
  root: str
  frames: dict[str, list[Frame]]
  problems: list[tuple[str, str]]
  orphans: list[str]
  ignored: list[str]
  has_val: bool


def _listing(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory)
                if not n.startswith(".") and os.path.isfile(os.path.join(directory, n)))


def _by_stem(directory: str, exts: Sequence[str], scan: Scan) -> dict[str, str]:
  """{stem: path} of the files with `exts`; two files of one stem, or a file that links out
  of the root, are a problem."""
  out: dict[str, str] = {}
  for name in _listing(directory):
    stem, ext = os.path.splitext(name)
    path = os.path.join(directory, name)
    if ext.lower() not in exts:
      scan.ignored.append(path)
      continue
    target = outside_root(path, scan.root)
    if target:
      scan.problems.append((path, _outside_message(path, target, scan.root)))
      continue
    if stem in out:
      scan.problems.append((path, f"two files for frame {stem!r}: {out[stem]} and {path}; "
                                  f"keep one"))
      continue
    out[stem] = path
  return out


def scan(root: str) -> Scan:
  """Lists ROOT/{train,val}/{images,segm,depth}; FolderError if ROOT has no train images."""
  if not os.path.isdir(root):
    raise FolderError(f"{root}: not a directory (the folder dataset's root)")
  result = Scan(root, {}, [], [], [], os.path.isdir(os.path.join(root, "val", "images")))
  for split in SPLITS:
    base = os.path.join(root, split)
    images = _by_stem(os.path.join(base, "images"), IMAGE_EXTS, result)
    segm = _by_stem(os.path.join(base, "segm"), SEGM_EXTS, result)
    depth = _by_stem(os.path.join(base, "depth"), DEPTH_EXTS, result)
    result.orphans += sorted(p for labels in (segm, depth) for s, p in labels.items()
                             if s not in images)
    result.frames[split] = [Frame(split, s, images[s], segm.get(s), depth.get(s))
                            for s in sorted(images)]
  if not result.frames["train"]:
    raise FolderError(f"{os.path.join(root, 'train', 'images')}: no images "
                      f"({', '.join(IMAGE_EXTS)}); expected ROOT/train/images/NAME.jpg with "
                      f"optional ROOT/train/segm/NAME.png and ROOT/train/depth/NAME.png")
  return result


def split_frames(s: Scan, split: str, val_fraction: float = 0.1, seed: int = 0) -> list[Frame]:
  """The frames of `split`: ROOT/val's if it exists, else a seeded `val_fraction` of
  ROOT/train's (at least one frame when train has two or more), train the rest."""
  if s.has_val:
    return list(s.frames[split])
  frames = s.frames["train"]
  n_val = min(len(frames) - 1, max(1, round(val_fraction * len(frames)))) if (
      val_fraction > 0 and len(frames) > 1) else 0
  chosen = set(np.random.default_rng(seed).permutation(len(frames))[:n_val].tolist())
  return [f for i, f in enumerate(frames) if (i in chosen) == (split == "val")]


# --- reading and checking files -----------------------------------------------------------


def header(path: str, image: bool = False) -> tuple[tuple[int, int], str]:
  """((H, W), kind) from the file's header only (cheap): kind is the PIL mode, or the
  dtype of a .npy; an `image`'s size upright (its EXIF orientation applied, as it is read).
  BadSampleError naming the file if it cannot be read."""
  try:
    if path.lower().endswith(".npy"):
      a = np.load(path, mmap_mode="r", allow_pickle=False)
      shape = a.shape[:2] if a.ndim == 3 and a.shape[2] == 1 else a.shape
      return tuple(shape), str(a.dtype)
    with pngio.open_image(path) as im:  # only the formats hydrajax reads
      hw = (im.height, im.width)
      if image and im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
        hw = hw[::-1]  # read upright (pngio.load_rgb): a quarter turn
      return hw, im.mode
  except Exception as e:  # noqa: BLE001 - PIL / numpy raise many types for a bad file
    raise BadSampleError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _check_kind(path: str, hw: tuple, kind: str, what: str) -> str | None:
  """What is wrong with a label's header (None if fine)."""
  if len(hw) != 2:
    return f"expected a single-channel {what} map, got shape {hw}"
  if what == "segm" and kind not in ("L", "P", "RGB", "RGBA", "1"):
    return (f"segmentation PNG of mode {kind}: expected 8-bit class ids (grey or palette) "
            f"or RGB colours")
  if what == "depth":
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy" and not np.issubdtype(np.dtype(kind), np.floating):
      return f"depth .npy of dtype {kind}: expected float metres"
    if ext == ".png" and kind not in ("I;16", "I;16B", "I;16L", "I"):
      return (f"depth PNG of mode {kind}: expected 16-bit (value / depth_scale = metres)")
    if ext in (".tif", ".tiff") and kind not in ("F", "I;16", "I;16B", "I;16L", "I"):
      return f"depth TIFF of mode {kind}: expected 32-bit float metres or 16-bit integers"
  return None


def check_headers(frame: Frame) -> list[tuple[str, str]]:
  """(path, problem) of a frame from its files' headers: unreadable files, labels of the
  wrong kind or of another size than the image (naming both files)."""
  try:
    hw, _ = header(frame.image, image=True)
  except BadSampleError as e:
    return [(frame.image, str(e))]
  problems = []
  for what, path in (("segm", frame.segm), ("depth", frame.depth)):
    if path is None:
      continue
    try:
      lhw, kind = header(path)
    except BadSampleError as e:
      problems.append((path, str(e)))
      continue
    bad = _check_kind(path, lhw, kind, what)
    if bad:
      problems.append((path, f"{path}: {bad}"))
    elif tuple(lhw) != tuple(hw):
      problems.append((path, f"{path}: size {lhw[1]}x{lhw[0]} differs from its image "
                             f"{frame.image} ({hw[1]}x{hw[0]})"))
  return problems


def read_image(path: str) -> np.ndarray:
  """(H, W, 3) uint8 RGB of any image file, upright (pngio.load_rgb: EXIF orientation
  applied, so labels drawn on the photo as shown line up)."""
  return pngio.load_rgb(path)


def read_segm(path: str, hw: Sequence[int], classes: Classes | None) -> np.ndarray:
  """(H, W) uint8 class ids, 255 = ignore: grey / palette PNGs as ids, RGB through the
  classes' colours (black = ignore unless a class's colour; other colours are an error)."""
  a = pngio.read_png(path)
  pngio.check_shape(path, a, hw)
  if a.dtype == bool:
    a = a.astype(np.uint8)
  if a.ndim == 2:
    if a.dtype != np.uint8:
      raise BadSampleError(f"{path}: expected 8-bit class ids, got {a.dtype}")
    return a
  if a.ndim != 3 or a.shape[2] not in (3, 4):
    raise BadSampleError(f"{path}: expected class ids or RGB colours, got shape {a.shape}")
  if classes is None:
    raise BadSampleError(f"{path}: an RGB colour mask needs the colours of ROOT/classes.txt "
                         f"(`name R G B` per line)")
  return colours_to_ids(a[..., :3], classes.palette, path)


def colours_to_ids(rgb: np.ndarray, palette: np.ndarray, path: str = "<array>") -> np.ndarray:
  """(H, W, 3) uint8 colours -> (H, W) uint8 ids of `palette`'s rows; black -> 255 unless
  a class's colour; BadSampleError naming `path` and the colours that are no class's."""
  code = lambda c: (c[..., 0].astype(np.int64) << 16) | (c[..., 1].astype(np.int64) << 8) | c[..., 2]
  keys = code(np.asarray(palette, np.uint8))
  values = np.arange(len(keys), dtype=np.int64)
  if 0 not in keys:
    keys, values = np.append(keys, 0), np.append(values, IGNORE)
  order = np.argsort(keys)
  keys, values = keys[order], values[order]
  pixels = code(rgb)
  pos = np.clip(np.searchsorted(keys, pixels), 0, len(keys) - 1)
  found = keys[pos] == pixels
  if not found.all():
    bad = np.unique(pixels[~found])[:5]
    shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in bad.tolist())
    raise BadSampleError(f"{path}: colour(s) {shown} are no class's colour in the classes "
                         f"file (black = ignore)")
  return values[pos].astype(np.uint8)


def read_depth(path: str, hw: Sequence[int], depth_scale: float) -> np.ndarray:
  """(H, W) float32 metres, 0 = invalid: 16-bit PNG / TIFF divided by `depth_scale`, .npy
  and 32-bit float TIFF as metres; negative and non-finite values become 0."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    try:
      a = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a bad file
      raise BadSampleError(f"cannot decode {path}: {e}") from e
    if a.ndim == 3 and a.shape[2] == 1:
      a = a[..., 0]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
      raise BadSampleError(f"{path}: expected (H, W) float metres, got {a.dtype} {a.shape}")
    metres = _float_metres(path, a)
  else:
    a = pngio.read_png(path)
    if a.ndim != 2:
      raise BadSampleError(f"{path}: expected a single-channel depth map, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
      metres = _float_metres(path, a)
    elif a.dtype in (np.uint16, np.int32, np.uint32, np.int16) or (
        a.dtype == np.uint8 and ext in (".tif", ".tiff")):
      metres = a.astype(np.float32) / np.float32(depth_scale)
    else:
      raise BadSampleError(f"{path}: expected 16-bit depth (value / depth_scale = metres), "
                           f"got {a.dtype}")
  pngio.check_shape(path, metres, hw)
  return np.where(np.isfinite(metres) & (metres > 0), metres, 0).astype(np.float32)


def _float_metres(path: str, a: np.ndarray) -> np.ndarray:
  """A float depth map as float32 metres; BadSampleError when its range says millimetres
  (MM_MEDIAN, MM_NEAR)."""
  metres = a.astype(np.float32)
  valid = metres[np.isfinite(metres) & (metres > 0)]
  if valid.size:
    near, median = np.percentile(valid, [1, 50])
    if median > MM_MEDIAN and near > MM_NEAR:
      raise BadSampleError(f"{path}: float depth of median {median:.4g} and nearest 1% beyond "
                           f"{near:.4g} looks like millimetres, but float depth is metres: "
                           f"save it divided by 1000")
  return metres


# --- the source ---------------------------------------------------------------------------


class Folder:
  """Random-access source of one split of a folder dataset (see the module docstring).

  At construction it lists the files and reads every header of the split (cheap, no
  decoding): a bad file raises FolderError naming it, or with `skip_bad` the frame is
  dropped and counted in `num_skipped` (orphans then only warn).
  """

  def __init__(self, root: str, split: str = "train", *, depth_scale: float = DEFAULT_DEPTH_SCALE,
               val_fraction: float = 0.1, split_seed: int = 0, skip_bad: bool = False):
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    self.root, self.split, self.depth_scale = root, split, float(depth_scale)
    self.classes = read_classes(root)
    self.intrinsics = read_intrinsics(root)
    found = scan(root)
    frames = split_frames(found, split, val_fraction, split_seed)
    problems = list(found.problems) + (
        [(p, f"{p}: a label without an image (expected {_image_for(p)})")
         for p in found.orphans])
    bad_frames = set()
    for f in frames:
      for path, message in check_headers(f):
        problems.append((path, message))
        bad_frames.add(f.key)
      if f.segm and self.classes is None:
        problems.append((f.segm, f"{f.segm}: segmentation labels need ROOT/classes.txt (one "
                                 f"class name per line, in id order)"))
        bad_frames.add(f.key)
    self.num_skipped = len(bad_frames)
    if problems and not skip_bad:
      first = problems[0][1]
      more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
      raise FolderError(f"{first}{more}. `hydrajax-data check {root}` lists everything; "
                        f"--config.folder.skip_bad=True skips bad frames")
    if problems:
      log.warning("folder %s: skipped %d bad frame(s) of %s and %d orphan label(s); first: %s",
                  root, self.num_skipped, split, len(found.orphans), problems[0][1])
    self.frames = [f for f in frames if f.key not in bad_frames]
    if not self.frames:
      raise FolderError(f"{root}: no usable {split} frame (of {len(frames)})")
    self.num_classes = len(self.classes.names) if self.classes else 0
    self.has_normals = False

  def __len__(self) -> int:
    return len(self.frames)

  def key(self, index: int) -> str:
    return self.frames[index].key

  def files(self, index: int) -> list[str]:
    return self.frames[index].files()

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < len(self.frames):
      raise IndexError(index)
    f = self.frames[index]
    image = read_image(f.image)
    hw = image.shape[:2]
    return {
        "image": image,
        "segm": read_segm(f.segm, hw, self.classes) if f.segm else np.full(hw, IGNORE, np.uint8),
        "depth": read_depth(f.depth, hw, self.depth_scale) if f.depth else np.zeros(hw, np.float32),
    }


def _image_for(label_path: str) -> str:
  base = os.path.dirname(os.path.dirname(label_path))
  stem = os.path.splitext(os.path.basename(label_path))[0]
  return os.path.join(base, "images", stem + ".{jpg,jpeg,png}")


def from_config(config: Any, split: str) -> Folder:
  """The `folder` dataset of a config (config.data_dir, config.folder.*)."""
  f = config.folder
  return Folder(config.data_dir, split, depth_scale=f.depth_scale, val_fraction=f.val_fraction,
                split_seed=f.split_seed, skip_bad=f.skip_bad)


def camera(root: str) -> dict | None:
  """ROOT/intrinsics.json with "width" and "height" (from the first training image when the
  file does not give them), or None without the file."""
  k = read_intrinsics(root)
  if k is None or ("width" in k and "height" in k):
    return k
  (h, w), _ = header(scan(root).frames["train"][0].image, image=True)
  return {**k, "width": k.get("width", w), "height": k.get("height", h)}
