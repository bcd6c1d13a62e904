"""Running decoding work on several threads: the numba kernels release the GIL, so Python threads work.

A `Budget` caps how many threads one call (a `load_file`, a `get_tensor`) may occupy, the caller
included. `run(tasks, budget)` runs a list of independent tasks: the caller works through the list
and, while tasks are left, takes a thread of the budget to help it; a task may itself call `run`
(a tensor split into pieces, inside a whole file). The caller never waits for work that no thread
has started, so nesting cannot deadlock, and with a budget of one thread nothing leaves the caller.
numba's own `parallel=True` is not used: its default threading layer aborts when several Python
threads enter it at once.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

__all__ = ["Budget", "run", "default_threads"]

T = TypeVar("T")

_MAX_WORKERS = 64  # the shared pool's size; a budget above it only queues helpers that the caller cancels


def default_threads() -> int:
    """The thread count used when none is given: one per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Budget:
    """How many threads a call may use at once, the calling thread included (at least 1)."""

    def __init__(self, threads: int | None = None):
        if threads is None:
            threads = default_threads()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, not {threads!r}")
        self.threads = threads
        self._helpers = threading.Semaphore(threads - 1)

    @property
    def parallel(self) -> bool:
        """True when more than the calling thread may work."""
        return self.threads > 1

    def _take(self) -> bool:
        return self._helpers.acquire(blocking=False)

    def _give(self) -> None:
        self._helpers.release()


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    """The process-wide helper threads, made on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="dcformat-decode")
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's threads do not exist there, so start afresh."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run(tasks: Sequence[Callable[[], T]], budget: Budget) -> list[T]:
    """Run every task, in list order as far as threads allow, and return their results in order.

    If tasks raise, the exception of the first such task in the list is raised after all have run.
    """
    if not budget.parallel or len(tasks) <= 1:
        return [task() for task in tasks]
    return _Run(tasks, budget).run()


class _Run:
    """One `run` call's shared state. A class rather than closures that call each other: closures
    would form a reference cycle through their cells, and every task (with the arrays it holds,
    a decoded tensor among them) would then live until the garbage collector found the cycle."""

    def __init__(self, tasks: Sequence[Callable[[], T]], budget: Budget):
        self.tasks, self.budget = tasks, budget
        self.results: list = [None] * len(tasks)
        self.errors: list[BaseException | None] = [None] * len(tasks)
        self.lock = threading.Lock()
        self.next, self.stop = 0, False
        self.helpers: list[Future] = []

    def run(self) -> list:
        try:
            self.work()
        finally:
            with self.lock:
                self.stop = True  # after an interrupt, helpers start no new task
                started = list(self.helpers)
            for future in started:
                if future.cancel():  # queued, never started: its thread was never used
                    self.budget._give()
                else:
                    future.result()
        error = next((e for e in self.errors if e is not None), None)
        # An error's traceback holds the frames of the tasks that raised it and, through their callers,
        # this one (a task run on this thread is called from here): so no local of this frame may hold
        # the results, or they would live as long as any error raised by a task does.
        self.tasks = self.errors = []
        if error is not None:
            self.results = []
            try:
                raise error
            finally:
                error = None
        return self._hand_over()

    def _hand_over(self) -> list:
        results, self.results = self.results, []
        return results

    def take(self) -> int | None:
        """The next task to run, after asking for a helper if tasks remain beyond it."""
        with self.lock:
            i = self.next
            if self.stop or i >= len(self.tasks):
                return None
            self.next = i + 1
            if i + 1 < len(self.tasks) and self.budget._take():
                try:
                    self.helpers.append(_executor().submit(self.helper))
                except BaseException:  # e.g. the interpreter is shutting down: work on alone
                    self.budget._give()
        return i

    def work(self) -> None:
        while (i := self.take()) is not None:
            try:
                self.results[i] = self.tasks[i]()
            except Exception as exc:  # noqa: BLE001 - re-raised by run, in task order
                self.errors[i] = exc

    def helper(self) -> None:
        try:
            self.work()
        finally:
            self.budget._give()
