import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docker: needs a Docker engine (MESHRTC_DOCKER_TESTS=1, see deploy/)")
