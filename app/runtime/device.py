"""Where the models run, decided from what ONNX Runtime reports active, never from what it
lists as available.

`onnxruntime-gpu` lists the CUDA provider on machines with no usable GPU (no driver, no
CUDA or cuDNN libraries, no device) and then quietly runs on the CPU. So the engine first
opens one session asking for CUDA and reads `session.get_providers()`; only that answer
sets the device, and with it the preset, the threads, the workers and the batch policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.settings import Settings

log = logging.getLogger("app.runtime.device")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class DeviceError(RuntimeError):
    """The GPU was required (LSRCNN_PROVIDERS=cuda) and is not really active."""


def cuda_options(settings: Settings) -> dict[str, Any]:
    """The CUDA provider's options, in one place.

    kSameAsRequested: the arena grows by what a call asks for, not to the next power of two
    (tile shapes vary, as on the CPU). The cuDNN algorithm search stays at its default,
    EXHAUSTIVE: its cost is paid in warm-up, at the shapes that serve.
    """
    return {"device_id": settings.device_id, "arena_extend_strategy": "kSameAsRequested"}


def requested(settings: Settings, available: list[str]) -> list[Any]:
    """The providers to ask a session for: CUDA (with its options) first where the settings
    allow it and the build lists it, the CPU always as the fallback."""
    if settings.providers == "cpu" or CUDA not in available:
        return [CPU]
    return [(CUDA, cuda_options(settings)), CPU]


@dataclass(frozen=True)
class Device:
    on_gpu: bool
    reason: str  # why this device, for the log and /v1/models

    @property
    def providers(self) -> list[str]:
        return [CUDA, CPU] if self.on_gpu else [CPU]


def decide(settings: Settings, available: list[str],
           active_of_probe: Callable[[list[Any]], list[str]]) -> Device:
    """The device, from the providers a probe session reports active.

    `active_of_probe(providers)` opens one session asking for `providers` and returns its
    `get_providers()`. Raises DeviceError when CUDA is required and not active.
    """
    if settings.providers == "cpu":
        return Device(False, "CPU only (LSRCNN_PROVIDERS=cpu)")
    if CUDA not in available:
        why = "this ONNX Runtime build has no CUDA provider"
        if settings.providers == "cuda":
            raise DeviceError(f"CUDA required but {why}")
        return Device(False, why)
    active = active_of_probe(requested(settings, available))
    if active and active[0] == CUDA:
        return Device(True, f"CUDA active on device {settings.device_id}")
    why = (f"CUDA is listed as available but a session runs on {active[0] if active else '?'}"
           " (no usable GPU, driver or CUDA/cuDNN libraries)")
    if settings.providers == "cuda":
        raise DeviceError(f"CUDA required but {why}")
    log.warning("serving on the CPU: %s", why, extra={"fields": {"available": available,
                                                                  "active": active}})
    return Device(False, why)
