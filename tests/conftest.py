from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SET5 = ROOT / "tests" / "data" / "Set5"
WEIGHTS = ROOT / "model" / "weights"


@pytest.fixture(scope="session")
def set5() -> Path:
    return SET5
