"""Large float32 products on the register tiles (``gemm``) where NumPy's BLAS runs narrower
vectors than the CPU has: float64 products as the oracle, over the operands' layouts and the
tiles' edges, and the rule that routes them."""

import os
import subprocess
import sys

import numpy as np
import pytest

from nnspec.backends.numpy.kernels import gemm, tiled, workers


@pytest.fixture
def narrow(monkeypatch):
    """Route as a machine whose BLAS is narrow does, whatever this one's is."""
    monkeypatch.setattr(gemm, "blas_is_narrow", lambda: True)


def operand(rng, rows, columns, transposed):
    """A float32 (rows, columns) matrix, C-ordered or a transposed view."""
    if transposed:
        return rng.standard_normal((columns, rows)).astype(np.float32).T
    return rng.standard_normal((rows, columns)).astype(np.float32)


def check(ours, a, b, start=None):
    """Within float32's error of a float64 product: 2e-6 of the largest value times the
    square root of the sum's length."""
    expected = a.astype(np.float64) @ b.astype(np.float64)
    if start is not None:
        expected += start
    tolerance = 2e-6 * np.sqrt(a.shape[1]) * np.abs(expected).max()
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance)


# (M, K, N): M off the tiles' 8 rows, N off a tile's 48 columns and a panel's, K past a
# block of reads (``tiled.READ_BLOCK``), one row, one panel exactly, one tile and a part of one
SHAPES = [(300, 777, 500), (2048, 513, 192), (1, 5000, 1000), (17, 2500, 4 * 48),
          (129, 64, 1153), (1000, 3000, 200), (1000, 700, 65), (300, 2000, 48),
          (4608, 512, 32)]


@pytest.mark.parametrize("a_transposed", [False, True])
@pytest.mark.parametrize("b_transposed", [False, True])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_products_on_the_tiles_match_float64(narrow, monkeypatch, m, k, n, a_transposed,
                                             b_transposed):
    monkeypatch.setattr(gemm, "_copies_pay", lambda a, b: True)  # one row, say, too
    rng = np.random.default_rng(m + k + n)
    a, b = operand(rng, m, k, a_transposed), operand(rng, k, n, b_transposed)
    assert gemm._tiles_pay(a, b, None)
    check(gemm.matmul(a, b), a, b)


@pytest.mark.parametrize("a_transposed", [False, True])
def test_products_into_a_block_of_columns_and_added_to_it(narrow, a_transposed):
    """``out`` a strided view (rows wider than the product) gets the product, or the product
    added to its values; the columns around it are not touched."""
    rng = np.random.default_rng(3)
    a, b = operand(rng, 203, 700, a_transposed), operand(rng, 700, 410, False)
    wide = rng.standard_normal((203, 500)).astype(np.float32)
    start = wide.copy()
    block = wide[:, 40:450]
    assert gemm._tiles_pay(a, b, block)
    assert gemm.matmul(a, b, out=block) is block
    check(block, a, b)
    gemm.add_product(a, b, block)
    check(block, a, b, start=a.astype(np.float64) @ b)
    np.testing.assert_array_equal(wide[:, :40], start[:, :40])
    np.testing.assert_array_equal(wide[:, 450:], start[:, 450:])


def test_operands_with_gaps_match_float64(narrow):
    """Views with steps of their own: every other column of a (a read's step 2), a block of
    b's columns (long rows, into panels; short ones, read in place), b a transposed block
    of rows."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((150, 1400)).astype(np.float32)[:, ::2]
    b = rng.standard_normal((700, 900)).astype(np.float32)[:, 100:500]
    c = rng.standard_normal((450, 800)).astype(np.float32)[20:420, :700].T
    short = rng.standard_normal((700, 250)).astype(np.float32)[:, 10:240]  # read in place
    for right in (b, c, short):
        assert gemm._tiles_pay(a, right, None)
        check(gemm.matmul(a, right), a, right)


def test_added_products_match_float64(narrow):
    rng = np.random.default_rng(4)
    a, b = operand(rng, 96, 2000, True), operand(rng, 2000, 300, True)
    out = rng.standard_normal((96, 300)).astype(np.float32)
    start = out.astype(np.float64)
    gemm.add_product(a, b, out)
    check(out, a, b, start=start)


@pytest.mark.parametrize("turned", [False, True])
@pytest.mark.parametrize("a_transposed", [False, True])
def test_either_way_round_into_a_block_of_columns(narrow, monkeypatch, turned, a_transposed):
    """A transposed right operand, the product as it is or turned (out.T = b.T @ a.T, out
    through a transposed copy), into a block of a wider array and added to it."""
    monkeypatch.setattr(gemm, "_turn_pays", lambda a, b: turned)
    rng = np.random.default_rng(8)
    a, b = operand(rng, 130, 900, a_transposed), operand(rng, 900, 500, True)
    wide = rng.standard_normal((130, 600)).astype(np.float32)
    start = wide.copy()
    block = wide[:, 50:550]
    gemm.matmul(a, b, out=block)
    check(block, a, b)
    gemm.add_product(a, b, block)
    check(block, a, b, start=a.astype(np.float64) @ b)
    np.testing.assert_array_equal(wide[:, :50], start[:, :50])
    np.testing.assert_array_equal(wide[:, 550:], start[:, 550:])


@pytest.mark.parametrize("m, k, n, b_transposed, expected", [
    (128, 4096, 1152, True, True),     # a convolution's weight gradient: dy @ columns.T
    (64, 8192, 576, True, True),
    (512, 256, 4608, True, False),     # its output, turned and back, outweighs b's copies
    (32, 8192, 576, True, False),      # too few rows to fill a tile turned
    (128, 4096, 1152, False, False),   # b C-ordered: one copy into panels
])
def test_which_products_turn(m, k, n, b_transposed, expected):
    a = np.ones((m, k), np.float32)
    b = np.ones((n, k), np.float32).T if b_transposed else np.ones((k, n), np.float32)
    assert gemm._turn_pays(a, b) is expected


def test_a_part_of_in_parts_runs_its_own_product(narrow):
    """Inside ``workers.in_parts`` each part's product runs on its own core (one part)."""
    rng = np.random.default_rng(5)
    pairs = [(operand(rng, 150, 600, part == 1), operand(rng, 600, 2 * tiled.TILE, False))
             for part in range(2)]
    results = [None, None]

    def part_product(part):
        results[part] = gemm.matmul(*pairs[part])

    workers.in_parts(part_product, 2)
    for (a, b), ours in zip(pairs, results):
        check(ours, a, b)


