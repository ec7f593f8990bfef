"""Data sampling, a tiny training run, ONNX export parity, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

from model import export as onnx_export  # noqa: E402
from model.data import PatchSampler  # noqa: E402
from model.net import LSRCNN, make_config  # noqa: E402
from model.train import init_from, load_checkpoint, main, model_from_checkpoint  # noqa: E402


def test_sampler_shapes_alignment_and_small_images(tmp_path: Path, set5: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    sampler = PatchSampler([set5, tmp_path], scale=3, patch=24, seed=1)
    assert len(sampler) == 6
    lr, hr = sampler.batch(8)
    assert lr.shape == (8, 1, 24, 24) and hr.shape == (8, 1, 72, 72)
    assert lr.min() >= 0.0 and lr.max() <= 1.0
    # LR is a downscale of HR: block means agree closely (bicubic is not a box filter).
    box = hr.reshape(8, 1, 24, 3, 24, 3).mean(axis=(3, 5))
    assert np.abs(box - lr).mean() < 0.02


def _fixed_loss(model: LSRCNN, lr: np.ndarray, hr: np.ndarray) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model.eval()(torch.from_numpy(lr)),
                                                  torch.from_numpy(hr)))


def test_tiny_training_run_lowers_loss_and_resumes(tmp_path: Path, set5: Path) -> None:
    out = tmp_path / "run"
    args = ["--preset", "lsrcnn-lite", "--hidden", "8", "--scale", "2", "--data", str(set5),
            "--val", str(set5), "--out", str(out), "--batch", "16", "--patch", "16",
            "--lr", "2e-3", "--warmup", "5", "--val-every", "100", "--ckpt-every", "50",
            "--threads", "1"]
    main([*args, "--iters", "100"])
    lr, hr = PatchSampler([set5], scale=2, patch=16, seed=123).batch(16)
    torch.manual_seed(0)
    before = _fixed_loss(LSRCNN(make_config("lsrcnn-lite", 2, hidden=8)), lr, hr)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 100 and ckpt["config"]["hidden"] == 8
    after = _fixed_loss(model_from_checkpoint(ckpt), lr, hr)
    # Starts at bicubic (global residual); 100 tiny steps lift it measurably, not hugely.
    assert after < 0.97 * before, (before, after)
    assert (out / "best.pt").exists()
    assert ckpt["best_psnr"] > 33.66 + 0.1  # above Set5 bicubic at x2
    main([*args, "--iters", "110", "--resume"])
    assert load_checkpoint(out / "last.pt")["iteration"] == 110


@pytest.mark.parametrize("scale", [2, 4])
def test_export_parity_with_dynamic_sizes(tmp_path: Path, scale: int) -> None:
    torch.manual_seed(0)
    model = LSRCNN(make_config("lsrcnn-lite", scale, hidden=16)).eval()
    torch.nn.init.normal_(model.decoder[0].weight, std=0.05)  # make the learned branch count
    path = tmp_path / "m.onnx"
    ckpt = {"iteration": 7, "val_psnr": 31.5, "train": {"data": ["T91"], "val": "Set5"}}
    onnx_export.export(model, path, onnx_export.metadata(model, ckpt))
    assert onnx_export.parity(model, path) <= onnx_export.TOLERANCE
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["scale"] == str(scale) and meta["preset"] == "lsrcnn-lite"
    assert meta["iterations"] == "7" and meta["training_data"] == "T91"
    x = np.random.default_rng(0).random((3, 1, 17, 45), dtype=np.float32)
    assert session.run(None, {"input": x})[0].shape == (3, 1, 17 * scale, 45 * scale)


def test_parity_check_fails_loudly_on_a_wrong_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LSRCNN(make_config("lsrcnn-lite", 2, hidden=8)).eval()
    path = tmp_path / "m.onnx"
    onnx_export.export(model, path, {"scale": "2"})
    torch.nn.init.normal_(model.decoder[0].weight, std=0.5)  # torch side no longer matches
    with pytest.raises(onnx_export.ParityError):
        onnx_export.parity(model, path)


def test_init_copies_encoder_and_lstm_from_another_scale(tmp_path: Path) -> None:
    torch.manual_seed(1)
    x2 = LSRCNN(make_config("lsrcnn-lite", 2, hidden=8))
    torch.save({"config": x2.cfg.to_dict(), "model": x2.state_dict()}, tmp_path / "x2.pt")
    torch.manual_seed(2)
    x3 = LSRCNN(make_config("lsrcnn-lite", 3, hidden=8))
    copied = init_from(x3, str(tmp_path / "x2.pt"))
    assert copied == len([k for k in x2.state_dict() if k.startswith(("encoder.", "lstm."))])
    for key, value in x2.state_dict().items():
        if key.startswith(("encoder.", "lstm.")):
            assert torch.equal(x3.state_dict()[key], value)
    # The decoder has another shape (9 sub-pixel channels, not 4) and keeps its own weights.
    assert x3.decoder[0].weight.shape[0] == 9


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_onnx_files_load_back_into_torch(scale: int) -> None:
    from model.onnx_weights import model_from_onnx

    path = Path(__file__).resolve().parents[2] / "model" / "weights" / \
        f"lsrcnn-lite-x{scale}.onnx"
    model = model_from_onnx(path)
    x = torch.rand(2, 1, 21, 34, generator=torch.Generator().manual_seed(scale))
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()})[0]
    with torch.no_grad():
        got = model(x).numpy()
    assert np.abs(got - want).max() < 2e-5


def test_a_recipe_file_drives_a_photo_run_and_the_export_states_it(tmp_path: Path,
                                                                     set5: Path) -> None:
    from model import contract
    from model.train import read_recipe

    weights = Path(__file__).resolve().parents[2] / "model" / "weights"
    recipe = tmp_path / "tiny-photo.toml"
    recipe.write_text(
        'kind = "photo"\npreset = "lsrcnn-lite"\nscale = 2\ndata = ["Set5"]\nval = "Set5"\n'
        f'val_degrade = "jpeg:75"\ndegrade = "photo"\ninit = "{weights}/lsrcnn-lite-x2.onnx"\n'
        'iters = 50\nbatch = 4\npatch = 16\nlr = 1e-4\nwarmup = 1\n'
        '[degradations]\njpeg = 1.0\n')
    out = tmp_path / "run"
    # A flag on the command line wins over the recipe (iters); the rest comes from the file.
    main(["--recipe", str(recipe), "--datasets", str(set5.parent), "--out", str(out),
          "--iters", "3", "--threads", "1"])
    ckpt = load_checkpoint(out / "last.pt")
    train = ckpt["train"]
    assert ckpt["iteration"] == 3 and train["kind"] == "photo" and train["recipe"] == recipe.name
    assert train["degradations"]["jpeg"] == 1.0 and train["init"] == "lsrcnn-lite-x2.onnx"
    assert train["val_degrade"] == "jpeg:75" and train["batch"] == 4
    # Initialised from the shipped file: three tiny steps stay close to its Set5 JPEG score.
    assert ckpt["val_psnr"] > 30.0
    model = model_from_checkpoint(ckpt)
    d = onnx_export.descriptor(model, ckpt)
    assert d.name == "lsrcnn-lite-photo-x2" and d.kind == contract.PHOTO
    assert d.card["recipe"] == f"model/recipes/{recipe.name}"
    assert contract.describe(d.metadata()) == d
    with pytest.raises(SystemExit):
        recipe.write_text('unknown_key = 1\n' + recipe.read_text())
        read_recipe(recipe)


def test_every_shipped_model_names_a_recipe_that_exists() -> None:
    from model import contract
    from model.train import read_recipe

    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "model" / "weights").glob("*.onnx")):
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        d = contract.describe(meta)
        recipe = root / d.card["recipe"]
        assert recipe.exists(), (path.name, d.card.get("recipe"))
        r = read_recipe(recipe)
        assert (r["scale"], r["preset"], r.get("kind", "clean")) == (d.scale, d.preset, d.kind)
