"""The model contract: colour, scaling, metadata parsing, and proof that what the exporter
writes is what the service reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from model import contract
from tests.conftest import ROOT, WEIGHTS


def test_luma_and_colour_round_trip() -> None:
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [12, 200, 77]]], np.uint8)
    y = contract.rgb_to_y(rgb)
    assert y.dtype == np.float32 and contract.rgb_to_y(rgb, np.float64).dtype == np.float64
    assert y[0, :2] == pytest.approx([16.0, 235.0], abs=1e-4)  # studio range
    back = contract.ycbcr_to_rgb(*contract.rgb_to_ycbcr(rgb))
    np.testing.assert_allclose(back, rgb, atol=0.02)
    gray = np.array([0, 128, 255], np.uint8)
    np.testing.assert_allclose(contract.y_to_gray(contract.gray_to_y(gray, 255.0), 255.0),
                               gray, atol=1e-4)
    assert contract.gray_to_y(np.array([200]), 255.0) == pytest.approx(
        contract.rgb_to_y(np.array([[200, 200, 200]]))[0], abs=1e-4)


def test_scaling_to_and_from_the_model() -> None:
    y = np.array([16.0, 235.0, 255.0])
    x = contract.to_model(y)
    assert x.dtype == np.float32 and x.tolist() == pytest.approx([16 / 255, 235 / 255, 1.0])
    np.testing.assert_allclose(contract.from_model(x), y, rtol=1e-6)


def test_metadata_parsing() -> None:
    d = contract.describe({"scale": "3", "preset": "lsrcnn-lite", "parameters": "12",
                           "unrelated": "x"})
    assert (d.name, d.arch, d.card) == ("lsrcnn-lite-x3", "lsrcnn", {"parameters": "12"})
    assert contract.describe(d.metadata()) == d and contract.describe(d.metadata()).card == d.card
    assert contract.describe({"scale": "2", "preset": "p", "arch": "other"}).arch == "other"
    for meta, why in (({}, "no 'scale'"), ({"scale": "two", "preset": "p"}, "not an integer"),
                      ({"scale": "0", "preset": "p"}, "positive"), ({"scale": "2"}, "preset")):
        with pytest.raises(contract.ContractError, match=why):
            contract.describe(meta)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        contract.check_input((1, 3, 8, 8))
    assert contract.output_shape((2, 1, 5, 7), 3) == (2, 1, 15, 21)


def test_bundled_files_state_the_contract() -> None:
    for path in sorted(WEIGHTS.glob("*.onnx")):
        proto = onnx.load(str(path))
        d = contract.describe({p.key: p.value for p in proto.metadata_props})
        assert d.name == path.stem and d.arch == contract.DEFAULT_ARCH  # no arch: the default
        assert [i.name for i in proto.graph.input] == [contract.INPUT_NAME]
        assert [o.name for o in proto.graph.output] == [contract.OUTPUT_NAME]


def test_what_the_export_writes_the_service_reads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from app.runtime.engine import Engine
    from app.settings import Settings
    from model.export import descriptor, export, metadata
    from model.net import LSRCNN, make_config

    torch.manual_seed(0)
    model = LSRCNN(make_config("lsrcnn-lite", 3, hidden=4)).eval()
    ckpt = {"iteration": 7, "val_psnr": 30.5, "train": {"data": ["T91"], "val": "Set5"}}
    export(model, tmp_path / "any-name.onnx", metadata(model, ckpt))
    engine = Engine(Settings(model_dir=tmp_path, default_scale=3))
    engine.load()
    info = engine.models["lsrcnn-lite-x3"]
    written = descriptor(model, ckpt)
    assert info.descriptor == written and info.card() == written.card
    assert (info.arch, info.card()["iterations"], info.card()["validation_psnr"]) == (
        "lsrcnn", "7", "30.500")
    x = np.random.default_rng(0).random((2, 1, 9, 13), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(engine.run("lsrcnn-lite-x3", x), want, atol=1e-4)


def test_the_service_and_the_contract_need_no_torch() -> None:
    code = ("import sys, app.main, app.http.kserve_routes, model.contract, model.triton_repo; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSRCNN_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_server_and_its_error_renderer_need_no_onnxruntime() -> None:
    """The uvicorn protocol class answers malformed HTTP with our error body; loading it (and
    the middleware) must not pull the engine in."""
    code = ("import sys, app.http.server, app.http.problems, app.http.middleware; "
            "assert 'onnxruntime' not in sys.modules, 'onnxruntime was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_photo_strength_in_the_metadata() -> None:
    base = {"scale": "2", "preset": "lsrcnn-lite", "kind": "photo"}
    strong = contract.describe({**base, "strength": "strong"})
    assert strong.strength == "strong" and strong.name == "lsrcnn-lite-photo-strong-x2"
    assert contract.describe(base).name == "lsrcnn-lite-photo-x2"
    assert contract.describe(strong.metadata()) == strong
    for bad in ({**base, "strength": "extreme"}, {**base, "kind": "clean", "strength": "mild"}):
        with pytest.raises(contract.ContractError, match="strength"):
            contract.describe(bad)
