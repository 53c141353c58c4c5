"""Many inputs in worker processes, each under a time limit and a memory limit (a hang or a
runaway allocation is a finding, not the end of the run), with every distinct crasher kept
(the shortest input seen, minimised when that is cheap) as a regression case."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import random
import re
import resource
import signal
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from fuzz import hostile, oracle
from fuzz.generate import generated
from fuzz.mutate import mutated

KINDS = ("traceback", "hang", "memory", "died")
MINIMISE_SECONDS = 30.0


class Timeout(BaseException):
    """Raised by SIGALRM in the middle of an input; a BaseException so no `except Exception`
    in nnspec can swallow it."""


def make_input(seed: str, index: int) -> tuple[str, str, dict]:
    """(text, how it was made, command options) of input `index`: the same for a given seed."""
    rng = random.Random(f"{seed}:{index}")
    text, origin = mutated(rng) if rng.random() < 0.6 else generated(rng)
    return text, origin, rng.choice(oracle.OPTIONS)


def make_scenario(seed: str, index: int) -> hostile.Scenario:
    """Hostile command line `index` of a `--cli` campaign: the same for a given seed."""
    return hostile.make_scenario(random.Random(f"{seed}:cli:{index}"))


_WORKSPACE: list[Path] = []


def workspace() -> Path:
    """This process's prepared files for hostile command lines (made on first use)."""
    if not _WORKSPACE:
        import tempfile

        _WORKSPACE.append(hostile.prepare(Path(tempfile.mkdtemp(prefix="nnspec-fuzz-")) / "base"))
    return _WORKSPACE[0]


@dataclass(frozen=True)
class Result:
    outcome: str  # built | diagnostics | traceback | hang | memory | died | minimised
    signature: str = ""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome in KINDS


def _frames(tb) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(tb) if "/nnspec/" in f.filename.replace("\\", "/")]


def signature(kind: str, err: BaseException) -> str:
    """What tells one bug from another: the stage it happened in and where; the line only for
    tracebacks (a hang stops at a different line every time)."""
    frames = _frames(err.__traceback__)
    if not frames:
        return f"{kind} {type(err).__name__} in tests/fuzz/oracle.py"
    stage, inner = frames[0].name, frames[-1]
    where = inner.filename.replace("\\", "/").rsplit("/nnspec/", 1)[-1]
    if kind == "traceback":
        return f"{kind} {type(err).__name__} in {stage} at nnspec/{where}:{inner.lineno} " \
               f"({inner.name})"
    return f"{kind} in {stage} at nnspec/{where} ({inner.name})"


def _raise_timeout(signum, frame):
    raise Timeout


def run_one(text: str, options: dict | None, time_limit: float) -> Result:
    """One input under a SIGALRM time limit (main thread only); all options when None."""
    return run_limited(lambda: oracle.run_all_options(text) if options is None
                       else oracle.run(text, options), time_limit)


def run_scenario(scenario: hostile.Scenario, time_limit: float) -> Result:
    """One hostile command line in a scratch copy of this process's workspace."""
    base = workspace()
    return run_limited(lambda: hostile.run(scenario, base), time_limit)


