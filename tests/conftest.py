from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
SET5 = ROOT / "tests" / "data" / "Set5"
WEIGHTS = ROOT / "model" / "weights"


@pytest.fixture(scope="session")
def set5() -> Path:
    return SET5


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server of the test's own (see tests/redis_server.py)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
