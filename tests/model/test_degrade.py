"""The training-time degradation pipeline: each step does what it says, the defaults are
bounded, a seed fixes the batch, and the evaluation chains parse strictly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model import degrade
from model.degrade import Chain, Degradations, parse_chain
from tests.helpers import set5_crop


def _photo() -> np.ndarray:
    return np.asarray(set5_crop("butterfly", (0, 0, 96, 96)))


def _detail(rgb: np.ndarray) -> float:
    """High-frequency energy: mean squared difference of neighbours."""
    a = rgb.astype(np.float64)
    return float(((a[1:] - a[:-1]) ** 2).mean() + ((a[:, 1:] - a[:, :-1]) ** 2).mean())


def test_gaussian_kernels_are_normalised_and_anisotropic_when_asked() -> None:
    iso = degrade.gaussian_kernel(1.0)
    assert iso.sum() == pytest.approx(1.0) and np.allclose(iso, iso.T)
    wide = degrade.gaussian_kernel(2.0, 0.5, 0.0, radius=6)
    # Spread along x (columns) is larger than along y (rows) when theta is 0.
    ax = np.arange(-6, 7)
    var_x, var_y = (wide.sum(axis=0) * ax**2).sum(), (wide.sum(axis=1) * ax**2).sum()
    assert var_x > 4 * var_y
    turned = degrade.gaussian_kernel(2.0, 0.5, np.pi / 2, radius=6)
    np.testing.assert_allclose(turned, wide.T, atol=1e-12)


def test_blur_removes_detail_and_keeps_the_mean() -> None:
    hr = _photo()
    soft = degrade.blur(hr, degrade.gaussian_kernel(1.2))
    assert soft.shape == hr.shape and soft.dtype == np.uint8
    assert _detail(soft) < 0.6 * _detail(hr)
    assert abs(float(soft.mean()) - float(hr.mean())) < 1.0


def test_downscale_kernels_differ_and_bicubic_is_the_protocols() -> None:
    hr = _photo()
    outs = {k: degrade.downscale(hr, 3, k) for k in degrade.KERNELS}
    assert all(o.shape == (32, 32, 3) for o in outs.values())
    protocol = np.asarray(Image.fromarray(hr).resize((32, 32), Image.BICUBIC))
    np.testing.assert_array_equal(outs["bicubic"], protocol)
    assert not np.array_equal(outs["bicubic"], outs["area"])
    assert not np.array_equal(outs["bilinear"], outs["area"])


def test_noise_has_its_sigma_and_its_shape() -> None:
    flat = np.full((128, 128, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    noisy = degrade.add_noise(flat, 6.0, rng).astype(np.float64) - 128
    assert noisy.std() == pytest.approx(6.0, rel=0.05)
    gray = degrade.add_noise(flat, 6.0, rng, gray=True)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    # Signal-dependent: none on black, the full sigma on white (clipping aside: mid-high).
    ramp = np.zeros((128, 128, 3), np.uint8)
    ramp[64:] = 230
    shot = degrade.add_noise(ramp, 8.0, rng, poisson=True).astype(np.float64) - ramp
    assert shot[:64].std() == 0.0
    assert shot[64:].std() == pytest.approx(8.0 * np.sqrt(230 / 255), rel=0.06)


def test_jpeg_costs_more_at_lower_quality_and_subsamples_colour() -> None:
    lr = degrade.downscale(_photo(), 2)
    err = {q: np.abs(degrade.jpeg(lr, q).astype(float) - lr).mean() for q in (30, 60, 95)}
    assert err[30] > err[60] > err[95] > 0
    full = degrade.jpeg(lr, 90, "4:4:4")
    sub = degrade.jpeg(lr, 90, "4:2:0")
    assert np.abs(full.astype(float) - lr).mean() < np.abs(sub.astype(float) - lr).mean()


def test_default_ranges_are_bounded_and_bad_ones_refused() -> None:
    d = Degradations()
    assert 0 < d.blur_sigma[0] <= d.blur_sigma[1] <= 2.0
    assert 0 <= d.noise_sigma[0] <= d.noise_sigma[1] <= 10.0
    assert 30 <= d.jpeg_quality[0] <= d.jpeg_quality[1] <= 95
    assert set(d.kernels) == {"bicubic", "bilinear", "area"} and 0 < d.clean < 0.5
    assert Degradations.from_dict(d.to_dict()) == d
    for bad in ({"jpeg": 1.5}, {"noise_sigma": (0, 60)}, {"jpeg_quality": (5, 90)},
                {"blur_sigma": (0.0, 1.0)}, {"kernels": {"lanczos": 1.0}}):
        with pytest.raises(ValueError):
            Degradations(**bad)  # type: ignore[arg-type]


def test_sampled_chains_cover_every_step_within_the_ranges() -> None:
    hr = _photo()
    rng = np.random.default_rng(3)
    d = Degradations()
    clean = degrade.downscale(hr, 2)
    outs = [d.sample(hr, 2, rng) for _ in range(200)]
    assert all(o.shape == (48, 48, 3) and o.dtype == np.uint8 for o in outs)
    same = sum(np.array_equal(o, clean) for o in outs)
    # The clean share (0.2) plus the chains that change nothing (no blur, bicubic, no noise,
    # no JPEG): 0.8 * (0.8 * 0.6 * 0.6 * 0.2) more, about 0.25 in all.
    assert 25 <= same <= 75, same
    # Bounded damage, even on this busy crop (its worst chains measured about 15 levels).
    assert all(np.abs(o.astype(float) - clean).mean() < 25 for o in outs)
    only_clean = Degradations(clean=1.0)
    assert all(np.array_equal(only_clean.sample(hr, 2, rng), clean) for _ in range(5))


def test_a_fixed_seed_gives_the_same_batch(set5: Path) -> None:
    from model.data import PatchSampler

    def batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
        return PatchSampler([set5], 2, 24, seed=seed, degradations=Degradations()).batch(8)

    a, b, c = batch(5), batch(5), batch(6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_evaluation_chains_parse_in_photo_order() -> None:
    c = parse_chain("jpeg:75,noise:5")
    assert c == Chain(noise=5.0, jpeg=75) and c.name == "noise:5,jpeg:75"
    assert parse_chain("clean") == Chain() and Chain().name == "clean"
    assert parse_chain("blur:1.0").blur == 1.0
    for bad in ("jpeg", "jpeg:abc", "jpeg:75.5", "jpeg:0", "sharpen:1", "noise:5,noise:6",
                "blur:9"):
        with pytest.raises(ValueError):
            parse_chain(bad)
    hr = _photo()
    one, two = c.apply(hr, 2, index=0), c.apply(hr, 2, index=0)
    assert np.array_equal(one, two)  # the same noise each run
    assert not np.array_equal(one, c.apply(hr, 2, index=1))
    assert np.array_equal(Chain().apply(hr, 2), degrade.downscale(hr, 2))
