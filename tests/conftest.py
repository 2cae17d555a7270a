import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long check, left out of the default run (select with -m slow)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when ``-m`` names the marker."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
