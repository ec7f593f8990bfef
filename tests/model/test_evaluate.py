"""The evaluation protocol reproduces published bicubic figures; shipped models beat the floors."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from model.evaluate import evaluate_folder, markdown, onnx_scale
from tests.conftest import WEIGHTS

PUBLISHED_BICUBIC_SET5 = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}
# Issue floors (about SRCNN's level), Set5 PSNR in dB.
FLOORS_SET5 = {2: 36.6, 3: 32.6, 4: 30.3}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_reproduces_published_set5(set5: Path, scale: int) -> None:
    (score,) = evaluate_folder(set5, scale)
    psnr, ssim = PUBLISHED_BICUBIC_SET5[scale]
    assert score.images == 5
    assert abs(score.psnr - psnr) <= 0.02
    assert abs(score.ssim - ssim) <= 0.002


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_lite_model_meets_the_floor(set5: Path, scale: int) -> None:
    path = WEIGHTS / f"lsrcnn-lite-x{scale}.onnx"
    assert path.exists(), f"{path} is not shipped"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert onnx_scale(session) == scale
    bicubic, model = evaluate_folder(set5, scale, {"lite": session})
    assert model.psnr >= FLOORS_SET5[scale], markdown([bicubic, model])
    assert model.ssim > bicubic.ssim


# Photo models on Set5 with its LR saved as JPEG q75 (PSNR floors about 0.2 dB under the
# shipped files' scores, model/weights/README.md).
PHOTO_FLOORS_SET5_Q75 = {2: 33.0, 3: 30.2, 4: 28.4}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shipped_photo_model_beats_bicubic_and_the_clean_model_on_jpeg(set5: Path,
                                                                       scale: int) -> None:
    from model.degrade import parse_chain

    sessions = {kind: ort.InferenceSession(str(WEIGHTS / f"lsrcnn-lite{kind}-x{scale}.onnx"),
                                           providers=["CPUExecutionProvider"])
                for kind in ("", "-photo")}
    bicubic, clean, photo = evaluate_folder(set5, scale, sessions, parse_chain("jpeg:75"))
    table = markdown([bicubic, clean, photo])
    assert photo.psnr >= PHOTO_FLOORS_SET5_Q75[scale], table
    assert photo.psnr > clean.psnr + 0.5 and photo.psnr > bicubic.psnr + 0.8, table
    assert photo.ssim > max(clean.ssim, bicubic.ssim), table


# -- the precision gate at build time (model.precisions) --------------------------------


@pytest.mark.parametrize("path", sorted(WEIGHTS.glob("*.onnx")), ids=lambda p: p.stem)
def test_every_card_records_the_bf16_loss_within_the_target(path: Path) -> None:
    import json

    import onnx

    from model.precisions import MAX_LOSS_DB

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
            .metadata_props}
    record = json.loads(meta["precisions"])
    assert set(record["bf16_loss_db"]) == {"Set5", "Set14"}
    assert all(loss <= MAX_LOSS_DB for loss in record["bf16_loss_db"].values()), record


def test_the_recorded_bf16_figures_are_what_openvino_gives(set5: Path) -> None:
    import json

    import onnx

    from app.runtime import runners
    from model.precisions import measure

    if "BF16" not in runners.cpu_capabilities():
        pytest.skip("no OpenVINO, or a CPU without bf16 instructions")
    path = WEIGHTS / "lsrcnn-lite-x4.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
            .metadata_props}
    want = json.loads(meta["precisions"])
    got = measure(path, [str(set5)])
    assert got["fp32"]["Set5"] == pytest.approx(want["fp32"]["Set5"], abs=0.002)
    assert got["bf16"]["Set5"] == pytest.approx(want["bf16"]["Set5"], abs=0.005)


# The strengths (model/weights/README.md): each beats the general photo model where the
# service sends it, with a floor about 0.2 dB under its shipped score on Set5.
STRENGTH_CASES = [("lsrcnn-lite-photo-strong-x2", 2, "jpeg:50", 31.7),
                  ("lsrcnn-lite-photo-medium-x2", 2, "jpeg:75", 33.1),
                  ("lsrcnn-lite-photo-medium-x2", 2, "noise:5,jpeg:75", 32.75),
                  ("lsrcnn-lite-photo-mild-x2", 2, "jpeg:90", 34.7),
                  ("lsrcnn-lite-photo-strong-x3", 3, "jpeg:50", 29.1)]


@pytest.mark.parametrize(("name", "scale", "degrade", "floor"), STRENGTH_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in STRENGTH_CASES])
def test_a_photo_strength_beats_the_general_model_where_it_is_sent(
        set5: Path, name: str, scale: int, degrade: str, floor: float) -> None:
    from model.degrade import parse_chain

    sessions = {n: ort.InferenceSession(str(WEIGHTS / f"{n}.onnx"),
                                        providers=["CPUExecutionProvider"])
                for n in (f"lsrcnn-lite-photo-x{scale}", name)}
    bicubic, general, special = evaluate_folder(set5, scale, sessions, parse_chain(degrade))
    table = markdown([bicubic, general, special])
    assert special.psnr >= floor and special.psnr > general.psnr, table
    assert special.ssim > bicubic.ssim, table
