"""PSNR and SSIM on the Y channel, as published SR tables compute them."""

from __future__ import annotations

import numpy as np


def _shave(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:-border, border:-border] if border > 0 else a


def quantize(y: np.ndarray) -> np.ndarray:
    """What an 8-bit output image would hold."""
    return np.clip(np.round(y), 0, 255)


def psnr(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    diff = _shave(sr.astype(np.float64), border) - _shave(hr.astype(np.float64), border)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size) - (size - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation, 'valid' region only (MATLAB filter2(..., 'valid'))."""
    k = len(g)
    rows = sum(g[i] * a[i : a.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(g[j] * rows[:, j : rows.shape[1] - k + 1 + j] for j in range(k))


def ssim(sr: np.ndarray, hr: np.ndarray, border: int = 0) -> float:
    x = _shave(sr.astype(np.float64), border)
    y = _shave(hr.astype(np.float64), border)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gaussian_window()
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))
