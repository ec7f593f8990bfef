"""The LSRCNN network: conv encoder, 2-D bidirectional LSTM sweeps, attention, sub-pixel decoder.

Input and output follow the model file contract: float32 [N, 1, H, W] holding Y / 255 in,
[N, 1, s*H, s*W] on the same scale out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("none", "channel", "spatial", "mixed")
SCALES = (2, 3, 4)


@dataclass
class LSRCNNConfig:
    preset: str = "lsrcnn"
    scale: int = 2
    channels: int = 64  # encoder width
    hidden: int = 256  # LSTM cells per direction
    attention: str = "none"  # none | channel | spatial | mixed
    # Add a bicubic upscale of the input to the decoder's output, so the network learns
    # only the missing detail (VDSR's global residual); it starts at bicubic quality.
    global_residual: bool = True

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, dict] = {
    # The design as written: two bidirectional layers of 256 cells (GPU class).
    "lsrcnn": {"hidden": 256},
    # Same shape, small hidden size: about 20x fewer multiply-adds per pixel, the CPU default.
    "lsrcnn-lite": {"hidden": 32},
}


def make_config(preset: str, scale: int, **overrides: object) -> LSRCNNConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    fields = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return LSRCNNConfig(preset=preset, scale=scale, **fields)


class LSTM2D(nn.Module):
    """ReNet-style context: layer 1 sweeps each row both ways, layer 2 sweeps each column
    of layer 1's output both ways; a 1x1 conv brings 2*hidden back to the feature width."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.rows = nn.LSTM(channels, hidden, batch_first=True, bidirectional=True)
        self.cols = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Conv2d(2 * hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(n * h, w, c)  # one sequence per row
        seq, _ = self.rows(seq)
        seq = seq.reshape(n, h, w, -1).permute(0, 2, 1, 3).reshape(n * w, h, -1)  # per column
        seq, _ = self.cols(seq)
        feat = seq.reshape(n, w, h, -1).permute(0, 3, 2, 1)  # back to N, 2*hidden, H, W
        return x + self.proj(feat)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: a weight per channel from its global average."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3), keepdim=True))


class SpatialAttention(nn.Module):
    """A weight per position from the channel-wise mean and max (CBAM's spatial branch)."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


def make_attention(kind: str, channels: int) -> nn.Module:
    if kind == "channel":
        return ChannelAttention(channels)
    if kind == "spatial":
        return SpatialAttention()
    if kind == "mixed":
        return nn.Sequential(ChannelAttention(channels), SpatialAttention())
    return nn.Identity()


class LSRCNN(nn.Module):
    def __init__(self, cfg: LSRCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, s = cfg.channels, cfg.scale
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(1 if i == 0 else c, c, 3, padding=1), nn.LeakyReLU(0.05)]
        self.encoder = nn.Sequential(*layers)
        self.lstm = LSTM2D(c, cfg.hidden)
        self.attention = make_attention(cfg.attention, c)
        self.decoder = nn.Sequential(nn.Conv2d(c, s * s, 3, padding=1), nn.PixelShuffle(s))
        if cfg.global_residual:
            # Start as plain bicubic: the residual branch begins near zero.
            nn.init.normal_(self.decoder[0].weight, std=1e-3)
            nn.init.zeros_(self.decoder[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.attention(self.lstm(self.encoder(x))))
        if self.cfg.global_residual:
            up = F.interpolate(x, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)
            out = out + up
        return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_lr_pixel(cfg: LSRCNNConfig) -> int:
    """Multiply-adds per LR pixel (weights only; activations and the bicubic skip ignored)."""
    c, h, s = cfg.channels, cfg.hidden, cfg.scale
    encoder = 9 * c + 2 * 9 * c * c
    lstm = 2 * 4 * h * (c + h) + 2 * 4 * h * (2 * h + h) + 2 * h * c
    decoder = 9 * c * s * s
    return encoder + lstm + decoder
