"""How many CPU threads torch uses: the cores other processes leave free, re-measured while working.

Why: every KAN step is a few dozen short parallel regions, and an OpenMP region ends when its
slowest thread does. When another process keeps one of two cores busy, the thread that shares
that core gets half of it, and the thread that waits for it spins on the core it could have
used. Measured on a 2-core CPU with one core busy (one default-KAN window, per fit step;
``kancodec bench speed --busy 0,1`` prints the same comparison):

    ============================  ========  ==================  ==================
    fit step, one window          idle, 2   one core busy, 2    one core busy, 1
    ============================  ========  ==================  ==================
    eager                         0.45 s    1.35 s              0.70 s
    compiled                      0.15 s    0.65 s              0.27 s
    ============================  ========  ==================  ==================

``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning) halves the damage under load
but costs 40 % when idle (0.67 s against 0.47 s eager), so the fix is the thread count.

The policy (:func:`choose`): ``n`` threads at most (torch's default for this machine, or what
the user set), minus one per core that other processes use, rounded so that a third of a core
of other work already counts. "Other processes" is measured, not guessed: the busy time of the
CPUs this process may run on (``/proc/stat``) minus this process's own CPU time (its
descendants' too: ``torch.compile`` compiles in worker processes), over the last
few seconds. :func:`update` is called by the fit and decode loops; it re-measures at most every
:data:`INTERVAL` seconds and changes torch's thread count only when the choice changes
(compiled kernels follow it: measured). ``--threads N`` / ``KANCODEC_THREADS=N`` /
``OMP_NUM_THREADS`` fix the count; a thread count set with ``torch.set_num_threads`` by the
program using kancodec is left alone.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import torch

from .errors import OptionError

#: seconds between measurements while working
INTERVAL = 2.0
#: other processes' load, in cores, that already costs a thread (see the module docstring)
SLACK = 0.3
#: the most threads --threads accepts
MAX_THREADS = 1024


def choose(n: int, other: float) -> int:
    """Threads to use out of ``n`` when other processes keep ``other`` cores busy."""
    return max(1, min(n, n - math.ceil(other - SLACK)))


def _cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _busy_seconds(cpus: set[int] | None) -> float | None:
    """Seconds the CPUs in ``cpus`` have spent busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy, seen = 0, False
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in values[:8]]
        busy += sum(v) - v[3] - (v[4] if len(v) > 4 else 0)  # all but idle and iowait
        seen = True
    return busy / ticks if seen else None


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


#: pids of child processes that stand for other programs (``bench speed --busy`` starts them):
#: their CPU time is other work, not kancodec's
FOREIGN: set[int] = set()


def _descendant_seconds() -> float:
    """CPU seconds of this process's live descendants and of their waited-for children
    (torch.compile's worker processes compile kernels in them: their work is ours, not
    another program's), except the :data:`FOREIGN` ones."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo, seen = 0, _children(os.getpid()), set()
    while todo and len(seen) < 256:
        pid = todo.pop()
        if pid in seen or pid in FOREIGN:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime (stat fields 14-17)
        except (OSError, ValueError, IndexError):
            continue
        todo += _children(pid)
    return total / ticks


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + _descendant_seconds()


class Governor:
    """The process's thread policy: ``auto`` (measured) or a fixed count."""

    def __init__(self) -> None:
        self.fixed: int | None = None
        self.max = torch.get_num_threads()
        self.chosen: int | None = None  # what this governor last set
        self.other: float | None = None  # the last measurement, in cores
        self._cpus = _cpus()
        self._last = self._sample()
        env = os.environ.get("KANCODEC_THREADS", "").strip()
        if env and env != "auto":
            try:
                self.set(parse(env, "KANCODEC_THREADS"))
            except OptionError as e:
                warnings.warn(f"{e}; ignored, choosing threads automatically")
        elif not env and os.environ.get("OMP_NUM_THREADS", "").strip():
            self.fixed = self.max  # the user's OpenMP setting: kept as it is

    def _sample(self) -> tuple[float, float, float] | None:
        busy = _busy_seconds(self._cpus)
        return None if busy is None else (time.monotonic(), busy, _own_seconds())

    def set(self, threads: int | str | None) -> int:
        """``None``/``"auto"``: measured from now on; an int: that many threads. Returns the count in use."""
        if threads in (None, "auto"):
            self.fixed = None
            self.update(force=True)
        else:
            self.fixed = int(threads)
            torch.set_num_threads(self.fixed)
            self.chosen = self.fixed
        return torch.get_num_threads()

    def update(self, force: bool = False) -> int:
        """Re-measure (at most every :data:`INTERVAL` s unless ``force``) and apply the choice."""
        if self.fixed is not None or (self.chosen is not None and torch.get_num_threads() != self.chosen):
            return torch.get_num_threads()  # fixed by the user, here or with torch.set_num_threads
        now = self._sample()
        if now is None or self._last is None:
            return torch.get_num_threads()
        dt = now[0] - self._last[0]
        if dt < (0.05 if force else INTERVAL):
            if not force:
                return torch.get_num_threads()
            time.sleep(0.1)
            now = self._sample()
            dt = now[0] - self._last[0]
        self.other = max(0.0, ((now[1] - self._last[1]) - (now[2] - self._last[2])) / dt)
        self._last = now
        want = choose(self.max, self.other)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
        self.chosen = want
        return want


def parse(value: str | int, option: str = "--threads") -> int | str:
    """``auto`` or a thread count from 1 to :data:`MAX_THREADS`; OptionError otherwise."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if not 1 <= n <= MAX_THREADS:
        what = "{threads}" if option == "--threads" else option
        raise OptionError(f"{what} {value!r}: give auto or a number of threads from 1 to {MAX_THREADS}", "threads")
    return n


GOVERNOR = Governor()


def update() -> int:
    """Called by the working loops: see :meth:`Governor.update`."""
    return GOVERNOR.update()


def use(threads: int | str | None = "auto") -> int:
    """Set the process's thread policy (``--threads``): ``auto`` or a count. Returns the count in use."""
    return GOVERNOR.set(parse(threads) if threads is not None else "auto")
