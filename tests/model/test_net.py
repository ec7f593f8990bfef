"""The network: shapes, parameter counts, and the LSTM against the design's six equations."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model.net import LSRCNN, PRESETS, SCALES, count_parameters, make_config  # noqa: E402


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("scale", SCALES)
def test_output_shape_at_every_scale_and_preset(preset: str, scale: int) -> None:
    model = LSRCNN(make_config(preset, scale)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 9, 13))
    assert out.shape == (2, 1, 9 * scale, 13 * scale)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("attention", ["channel", "spatial", "mixed"])
def test_attention_variants_keep_shape(attention: str) -> None:
    model = LSRCNN(make_config("lsrcnn-lite", 3, attention=attention)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 10, 8)).shape == (1, 1, 30, 24)


def _expected_parameters(hidden: int, scale: int, channels: int = 64) -> int:
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    lstm = lambda cin, h: 2 * (4 * h * (cin + h) + 8 * h)  # noqa: E731  (two directions, two biases)
    encoder = conv(1, channels, 3) + 2 * conv(channels, channels, 3)
    context = lstm(channels, hidden) + lstm(2 * hidden, hidden) + conv(2 * hidden, channels, 1)
    return encoder + context + conv(channels, scale * scale, 3)


@pytest.mark.parametrize(("preset", "hidden"), [("lsrcnn", 256), ("lsrcnn-lite", 32)])
@pytest.mark.parametrize("scale", SCALES)
def test_parameter_counts(preset: str, hidden: int, scale: int) -> None:
    model = LSRCNN(make_config(preset, scale))
    assert count_parameters(model) == _expected_parameters(hidden, scale)
    if preset == "lsrcnn":  # the design's "about 2.2M parameters"
        assert 2.2e6 < count_parameters(model) < 2.4e6


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def lstm_reference(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The design's equations, written out: f, i, candidate C~, C, o, h (one direction).

    W = [W_i; W_f; W_C; W_o] stacked as PyTorch stores them; [h_{t-1}, x_t] is split into
    the x and h parts of each W.
    """
    hidden = w_hh.shape[1]
    wi, wf, wc, wo = np.split(w_ih, 4)
    ui, uf, uc, uo = np.split(w_hh, 4)
    bi, bf, bc, bo = np.split(b, 4)
    batch, steps, _ = x.shape
    h = np.zeros((batch, hidden))
    c = np.zeros((batch, hidden))
    out = np.zeros((batch, steps, hidden))
    for t in range(steps):
        xt = x[:, t]
        f = _sigmoid(xt @ wf.T + h @ uf.T + bf)  # forget gate
        i = _sigmoid(xt @ wi.T + h @ ui.T + bi)  # input gate
        c_tilde = np.tanh(xt @ wc.T + h @ uc.T + bc)  # candidate state
        c = f * c + i * c_tilde  # cell state
        o = _sigmoid(xt @ wo.T + h @ uo.T + bo)  # output gate
        h = o * np.tanh(c)  # hidden state
        out[:, t] = h
    return out


def test_lstm_matches_the_design_equations() -> None:
    torch.manual_seed(0)
    model = LSRCNN(make_config("lsrcnn-lite", 2, hidden=7))
    lstm = model.lstm.rows
    for p in lstm.parameters():  # random, larger than default init so gates saturate differently
        torch.nn.init.uniform_(p, -0.8, 0.8)
    x = torch.randn(3, 11, lstm.input_size, dtype=torch.float64)
    with torch.no_grad():
        got, _ = lstm.double()(x)
    got = got.numpy()
    p = {k: v.detach().double().numpy() for k, v in lstm.named_parameters()}
    forward = lstm_reference(x.numpy(), p["weight_ih_l0"], p["weight_hh_l0"],
                             p["bias_ih_l0"] + p["bias_hh_l0"])
    backward = lstm_reference(x.numpy()[:, ::-1], p["weight_ih_l0_reverse"],
                              p["weight_hh_l0_reverse"],
                              p["bias_ih_l0_reverse"] + p["bias_hh_l0_reverse"])[:, ::-1]
    hidden = lstm.hidden_size
    np.testing.assert_allclose(got[..., :hidden], forward, atol=1e-10)
    np.testing.assert_allclose(got[..., hidden:], backward, atol=1e-10)


def test_lstm_module_sweeps_rows_then_columns() -> None:
    """A change at one pixel reaches every pixel of the map: rows, then columns, carry it."""
    torch.manual_seed(0)
    model = LSRCNN(make_config("lsrcnn-lite", 2)).eval()
    x = torch.rand(1, 64, 6, 7)
    y = x.clone()
    y[0, :, 0, 0] += 1.0
    with torch.no_grad():
        delta = (model.lstm(x) - model.lstm(y)).abs().sum(dim=1)[0]
    assert (delta > 0).all()
