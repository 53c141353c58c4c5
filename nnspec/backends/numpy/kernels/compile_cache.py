"""numba's on-disk cache of the compiled loops, keyed by every kernel source, not one.

numba stamps a cached loop with its own file only, but a job compiled in one module inlines
loops from others (``lstm_steps``' steps job inlines ``tiled``'s tiles): after a change to
``tiled.py`` alone, the job loaded its old build, and a test run read wrong gradients and
then crashed. Here every cached loop of this package is stamped with one hash of all of its
sources, so that any change rebuilds them all, each on its first use. A fresh install
rewrites every file anyway; a working tree after ``git pull`` or an edit does not.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib

from numba.core import caching

_KERNELS = pathlib.Path(__file__).resolve().parent


def stamp(directory: pathlib.Path) -> str:
    """One hash of the names and contents of the Python sources in ``directory``."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def _kernels_stamp() -> str:
    return stamp(_KERNELS)


class _PackageStamped:
    """A numba cache locator for this package's loops only, stamped by all its sources."""

    def get_source_stamp(self):
        return _kernels_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if pathlib.Path(py_file).resolve().parent != _KERNELS:
            return None
        return super().from_function(py_func, py_file)


# numba's own order: NUMBA_CACHE_DIR when set, else the module's __pycache__, else the
# user's cache directory (a read-only install)
_LOCATORS = [type(f"PackageStamped{base.__name__}", (_PackageStamped, base), {})
             for base in (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                          caching.UserWideCacheLocator)]


def install() -> None:
    """Put the locators ahead of numba's (once); a numba without the hook keeps its own."""
    locators = getattr(caching.CacheImpl, "_locator_classes", None)
    if locators is not None and _LOCATORS[0] not in locators:
        locators[0:0] = _LOCATORS