def run_limited(thunk, time_limit: float) -> Result:
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        return Result(thunk())
    except Timeout as err:
        return Result("hang", signature("hang", err), _short_traceback(err))
    except MemoryError as err:
        return Result("memory", signature("memory", err), _short_traceback(err))
    except Exception as err:  # noqa: BLE001 - the finding: neither a result nor diagnostics
        return Result("traceback", signature("traceback", err),
                      "".join(traceback.format_exception(err)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _short_traceback(err: BaseException) -> str:
    return "".join(traceback.format_list(traceback.extract_tb(err.__traceback__)[-6:]))


def minimise(text: str, options: dict | None, wanted: str, budget: float,
             time_limit: float) -> str:
    """Delete lines, then ever smaller chunks, while the same failure still happens."""
    deadline = time.monotonic() + budget

    def same(candidate: str) -> bool:
        return run_one(candidate, options, time_limit).signature == wanted

    for unit in ("\n", None):
        parts = text.split("\n") if unit else list(text)
        glue = "\n" if unit else ""
        chunk = max(1, len(parts) // 2)
        while chunk >= 1 and time.monotonic() < deadline:
            i, shrunk = 0, False
            while i < len(parts) and time.monotonic() < deadline:
                candidate = parts[:i] + parts[i + chunk:]
                if candidate and same(glue.join(candidate)):
                    parts, shrunk = candidate, True
                else:
                    i += chunk
            if not shrunk:
                chunk //= 2
        text = glue.join(parts)
    return text


# ---- worker processes -----------------------------------------------------------------------


def _limit_memory(limit: int) -> None:
    """Let the worker grow by `limit` over the address space it was forked with, its
    parent's: a test process that has loaded torch and run the kernel tests already maps
    about 1.7 GiB, which an absolute 2 GiB limit left no room above (every input hit it)."""
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc: the limit counts from nothing
        mapped = 0
    resource.setrlimit(resource.RLIMIT_AS, (mapped + limit, mapped + limit))


def _send(conn, message) -> None:
    """JSON between the processes (the house has no pickle, multiprocessing's default)."""
    conn.send_bytes(json.dumps(message).encode("utf-8"))


def _receive(conn):
    return json.loads(conn.recv_bytes().decode("utf-8"))


def _worker(conn, seed: str, time_limit: float, memory_limit: int) -> None:
    """Answer jobs until told to stop; exit after a hang or a memory hit (a fresh process
    is cheaper than trusting one interrupted anywhere)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_memory(memory_limit)
    while True:
        job = _receive(conn)
        if job is None:
            return
        kind, payload = job[0], job[1]
        if kind == "index":
            text, _, options = make_input(seed, payload)
            result = run_one(text, options, time_limit)
        elif kind == "cli":
            result = run_scenario(make_scenario(seed, payload), time_limit)
        elif kind == "replay":
            result = run_one(payload, None, time_limit)
        elif kind == "replay-cli":
            result = run_scenario(hostile.Scenario.from_json(json.loads(payload)), time_limit)
        else:  # minimise
            text, options, wanted = payload
            result = Result("minimised", "", minimise(text, options, wanted, MINIMISE_SECONDS,
                                                  time_limit))
        _send(conn, [job, asdict(result)])
        if result.outcome in ("hang", "memory"):
            return


@dataclass
class _Slot:
    process: multiprocessing.Process
    conn: object
    job: tuple | None = None
    started: float = 0.0
    served: int = 0


class Pool:
    """`workers` processes with limits; a job that takes `time_limit` + grace is killed."""

    RECYCLE = 3000  # jobs before a worker is replaced (memory creep)

    def __init__(self, workers: int, seed: str, time_limit: float, memory_limit: int):
        self.seed, self.time_limit, self.memory_limit = seed, time_limit, memory_limit
        self.context = multiprocessing.get_context("fork")
        self.slots = [self._start() for _ in range(workers)]

    def _start(self) -> _Slot:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker, daemon=True,
                                       args=(child, self.seed, self.time_limit,
                                             self.memory_limit))
        process.start()
        child.close()
        return _Slot(process, parent)

    def _replace(self, slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()
        slot.process.join()
        slot.conn.close()
        self.slots[self.slots.index(slot)] = self._start()

    def _allowed(self, job) -> float:
        """Seconds before a job counts as hung in C code (the worker's alarm did not fire)."""
        return self.time_limit + 5 + (MINIMISE_SECONDS if job[0] == "minimise" else 0)

    def close(self) -> None:
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.kill()
            slot.process.join()

    def run(self, jobs, on_result) -> None:
        """Feed `jobs` (an iterator) to the workers; call on_result(job, Result) for each."""
        jobs = iter(jobs)
        exhausted = False
        while True:
            for slot in list(self.slots):
                if slot.job is None and not exhausted:
                    job = next(jobs, None)
                    if job is None:
                        exhausted = True
                        break
                    slot.job, slot.started = job, time.monotonic()
                    _send(slot.conn, job)
            busy = [s for s in self.slots if s.job is not None]
            if not busy:
                return
            ready = wait([s.conn for s in busy], timeout=0.5)
            now = time.monotonic()
            for slot in busy:
                if slot.conn in ready:
                    try:
                        job, fields = _receive(slot.conn)
                        result = Result(**fields)
                    except (EOFError, OSError):
                        code = slot.process.exitcode if not slot.process.is_alive() else None
                        job, result = slot.job, Result("died", f"died (exit {code})")
                        slot.job = None
                        self._replace(slot)
                        on_result(job, result)
                        continue
                    slot.job, slot.served = None, slot.served + 1
                    if result.outcome in ("hang", "memory") or slot.served >= self.RECYCLE:
                        self._replace(slot)
                    on_result(job, result)
                elif now - slot.started > self._allowed(slot.job):
                    job, slot.job = slot.job, None
                    self._replace(slot)
                    on_result(job, Result("hang", "hang in C code (killed)",
                                          f"no answer after {now - slot.started:.0f} s"))


# ---- a fuzzing campaign -------------------------------------------------------------------


@dataclass
class Finding:
    signature: str
    index: int
    text: str
    origin: str
    options: dict
    detail: str
    count: int = 1
    suffix: str = ".nn"  # ".json" for a hostile command line (hostile.Scenario)


@dataclass
class Campaign:
    seed: str
    count: int
    workers: int = 2
    time_limit: float = 10.0
    memory_limit: int = 3 << 30
    max_seconds: float = float("inf")
    cli: bool = False  # hostile command lines and data files instead of specs
    tried: int = 0
    outcomes: Counter = field(default_factory=Counter)
    findings: dict[str, Finding] = field(default_factory=dict)
    elapsed: float = 0.0

    def run(self, progress=print) -> None:
        if self.cli:
            workspace()  # trained once here, before the workers fork and the clocks start
        pool = Pool(self.workers, self.seed, self.time_limit, self.memory_limit)
        start = last = time.monotonic()

        def on_result(job, result: Result) -> None:
            nonlocal last
            self.tried += 1
            self.outcomes[result.outcome] += 1
            if result.failed:
                self._record(job[1], result)
            if time.monotonic() - last > 30:
                last = time.monotonic()
                progress(self.progress_line(last - start))

        try:
            in_time = itertools.takewhile(lambda _: time.monotonic() - start < self.max_seconds,
                                          range(self.count))
            kind = "cli" if self.cli else "index"
            pool.run(([kind, i] for i in in_time), on_result)
        finally:
            self.elapsed = time.monotonic() - start
            pool.close()

    def _record(self, index: int, result: Result) -> None:
        if self.cli:
            scenario = make_scenario(self.seed, index)
            text, origin, options = json.dumps(scenario.to_json(), indent=1), scenario.origin, {}
        else:
            text, origin, options = make_input(self.seed, index)
        known = self.findings.get(result.signature)
        if known is None:
            self.findings[result.signature] = Finding(result.signature, index, text, origin,
                                                      options, result.detail,
                                                      suffix=".json" if self.cli else ".nn")
        else:
            known.count += 1
            if len(text) < len(known.text):  # the shortest input is the best example
                known.index, known.text, known.origin, known.options = index, text, origin, \
                    options
                known.detail = result.detail

    def minimise_tracebacks(self) -> None:
        """Shrink each traceback's input in a worker (with the same limits)."""
        wanted = [f for f in self.findings.values()
                  if f.signature.startswith("traceback") and f.suffix == ".nn"]
        if not wanted:
            return
        pool = Pool(self.workers, self.seed, self.time_limit, self.memory_limit)
        jobs = [["minimise", [f.text, f.options, f.signature]] for f in wanted]

        def on_result(job, result: Result) -> None:
            finding = self.findings[job[1][2]]
            if result.outcome == "minimised" and result.detail:
                finding.text = result.detail

        try:
            pool.run(jobs, on_result)
        finally:
            pool.close()

    def progress_line(self, elapsed: float) -> str:
        failed = ", ".join(f"{self.outcomes[k]} {k}" for k in KINDS)
        return (f"{self.tried:,} inputs in {elapsed:.0f} s ({self.tried / max(elapsed, 1e-9):.1f}"
                f"/s): {failed}")

    def summary(self) -> str:
        o = self.outcomes
        lines = [
            (f"fuzz{' --cli' if self.cli else ''}: seed {self.seed}, {self.workers} workers, "
             f"{self.time_limit:g} s and "
             f"{self.memory_limit >> 20} MiB per input"),
            self.progress_line(self.elapsed),
            f"  results: {o['built']:,} built, {o['diagnostics']:,} diagnostics",
            (f"  tracebacks: {o['traceback']}, hangs: {o['hang']}, memory-limit hits: "
             f"{o['memory']}, workers died: {o['died']}"),
        ]
        for f in sorted(self.findings.values(), key=lambda f: -f.count):
            lines.append(f"  {f.count:>6} x {f.signature}  (e.g. input {f.index}: {f.origin})")
        return "\n".join(lines)


def case_name(finding: Finding) -> str:
    """`traceback-ValueError-in-check_text-at-syntax-parser-py-244-_number-1f2e3d4c.nn`: the
    signature as a file name, then a digest of the text."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", finding.signature.replace("nnspec/", "")).strip("-")
    digest = hashlib.sha256(finding.text.encode("utf-8")).hexdigest()[:8]
    return f"{slug[:90]}-{digest}{finding.suffix}"


def save_cases(findings, directory: Path) -> list[Path]:
    """Write each finding's input exactly (UTF-8, newlines kept) as a regression case."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for finding in findings:
        path = directory / case_name(finding)
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(finding.text)
        written.append(path)
    return written


def replay(paths, workers: int, time_limit: float, memory_limit: int) -> dict[Path, Result]:
    """Each saved case with every option set, under the limits."""
    results: dict[Path, Result] = {}
    if any(Path(p).suffix == ".json" for p in paths):
        workspace()
    pool = Pool(workers, "replay", time_limit, memory_limit)

    def on_result(job, result: Result) -> None:
        results[Path(job[2])] = result

    try:
        pool.run([["replay-cli" if Path(p).suffix == ".json" else "replay",
                   Path(p).read_text(encoding="utf-8"), str(p)] for p in paths], on_result)
    finally:
        pool.close()
    return results
