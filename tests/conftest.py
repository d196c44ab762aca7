from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.natsserver import NatsServer  # noqa: E402

POSTGRES_URL = os.environ.get("MESHRTC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server with JetStream on a free port."""
    server = NatsServer(store_dir=str(tmp_path / "nats"))
    (tmp_path / "nats").mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def postgres_available() -> bool:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False
