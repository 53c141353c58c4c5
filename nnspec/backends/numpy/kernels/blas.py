"""Two BLAS extensions NumPy does not offer, from the OpenBLAS that NumPy's wheels ship, and
the arrays' addresses that every foreign call and compiled job takes.

``add_product``: ``out += a @ b``, gemm with beta = 1. NumPy's matmul writes a fresh product,
which a second pass then adds. A convolution summing one product per kernel offset saves a
pass over its output per offset: a 16-channel 3x3 layer's forward 3.3 -> 1.4 ms at batch 32.

``transpose``: a matrix's transpose as a new C-ordered array, by omatcopy, which works in
tiles. NumPy copies a transposed view walking one side with a long stride: a 2048 x 512
float32 matrix took 7.4 ms against 0.7, and a 512 -> 512 3x3 convolution's weight gradient,
(9, 512, 512) to torch's (512, 512, 9), 17.9 ms.

The functions are the CBLAS ones of NumPy's bundled scipy-openblas (``scipy_cblas_sgemm64_``
and the like, 64-bit integers); where NumPy has another BLAS, or an operand's layout is not
one BLAS takes, NumPy does the work.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# multiply-adds below which NumPy's product and add are the faster: the foreign call and its
# pointers cost about 7 us, NumPy's 1 (a 16 x 16 by 16 x 1024 product: 13 us against 8; a
# 16 x 6 by 6 x 8192 one, 0.8M multiply-adds: 33 against 40)
SMALL_PRODUCT = 1 << 19


# where an ndarray object keeps its data pointer: right after the object's header, as in
# NumPy's C struct (PyArrayObject_fields: PyObject_HEAD, then char *data); checked below
_DATA_FIELD = object.__basicsize__
_POINTER = ctypes.c_void_p


def _address_by_ctypes(array: np.ndarray) -> int:
    return array.ctypes.data


def _address_by_field(array: np.ndarray) -> int:
    return _POINTER.from_address(id(array) + _DATA_FIELD).value or 0


def _probe_address():
    """The quicker way to an array's address when it gives NumPy's own answer here (it does
    on CPython's standard builds; another layout falls back to ``ndarray.ctypes``)."""
    probe = np.arange(8, dtype=np.float32)[3:]
    return _address_by_field if _address_by_field(probe) == probe.ctypes.data else \
        _address_by_ctypes


# an array's data address, as an int: a job's parameters hold 5-12 of them, and ``.ctypes``
# builds an object a call (0.8 us; the field read 0.17): a batch norm's two jobs spent 15 us
# of their 40 us of Python on it
address = _probe_address()


@functools.cache
def library() -> ctypes.CDLL | None:
    """NumPy's bundled scipy-openblas, or None when NumPy has another BLAS."""
    directory = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(directory, "libscipy_openblas64_*.so*"))):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(library, "scipy_cblas_sgemm64_"):
            return library
    return None


@functools.cache
def _openblas() -> dict:
    """{(name, dtype): function} of NumPy's bundled scipy-openblas: "gemm" and "omatcopy" for
    float32 and float64; empty when there is none."""
    library_ = library()
    try:
        names = {("gemm", np.dtype(np.float32)): library_.scipy_cblas_sgemm64_,
                 ("gemm", np.dtype(np.float64)): library_.scipy_cblas_dgemm64_,
                 ("omatcopy", np.dtype(np.float32)): library_.scipy_cblas_somatcopy64_,
                 ("omatcopy", np.dtype(np.float64)): library_.scipy_cblas_domatcopy64_}
    except AttributeError:  # also no library at all
        return {}
    index, pointer, enum = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for (name, dtype), function in names.items():
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        if name == "gemm":
            function.argtypes = [enum, enum, enum, index, index, index, scalar, pointer,
                                 index, pointer, index, scalar, pointer, index]
        else:
            function.argtypes = [enum, enum, index, index, scalar, pointer, index, pointer,
                                 index]
        function.restype = None
    return names


def accumulates() -> bool:
    """Whether ``add_product`` runs as one BLAS call here."""
    return ("gemm", np.dtype(np.float32)) in _openblas()


def add_product(a, b, out):
    """out += a @ b for 2-d arrays; ``out`` may be a strided view (a block of columns) but
    must not share memory with ``a`` or ``b``."""
    m, k = a.shape
    n = b.shape[1]
    if m * n * k < SMALL_PRODUCT:  # also every empty one
        if min(m, n, k) > 0:
            out += a @ b
        return
    gemm = _openblas().get(("gemm", out.dtype)) if out.flags.writeable else None
    layout_a, layout_b = _layout(a), _layout(b)
    if gemm is None or a.dtype != out.dtype or b.dtype != out.dtype or layout_a is None \
            or layout_b is None or _layout(out, transposable=False) is None:
        out += a @ b
        return
    (trans_a, lda), (trans_b, ldb) = layout_a, layout_b
    gemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, 1.0, address(a), lda, address(b), ldb,
         1.0, address(out), out.strides[0] // out.itemsize)


def _layout(matrix, transposable=True):
    """(transpose flag, leading dimension) under which BLAS reads ``matrix`` row-major:
    as it is when its rows are unit-stride runs, transposed when its columns are; None
    when neither holds, the leading dimension would not be a valid one, or the data is not
    aligned to its type."""
    if matrix.ndim != 2 or not matrix.flags.aligned:
        return None
    rows, columns = matrix.shape
    size = matrix.itemsize
    row_stride, column_stride = matrix.strides
    if column_stride == size and row_stride % size == 0 and row_stride >= size * max(1, columns):
        return _NO_TRANS, row_stride // size
    if transposable and row_stride == size and column_stride % size == 0 \
            and column_stride >= size * max(1, rows):
        return _TRANS, column_stride // size
    return None


# elements below which NumPy's copy of the transposed view is the faster (the foreign call
# costs a few microseconds; a 64 x 64 matrix is in cache either way)
SMALL_TRANSPOSE = 1 << 14


def transpose(matrix, out=None):
    """``matrix.T`` as a C-ordered copy, or into ``out`` (an array of that shape whose rows
    are unit-stride runs, such as a block of a larger array) when given. ``matrix`` is 2-d;
    its elements are copied exactly (omatcopy's scale is one). NumPy's copy of a transposed
    view runs at 0.5-1 GB/s at large sizes (a (T * H, N) sequence of 16 MB: 31 ms against
    3.3)."""
    rows, columns = matrix.shape
    if out is None:
        out = np.empty((columns, rows), matrix.dtype)
    copy = _openblas().get(("omatcopy", matrix.dtype))
    layout = _layout(matrix, transposable=False)
    target = _layout(out, transposable=False)
    if copy is None or matrix.size < SMALL_TRANSPOSE or layout is None or target is None \
            or out.dtype != matrix.dtype or out.shape != (columns, rows):
        np.copyto(out, matrix.T)
        return out
    copy(_ROW_MAJOR, _TRANS, rows, columns, 1.0, address(matrix), layout[1],
         address(out), target[1])
    return out
