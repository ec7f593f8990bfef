"""Read an exported LSRCNN ONNX file back into the torch model (for fine-tuning from a
shipped file whose checkpoint is not in the repository).

The exporter keeps conv weights under their torch names; each LSTM becomes one ONNX `LSTM`
node whose W, R, B are stacked per direction, with the gates in ONNX's order (i, o, f, c)
against torch's (i, f, g, o).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from model import contract
from model.net import LSRCNN, LSRCNNConfig

# Block k of torch's gate stack comes from block ONNX_GATES[k] of ONNX's.
ONNX_GATES = (0, 2, 3, 1)


def _torch_gates(w: np.ndarray, hidden: int) -> np.ndarray:
    blocks = [w[g * hidden:(g + 1) * hidden] for g in ONNX_GATES]
    return np.concatenate(blocks, axis=0)


def _lstm_state(prefix: str, w: np.ndarray, r: np.ndarray, b: np.ndarray,
                hidden: int) -> dict[str, np.ndarray]:
    state = {}
    for d, suffix in enumerate(("", "_reverse")):
        state[f"{prefix}.weight_ih_l0{suffix}"] = _torch_gates(w[d], hidden)
        state[f"{prefix}.weight_hh_l0{suffix}"] = _torch_gates(r[d], hidden)
        state[f"{prefix}.bias_ih_l0{suffix}"] = _torch_gates(b[d, :4 * hidden], hidden)
        state[f"{prefix}.bias_hh_l0{suffix}"] = _torch_gates(b[d, 4 * hidden:], hidden)
    return state


def read_onnx(path: str | Path) -> tuple[LSRCNNConfig, dict[str, torch.Tensor], dict[str, str]]:
    """The network config, a torch state dict and the metadata of an exported file."""
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if contract.CONFIG not in meta:
        raise ValueError(f"{path} carries no network config in its metadata")
    cfg = LSRCNNConfig(**json.loads(meta[contract.CONFIG]))
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = {k: v for k, v in weights.items() if not k.startswith("onnx::")}
    for node in proto.graph.node:
        if node.op_type != "LSTM":
            continue
        prefix = "lstm.rows" if "/rows/" in node.input[0] else "lstm.cols"
        w, r, b = (weights[name] for name in node.input[1:4])
        state.update(_lstm_state(prefix, w, r, b, cfg.hidden))
    return cfg, {k: torch.from_numpy(np.array(v)) for k, v in state.items()}, meta


def model_from_onnx(path: str | Path) -> LSRCNN:
    cfg, state, _ = read_onnx(path)
    model = LSRCNN(cfg)
    model.load_state_dict(state)  # strict: every tensor must be found
    return model.eval()
