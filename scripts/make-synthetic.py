"""Regenerates tests/fixtures/synthetic/ (needs Pillow and numpy)."""
import os

import numpy as np
from PIL import Image

out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "synthetic")
h, w = 24, 32
arr = np.zeros((h, w, 3), np.uint8)
arr[:, :, 0] = np.linspace(0, 255, w)[None, :]
arr[:, :, 1] = np.linspace(0, 255, h)[:, None]
arr[:, :, 2] = 90
image = Image.fromarray(arr, "RGB")
image.save(os.path.join(out, "rgb_reference.png"))
image.convert("CMYK").save(os.path.join(out, "cmyk.jpg"), quality=95)
