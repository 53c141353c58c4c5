"""The compiled loops' disk cache is keyed by every kernel source (``compile_cache``)."""

import shutil

from nnspec.backends.numpy.kernels import compile_cache, fused, lstm_steps


def test_the_kernels_loops_and_jobs_are_cached_under_the_packages_stamp():
    """A fused loop and a job (a cfunc inlining another module's tiles) both take the
    package-stamped locator, so a change to any kernel source rebuilds them."""
    lstm_steps.load()
    for cached in (fused.gelu, lstm_steps._steps_job.compiled):
        locator = cached._cache._impl._locator
        assert isinstance(locator, compile_cache._PackageStamped)
        assert locator.get_source_stamp() == compile_cache.stamp(compile_cache._KERNELS)


def test_the_stamp_changes_with_any_source_and_only_with_a_source(tmp_path):
    for name in ("tiled.py", "lstm_steps.py"):
        shutil.copy(compile_cache._KERNELS / name, tmp_path / name)
    before = compile_cache.stamp(tmp_path)
    (tmp_path / "notes.txt").write_text("not a source")
    assert compile_cache.stamp(tmp_path) == before
    (tmp_path / "tiled.py").write_text((tmp_path / "tiled.py").read_text() + "\n# changed\n")
    assert compile_cache.stamp(tmp_path) != before
