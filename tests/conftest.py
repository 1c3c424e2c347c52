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


# Disk: a pretraining test leaves about 200 MB (checkpoint with optimiser state, weights), and the whole suite
# wrote 6 GB into /tmp, enough to fill a shared CI disk (a run failed with "No space left on device").
# What a passing test wrote is deleted as soon as it passes; what a failing one wrote is kept to look at.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item.session.config.stash.setdefault(_FAILED_KEY, set()).add(item.module.__name__ if item.module else "")
    setattr(item, f"_rep_{rep.when}", rep)


_FAILED_KEY = pytest.StashKey[set]()


def _failed(config, module_name: str) -> bool:
    return module_name in config.stash.get(_FAILED_KEY, set())


@pytest.fixture(autouse=True)
def _free_tmp_path_on_pass(request):
    """Delete a passing test's tmp_path at its teardown (pytest itself only prunes whole runs, at exit)."""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    rep = getattr(request.node, "_rep_call", None)
    if path is not None and rep is not None and rep.passed:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _free_module_tmp_dirs(request, tmp_path_factory):
    """Delete the folders a module's fixtures made (tmp_path_factory.mktemp) once the module is done, if it passed."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if _failed(request.config, request.module.__name__):
        return
    import shutil

    for d in set(base.iterdir()) - before:
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
