import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long check, left out of the default run (select with -m slow)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when ``-m`` names the marker; otherwise they are
    deselected (not collected as skips)."""
    if "slow" in (config.getoption("-m") or ""):
        return
    slow = [item for item in items if "slow" in item.keywords]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if "slow" not in item.keywords]
