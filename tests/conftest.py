"""Shared pytest options and markers."""

import os

from hypothesis import settings

# ---- golden files (tests/golden/): `pytest --update-golden` rewrites them ------------------


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files from the current output instead of comparing")


def pytest_configure(config):
    config.addinivalue_line("markers", "dot: runs the real Graphviz `dot` binary "
                            "(fails with the install command when it is missing)")


# ---- hypothesis: CI replays the same examples every run ------------------------------------
# Locally each run explores new examples; on CI (CI=true) the examples are derived from the
# test names, so a red build is reproducible and never depends on luck.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
