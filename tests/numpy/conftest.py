"""The NumPy tests run with or without torch: tests marked `torch` skip one by one when it is
missing, so the central-difference gradchecks and every other torch-free test still run."""

import importlib.util

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "strict_numerics(**errstate): every floating-point "
                            "error raises; keywords relax a category, e.g. under='ignore'")


def pytest_runtest_setup(item):
    if item.get_closest_marker("torch") and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch, the oracle (not installed)")


@pytest.fixture(autouse=True)
def strict_numerics(request):
    """Overflow, division by zero and NaN raise in tests marked `strict_numerics`; underflow
    too unless the marker says under="ignore" (saturating kernels flush tiny gradients to 0)."""
    marker = request.node.get_closest_marker("strict_numerics")
    if marker is None:
        yield
        return
    with np.errstate(**{"all": "raise", **marker.kwargs}):
        yield
