"""How hard a JPEG was compressed, read from its own quantization tables (no pixels decoded).

Encoders that follow the IJG reference (libjpeg, Pillow, most web tools and phones' software
paths) scale the standard tables of the JPEG spec (Annex K) by a quality from 1 to 100. The
estimate is the quality whose scaled tables are nearest to the file's, in log ratio, so an
encoder with tables of its own still lands near the IJG quality of the same strength.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np

# The JPEG spec's example tables (ITU T.81, Annex K), natural (row-major) order.
LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)


@cache
def _scaled() -> np.ndarray:
    """[100, 2, 64]: the IJG tables at qualities 1..100 (baseline: clamped to 1..255)."""
    out = np.empty((100, 2, 64), np.float64)
    base = np.array([LUMA, CHROMA], np.float64)
    for q in range(1, 101):
        s = 5000 / q if q < 50 else 200 - 2 * q
        out[q - 1] = np.clip(np.floor((base * s + 50) / 100), 1, 255)
    return out


def estimate(tables: Mapping[int, Sequence[int]] | None) -> int | None:
    """The IJG quality (1-100) nearest to a JPEG's tables (Pillow's `image.quantization`);
    None without usable tables."""
    if not tables:
        return None
    found = [np.asarray(tables[k], np.float64) for k in sorted(tables)[:2]]
    if any(t.shape != (64,) or t.min() < 1 for t in found):
        return None
    ref = _scaled()[:, :len(found)]
    err = np.abs(np.log(ref) - np.log(np.stack(found))[None]).sum(axis=(1, 2))
    return int(np.argmin(err)) + 1


def of_image(img: object) -> int | None:
    """The estimate for an opened Pillow image: JPEGs only, None for every other format."""
    if getattr(img, "format", None) != "JPEG":
        return None
    return estimate(getattr(img, "quantization", None))
