"""Shared pytest options and markers."""


# ---- golden files (tests/golden/): `pytest --update-golden` rewrites them ------------------


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files from the current output instead of comparing")


def pytest_configure(config):
    config.addinivalue_line("markers", "dot: runs the real Graphviz `dot` binary "
                            "(fails with the install command when it is missing)")
