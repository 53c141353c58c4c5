"""Compiled loops on both cores, run by OpenBLAS's own worker threads.

After every threaded product OpenBLAS's workers spin on their core for about 0.1 s (nop
loops, ``THREAD_TIMEOUT``), waiting for the next one. A training step makes products often
enough that they never sleep, so a second pool of threads (numba's ``parallel=True``, Python
threads) finds its cores taken: a layer norm that took 0.11 ms on two threads took 5-8 ms
right after a product. Making the workers sleep at once (``OPENBLAS_THREAD_TIMEOUT=4``, read
when NumPy loads) costs every threaded product a wake-up instead: ResNet-20's step 128 ->
147 ms, a GRU's 32 -> 42 (Intel Xeon, 2 vCPUs).

So the work goes to those spinning workers: OpenBLAS's ``exec_blas`` runs a queue of jobs,
the first on the calling thread and each other one on a worker, and returns when all are
done. Two kinds of job:

- ``run``: a compiled job, a C function (a numba ``cfunc``, ``Task``) that gets a pointer
  (``args``) and its part number; here ``args`` points to an int64 array of parameters
  (addresses, sizes, float64 bits), whose first entry is the number of parts. Dispatching
  one costs about 8 us, so callers split only longer loops (``parallel``); the product right
  after runs as fast as before.
- ``in_parts``: a Python function, called through a ctypes callback, which takes the
  interpreter's lock on the worker's thread. The parts run at once where their time is in
  NumPy's products and loops, which let go of the lock: attention's head blocks (B16 T196
  H8 d32, forward and backward, 46 -> 30 ms). About 50 us a call. Where the work is products
  that OpenBLAS already splits, or copies that memory bandwidth bounds, it gains nothing:
  depthwise convolutions split by channels measured 1.4x slower (many small products and
  copies contend for the lock), a convolution's weight gradient split by positions, and
  copies of whole maps, the same.

A job whose parts must wait for each other between its phases (a recurrent layer's steps)
checks that they run ``together`` and then ``meet`` at a barrier: counts updated
atomically, a spin that yields its core after a while. When the parts run in turn instead,
the first does them all.

Only a job entry's head is relied on: blas_queue_t (common_thread.h) starts with routine,
position, assigned, args, range_m, range_n, sa, sb, next, as it has since GotoBLAS. Entries
are zeroed blocks of ``_ENTRY_BYTES`` linked through ``next`` (OpenBLAS walks the links and
never indexes the queue), mode 0 (a plain routine). Where NumPy's BLAS is not a threaded
(pthreads) scipy-openblas, or runs one thread (threadpoolctl, ``OPENBLAS_NUM_THREADS``), the
parts run in turn on the calling thread.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import sys
import threading

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .blas import address, library

# the flags of element-wise arithmetic (``fused``'s): multiply-adds may fuse
ELEMENT_WISE = frozenset({"contract"})

TASK_SIGNATURE = types.intc(types.voidptr, types.voidptr, types.voidptr, types.voidptr,
                            types.voidptr, types.int64)


class Task:
    """A job for OpenBLAS's queue: ``function`` compiled as a ``TASK_SIGNATURE`` cfunc when
    first run (cached on disk like the loops it calls: 0.2 s to compile, 2-4 ms to load;
    about 24 MB resident for all of parallel's), so a process loads only the jobs its model
    runs. ``fastmath``: the flags of its loops, as ``fused``'s (the loops it inlines take the
    job's flags, not their own; ``Task.element_wise``)."""

    def __init__(self, function, fastmath: frozenset = frozenset()):
        self.function = function
        self.fastmath = set(fastmath)

    @functools.cached_property
    def compiled(self):
        return numba.cfunc(TASK_SIGNATURE, cache=True, error_model="numpy",
                           fastmath=self.fastmath)(self.function)

    @classmethod
    def element_wise(cls, function):
        """A job whose arithmetic may fuse multiply-adds (``ELEMENT_WISE``): the LSTM step's
        gates (their tanh's polynomials), T 64 H 256 B 32 forward 5.5 -> 5.2 ms."""
        return cls(function, ELEMENT_WISE)

    def load(self) -> None:
        """Compile the job now (or load it from the cache), not on its first run."""
        self.compiled  # noqa: B018 -- the property compiles it


_ENTRY_BYTES = 256
_ENTRY_WORDS = _ENTRY_BYTES // 8
# the fields' places in an entry, in 8-byte words
_ROUTINE, _ARGS, _NEXT = 0, 3, 8


@intrinsic
def _pointer(typingctx, address):
    """An int64 address as a void pointer, for ``numba.carray``."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.int64), codegen


@numba.njit(inline="always")
def parameters(args, count):
    """The job's parameters: the int64 array ``args`` points to, ``count`` long."""
    return numba.carray(args, (count,), dtype=np.int64)


@numba.njit(inline="always")
def floats(params, index, shape):
    """The float32 array whose address is ``params[index]``, C-ordered, of ``shape``."""
    return numba.carray(_pointer(params[index]), shape, dtype=np.float32)


@numba.njit(inline="always")
def doubles(params, index, shape):
    """The float64 array whose address is ``params[index]``, C-ordered, of ``shape``."""
    return numba.carray(_pointer(params[index]), shape, dtype=np.float64)


@numba.njit(inline="always")
def integers(params, index, count):
    """The int64 array of ``count`` values whose address is ``params[index]``."""
    return int64s(params[index], count)


@numba.njit(inline="always")
def int32s(address, count):
    """The int32 array of ``count`` values at ``address`` (an int64)."""
    return numba.carray(_pointer(address), (count,), dtype=np.int32)


@numba.njit(inline="always")
def floats_at(address, count):
    """The float32 array of ``count`` values at ``address`` (an int64)."""
    return numba.carray(_pointer(address), (count,), dtype=np.float32)


@numba.njit(inline="always")
def int64s(address, count):
    """The int64 array of ``count`` values at ``address`` (an int64)."""
    return numba.carray(_pointer(address), (count,), dtype=np.int64)


@numba.njit(inline="always")
def number(params, index):
    """The float64 whose bits are ``params[index]``."""
    return params[index:index + 1].view(np.float64)[0]


@numba.njit(inline="always")
def part_range(count, part, parts, multiple):
    """Part ``part`` of ``parts`` of range(count): about equal runs that start at multiples
    of ``multiple`` (16 for runs of float32 values: two cores then never write one cache
    line)."""
    start = (count * part // parts) // multiple * multiple
    end = count if part == parts - 1 else (count * (part + 1) // parts) // multiple * multiple
    return start, end


@intrinsic
def _fetch_add(typingctx, address, value):
    """Atomically add ``value`` to the int64 at ``address``; the value before."""
    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.atomic_rmw("add", pointer, args[1], "seq_cst")
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _load(typingctx, address):
    """The int64 at ``address``, read atomically (what was written before it was stored
    is seen too)."""
    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(pointer, "acquire", 8)
    return types.int64(types.int64), codegen


@intrinsic
def _compare_exchange(typingctx, address, expected, value):
    """Store ``value`` at ``address`` if it holds ``expected``; the value it held."""
    def codegen(context, builder, signature, args):
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        pair = builder.cmpxchg(pointer, args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)
    return types.int64(types.int64, types.int64, types.int64), codegen


_X86 = llvmlite.binding.get_default_triple().startswith(("x86_64", "i386", "i686"))


@intrinsic
def _pause(typingctx):
    """x86's spin-wait hint (nothing elsewhere)."""
    def codegen(context, builder, signature, args):
        if _X86:
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(function, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def _give_way(typingctx):
    """Let another thread have this core (``sched_yield``, linked from the C library)."""
    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(function, [])
        return context.get_dummy_value()
    return types.none(), codegen


@numba.njit(inline="always")
def _wait(spins):
    """One turn of a spin-wait: a pause for the first ``_SPINS_BEFORE_YIELDING`` turns,
    then the core given up each turn, so that a part whose thread the system has not run
    (more threads than cores) gets it sooner."""
    if spins < _SPINS_BEFORE_YIELDING:
        _pause()
    else:
        _give_way()


# turns of a spin-wait before it yields (a pause each): a part's partner on another core
# arrives within microseconds; with more threads than cores, a spinning thread held the core
# its partner needed for the rest of its time slice (an LSTM direction's backward of 64
# steps, 128 meetings, took 0.9 s instead of 28 ms beside two other such processes)
_SPINS_BEFORE_YIELDING = 1 << 11
# how long a job's first part waits for the others to join before it does all the parts
# itself (2.3 ms measured): they start within microseconds when they run at once, and never
# when the parts run one after another (``run``'s fallback)
_JOIN_SPINS = 1 << 14
_DECIDED, _ALONE = 1 << 40, 1 << 41


@numba.njit(inline="always")
def together(state, part, parts):
    """Whether the job's parts run at the same time, so they may ``meet``: part 0 waits for
    the others to join and decides; if they do not all join in time, it does every part's
    work itself, and this returns False to it and to the parts that come late (which then
    do nothing). ``state`` is the address of an int64 that is 0 before the job."""
    if parts == 1:
        return True
    spins = 0
    if part != 0:
        _fetch_add(state, 1)
        while True:
            seen = _load(state)
            if seen & _DECIDED:
                return (seen & _ALONE) == 0
            _wait(spins)
            spins += 1
    while True:
        seen = _load(state)
        if seen == parts - 1:
            if _compare_exchange(state, seen, seen | _DECIDED) == seen:
                return True
        elif spins >= _JOIN_SPINS:
            if _compare_exchange(state, seen, seen | _DECIDED | _ALONE) == seen:
                return False
        else:
            _wait(spins)
            spins += 1


@numba.njit(inline="always")
def meet(counter, parts, times):
    """Wait until every part has come here ``times`` times, counting at ``counter`` (an
    int64 that was 0 before the job): a barrier between the phases of a job whose parts
    run ``together``."""
    _fetch_add(counter, 1)
    spins = 0
    while _load(counter) < times * parts:
        _wait(spins)
        spins += 1


def float_bits(value: float) -> int:
    """``value`` as the int64 of its float64 bits (read back by ``number``)."""
    return int(np.array(value, np.float64).view(np.int64))


@functools.cache
def _openblas():
    """OpenBLAS's exec_blas and its thread count's getter and setter, or None where jobs
    cannot go to its workers (another BLAS, an OpenMP or single-threaded build, or not
    Linux)."""
    openblas = library()
    if openblas is None or not sys.platform.startswith("linux"):
        return None
    try:
        execute = openblas.exec_blas
        get_threads = openblas.scipy_openblas_get_num_threads64_
        set_threads = openblas.scipy_openblas_set_num_threads64_
        threading_model = openblas.scipy_openblas_get_parallel64_
    except AttributeError:
        return None
    threading_model.restype = ctypes.c_int
    if threading_model() != 1:  # 0 sequential, 1 pthreads, 2 OpenMP
        return None
    execute.argtypes = [ctypes.c_int64, ctypes.c_void_p]
    execute.restype = ctypes.c_int
    get_threads.restype = ctypes.c_int
    set_threads.argtypes = [ctypes.c_int]
    set_threads.restype = None
    return execute, get_threads, set_threads


_queues = threading.local()


def parts() -> int:
    """How many parts work is split into: OpenBLAS's thread count (2 on a 2-core machine,
    or what threadpoolctl set), 1 where jobs cannot go to its workers."""
    found = _openblas()
    return 1 if found is None else max(1, found[1]())


def _execute(routine: int, args: int, count: int) -> None:
    """exec_blas over ``count`` entries that run ``routine`` (an address) with ``args``."""
    found = getattr(_queues, "entries", None)
    if found is None or len(found[0]) < count * _ENTRY_WORDS:
        words = np.zeros(count * _ENTRY_WORDS, np.uint64)
        found = _queues.entries = (words, address(words))
    words, base = found
    for part in range(count):
        entry = part * _ENTRY_WORDS
        words[entry + _ROUTINE] = routine
        words[entry + _ARGS] = args
        words[entry + _NEXT] = base + (part + 1) * _ENTRY_BYTES if part < count - 1 else 0
    _openblas()[0](count, base)


def run(job, params: np.ndarray) -> None:
    """Runs the compiled ``job`` over parts 0 .. params[0] - 1, part 0 on this thread and
    the others on OpenBLAS's workers; returns when all are done. ``params`` is int64,
    C-ordered, and stays alive (and unchanged) until then."""
    count = int(params[0])
    if count == 1 or parts() == 1:  # also inside ``in_parts``: a worker would wait for itself
        for part in range(count):
            job.compiled.ctypes(address(params), None, None, None, None, part)
        return
    _execute(job.compiled.address, address(params), count)


_PYTHON_JOB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
# in_parts' calls in flight: token -> (function, errors). One callback serves them all,
# made once: a ctypes callback made per call sits in a reference cycle, which kept the
# function, and the arrays its closure holds, alive until the collector ran (a tiny GPT's
# step peak 105 -> 139 MiB)
_calls: dict = {}
_tokens = itertools.count(1)


def _call_part(token, range_m, range_n, sa, sb, part):
    function, errors = _calls[token]
    try:
        function(part)
    except BaseException as error:  # noqa: BLE001 -- raised again by in_parts, on its thread
        errors[part] = error
    return 0


_PART = _PYTHON_JOB(_call_part)


def in_parts(function, count: int) -> None:
    """Calls ``function(part)`` for each part in range(count), part 0 on this thread and the
    others on OpenBLAS's workers, at once; returns when all are done, raising the first
    part's error if any raised. The parts share the interpreter's lock, so this pays where
    ``function`` spends its time in NumPy's products and loops, which let go of it. BLAS
    runs one thread meanwhile (each part's products on its own core; a threaded product
    from a worker would wait for itself). The parts must write disjoint arrays and draw no
    random numbers (their order is the threads')."""
    found = _openblas()
    if count == 1 or parts() == 1:  # also inside another call: a worker would wait for itself
        for part in range(count):
            function(part)
        return
    errors: list = [None] * count
    token = next(_tokens)
    _calls[token] = (function, errors)
    _, get_threads, set_threads = found
    threads = get_threads()
    set_threads(1)
    try:
        _execute(ctypes.cast(_PART, ctypes.c_void_p).value, token, count)
    finally:
        set_threads(threads)
        del _calls[token]
    for error in errors:
        if error is not None:
            raise error
