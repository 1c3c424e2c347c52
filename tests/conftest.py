import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("NAPARI_SSL_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or $NAPARI_SSL_DATA): the real scans the tests read. Fails, never skips, if missing."""
    d = _data_dir()
    if not (d / "msd_hippocampus").is_dir() or not (d / "dcmqi_segmentations").is_dir():
        pytest.fail(f"test data not found at {d}: clone next to ../shared/data or set NAPARI_SSL_DATA", pytrace=False)
    return d


@pytest.fixture(scope="session")
def hippo_dir(data_dir) -> Path:
    return data_dir / "msd_hippocampus"


@pytest.fixture(scope="session")
def dcmqi_dir(data_dir) -> Path:
    return data_dir / "dcmqi_segmentations"
