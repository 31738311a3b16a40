"""The real sample frames in tests/data (NYUDv2 and KITTI, with ground truth)."""
import os

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
NYUD = os.path.join(DATA, "nyud", "000464_rgb.png")
KITTI = os.path.join(DATA, "kitti", "000099_rgb.png")