@pytest.mark.parametrize("a, b, out, expected", [
    ((512, 512), (512, 512), None, True),
    ((64, 64), (64, 256), None, False),                   # too few multiply-adds to pay
    ((4096, 1024), (1024, 24), None, False),              # most of a tile's lanes idle
    ((256, 512), (512, 64), None, False),                 # narrow, and too few to pay
    ((4096, 1024), (1024, 64), None, True),               # one tile and a part of one
    ((512, 512), (512, 512), "float64", False),           # float32 only
    ((512, 512), (512, 512), "strided", False),           # out's rows not unit stride
])
def test_which_products_take_the_tiles(narrow, a, b, out, expected):
    x, y = np.ones(a, np.float32), np.ones(b, np.float32)
    if out == "float64":
        y = y.astype(np.float64)
    target = np.empty((a[0], 2 * b[1]), np.float32)[:, ::2] if out == "strided" else None
    assert gemm._tiles_pay(x, y, target) is expected


@pytest.mark.parametrize("m, k, n, b_transposed, expected", [
    (8, 4096, 4096, True, False),      # a dense layer's forward at batch 8: W.T copied twice
    (32, 32768, 288, True, False),     # a weight gradient of 32 outputs over long columns
    (128, 4096, 4096, True, True),     # turned: only x.T is copied
    (32, 1024, 1024, False, True),     # 32 rows per float of a panel copy within the cache
    (64, 4096, 4096, False, False),    # a 64 MB panel copy needs 128
    (128, 4096, 4096, False, True),
])
def test_copies_must_pay_for_themselves(narrow, m, k, n, b_transposed, expected):
    a = np.ones((m, k), np.float32)
    b = np.ones((n, k), np.float32).T if b_transposed else np.ones((k, n), np.float32)
    assert gemm._tiles_pay(a, b, None) is expected


@pytest.mark.parametrize("m, k, n", [(256, 1024, 1152), (17, 700, 65), (300, 2000, 192),
                                     (8, 5000, 1000)])
def test_products_on_panels_made_beforehand_match_float64(m, k, n):
    """``matmul_on_panels`` reads its right operand from panels made before (a weight
    gradient's columns, ``columns.gather_panels``): rows off the tiles', columns off a
    tile's and a panel's, reads past a block of them."""
    rng = np.random.default_rng(m + n)
    a, b = operand(rng, m, k, False), operand(rng, k, n, False)
    out = np.full((m, n), np.nan, np.float32)
    check(gemm.matmul_on_panels(a, tiled.panels(b, gemm.PANEL_WIDTH), n, out), a, b)
    with pytest.raises(ValueError, match="matmul_on_panels"):
        gemm.matmul_on_panels(a, tiled.panels(b, tiled.TILE), n, out)


@pytest.mark.parametrize("m, k, n, expected", [
    (256, 1024, 1152, True),     # a strided layer's weight gradient at batch 16
    (256, 512, 32, False),       # narrower than two of a tile's vectors
    (64, 64, 100, False),        # too few multiply-adds to pay for the call
])
def test_which_products_take_panels_made_beforehand(narrow, m, k, n, expected):
    assert gemm.panels_pay(m, k, n) is expected


def test_a_wide_blas_keeps_numpys_product(monkeypatch):
    monkeypatch.setattr(gemm, "blas_is_narrow", lambda: False)
    rng = np.random.default_rng(6)
    a, b = operand(rng, 512, 512, False), operand(rng, 512, 512, True)
    np.testing.assert_array_equal(gemm.matmul(a, b), np.matmul(a, b))


def test_blas_pinned_to_an_older_core_reads_as_narrow():
    """``OPENBLAS_CORETYPE=Haswell`` (AVX2 kernels) on a CPU with AVX-512 is narrow; on one
    without, the tiles have nothing to gain."""
    code = ("from nnspec.backends.numpy.kernels import gemm, blas, tiled; "
            "print(int(gemm.blas_is_narrow()), "
            "int(tiled.LANES == 16 and blas.library() is not None))")
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    narrow_now, could_be = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                          capture_output=True, text=True).stdout.split()
    assert narrow_now == could_be
