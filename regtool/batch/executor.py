"""Where tasks run: in this process, in a local process pool, or on Ray actors.

One interface (`Executor`) for `register-batch`, `evaluate` and `build-shapespace`: `submit(fn,
arg)` queues the call `fn(arg)` (a module-level function and a picklable argument) and returns
a ticket; `wait()` blocks until at least one call has ended and returns a `Done` per ended call.
A call that raises gives a `Done` with `error` set; the pool goes on with the other calls.

* `InlineExecutor` runs the calls in this process, one at a time, in `wait()`.
* `LocalExecutor` runs them in a process pool (spawn) whose workers end with this process, also
  when it is killed with SIGKILL (`worker_pool`).
* `RayExecutor` runs them on Ray actors (`RayWorker`), one process each, that set their torch
  threads, open their OpenGL context once and keep what `worker_cache()` holds (shape spaces,
  networks) for the next call. The actors are owned by this driver: Ray ends them when it ends
  (also when killed). An actor lost with its node is replaced and its call is run again on
  another actor, up to `max_attempts` times in all.

Workers of every kind find a per-process dict in `worker_cache()` for what they load once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from regtool.errors import ConfigError

EXECUTORS = ("local", "ray")

_CACHE: dict[Any, Any] = {}


def worker_cache() -> dict[Any, Any]:
    """Return this process's cache of things loaded once per worker (keys chosen by callers)."""
    return _CACHE


@dataclass
class Done:
    """One ended call: its ticket, the value of `fn(arg)` (None if it failed), the exception it
    raised (None on success; `traceback_text` holds where), the node it ran on (Ray node id, or
    the host name), the worker's process id, and how many times it was started."""

    ticket: int
    value: Any = None
    error: BaseException | None = None
    traceback_text: str = ""
    node: str = ""
    pid: int = 0
    attempts: int = 1


class Executor:
    """Base of the executors: `submit`, `wait`, `pending`, and a context manager that closes the
    workers."""

    workers = 1

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> int:
        raise NotImplementedError

    def wait(self) -> list[Done]:
        raise NotImplementedError

    @property
    def pending(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """End the workers (waiting for none of the unfinished calls)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, str, int]:
    """Run `fn(arg)` in a worker; return (value, host name, pid)."""
    return fn(arg), socket.gethostname(), os.getpid()


class InlineExecutor(Executor):
    """Runs every call in this process, in submission order, when `wait` is called."""

    def __init__(self) -> None:
        self._queue: deque[tuple[int, Callable, Any]] = deque()
        self._next = 0

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> int:
        self._next += 1
        self._queue.append((self._next, fn, arg))
        return self._next

    @property
    def pending(self) -> int:
        return len(self._queue)

    def wait(self) -> list[Done]:
        ticket, fn, arg = self._queue.popleft()
        try:
            value, node, pid = _call(fn, arg)
        except Exception as exc:
            return [Done(ticket, error=exc, traceback_text=traceback.format_exc(),
                         node=socket.gethostname(), pid=os.getpid())]
        return [Done(ticket, value=value, node=node, pid=pid)]


class LocalExecutor(Executor):
    """A process pool of `workers` processes on this machine (`worker_pool`), each with
    `threads` torch threads (0: torch's default)."""

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.workers = workers
        self._pool = worker_pool(workers, threads)
        self._futures: dict[Any, int] = {}
        self._next = 0

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> int:
        self._next += 1
        self._futures[self._pool.submit(_call, fn, arg)] = self._next
        return self._next

    @property
    def pending(self) -> int:
        return len(self._futures)

    def wait(self) -> list[Done]:
        import concurrent.futures as cf

        ended, _ = cf.wait(list(self._futures), return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in ended:
            ticket = self._futures.pop(fut)
            exc = fut.exception()
            if isinstance(exc, cf.process.BrokenProcessPool):
                raise exc  # a worker died: the pool cannot go on
            if exc is not None:
                text = "".join(traceback.format_exception(exc))
                out.append(Done(ticket, error=exc, traceback_text=text))
            else:
                value, node, pid = fut.result()
                out.append(Done(ticket, value=value, node=node, pid=pid))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- Ray -------------------------------------------------------------------------------------

class RayWorker:
    """A Ray actor: one process with `threads` torch threads and its own OpenGL context (opened
    at start when `gl`), running calls one at a time; `worker_cache()` keeps what they load."""

    def __init__(self, threads: int, gl: bool) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        if gl:
            from regtool.render.context import get_context

            get_context()

    def ready(self) -> tuple[str, int]:
        """Return (Ray node id, process id) of this worker."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def run(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        return fn(arg)


def _lost_errors() -> tuple[type[BaseException], ...]:
    """Return Ray's exceptions meaning the worker (or its node) was lost, not that the call
    failed."""
    import ray.exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
             "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class RayExecutor(Executor):
    """`workers` Ray actors (`RayWorker`, `cpus` logical CPUs each, spread over the nodes).

    `address`: None starts a local Ray instance of `workers * cpus` CPUs for this process
    (ended in `close`); "auto" or "HOST:PORT" joins a running cluster (`ray start --head`).
    A call whose actor is lost (the node or the process died) runs again on another actor, up
    to `max_attempts` starts in all; a replacement actor joins the pool once it is up.
    ConfigError if Ray is not installed or the cluster cannot be reached.
    """

    def __init__(self, workers: int, address: str | None = None, threads: int = 1,
                 gl: bool = True, cpus: float = 1.0, max_attempts: int = 3) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--executor ray needs the ray package (pip install ray)") from exc
        self._ray = ray
        self.workers = workers
        self._options = {"num_cpus": cpus, "scheduling_strategy": "SPREAD"}
        self._args = (threads, gl)
        self.max_attempts = max_attempts
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            try:
                if address is None:
                    ray.init(address="local", num_cpus=max(1, int(round(workers * cpus))),
                             **kwargs)
                else:
                    ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise ConfigError(f"cannot start or reach Ray at {address or 'this machine'}: "
                                  f"{first}") from exc
            self._started = True
        self._actor_cls = ray.remote(RayWorker)
        self._lost = _lost_errors()
        self._start_errors: tuple[type[BaseException], ...] = (ray.exceptions.RayError,
                                                               *self._lost)
        self._queue: deque[tuple[int, Callable, Any, int]] = deque()
        self._idle: deque[Any] = deque()
        self._starting: dict[Any, Any] = {}  # ready() ref -> actor
        self._where: dict[Any, tuple[str, int]] = {}  # actor -> (node id, pid)
        self._running: dict[Any, tuple[int, Callable, Any, int, Any]] = {}
        self._next = 0
        for _ in range(workers):
            self._start_actor()

    def _start_actor(self) -> None:
        actor: Any = self._actor_cls.options(**self._options).remote(*self._args)
        self._starting[actor.ready.remote()] = actor

    def wait_ready(self, timeout: float | None = None) -> int:
        """Block until every actor being started is up (or `timeout` seconds passed); return
        the number of actors up."""
        refs = list(self._starting)
        if refs:
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for ref in ready:
                actor = self._starting.pop(ref)
                try:
                    self._where[actor] = tuple(self._ray.get(ref))
                except self._start_errors:
                    continue
                self._idle.append(actor)
            self._dispatch()
        return len(self._where)

    @property
    def nodes(self) -> dict[Any, tuple[str, int]]:
        """Return {actor: (node id, pid)} of the actors that are up."""
        return dict(self._where)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> int:
        self._next += 1
        self._queue.append((self._next, fn, arg, 0))
        self._dispatch()
        return self._next

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._running)

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            ticket, fn, arg, attempts = self._queue.popleft()
            actor = self._idle.popleft()
            self._running[actor.run.remote(fn, arg)] = (ticket, fn, arg, attempts + 1, actor)

    def _drop(self, actor: Any) -> None:
        self._where.pop(actor, None)
        with contextlib.suppress(ValueError):
            self._idle.remove(actor)
        with contextlib.suppress(Exception):
            self._ray.kill(actor, no_restart=True)

    def wait(self) -> list[Done]:
        ray = self._ray
        out: list[Done] = []
        while not out:
            refs = list(self._running) + list(self._starting)
            if not refs:
                raise RuntimeError("no Ray worker is running or starting")
            ready, _ = ray.wait(refs, num_returns=1)
            ref = ready[0]
            if ref in self._starting:
                actor = self._starting.pop(ref)
                try:
                    self._where[actor] = tuple(ray.get(ref))
                except self._start_errors as exc:
                    if not self._where and not self._starting:  # none came up: give up
                        raise ConfigError(f"no Ray worker could start: "
                                          f"{str(exc).strip().splitlines()[-1]}") from exc
                    continue
                self._idle.append(actor)
                self._dispatch()
                continue
            ticket, fn, arg, attempts, actor = self._running.pop(ref)
            node, pid = self._where.get(actor, ("", 0))
            try:
                value = ray.get(ref)
            except self._lost as exc:  # the worker or its node is gone: run the call elsewhere
                self._drop(actor)
                self._start_actor()
                if attempts >= self.max_attempts:
                    out.append(Done(ticket, error=exc, traceback_text=str(exc), node=node,
                                    pid=pid, attempts=attempts))
                else:
                    self._queue.appendleft((ticket, fn, arg, attempts))
                self._dispatch()
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                out.append(Done(ticket, error=cause, traceback_text=str(exc), node=node,
                                pid=pid, attempts=attempts))
            else:
                out.append(Done(ticket, value=value, node=node, pid=pid, attempts=attempts))
            self._idle.append(actor)
            self._dispatch()
        return out

    def close(self) -> None:
        for actor in list(self._where) + list(self._starting.values()):
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
        self._where.clear()
        self._starting.clear()
        if self._started:
            self._ray.shutdown()


def check_executor(kind: str, address: str | None = None) -> None:
    """ConfigError for an unknown executor kind or a Ray address without `--executor ray`."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor '{kind}' (use {' or '.join(EXECUTORS)})")
    if address is not None and kind != "ray":
        raise ConfigError("--ray-address needs --executor ray")


def make_executor(kind: str, workers: int, *, address: str | None = None, threads: int = 1,
                  gl: bool = True) -> Executor:
    """Return the executor for `--executor kind` with `workers` workers: "local" (in this
    process when `workers` is 1, else a process pool) or "ray" (`address`: None for a local
    Ray, "auto" or "HOST:PORT" for a cluster). ConfigError for an unknown kind, fewer than one
    worker, or an address without Ray."""
    check_executor(kind, address)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if kind == "ray":
        return RayExecutor(workers, address, threads=threads, gl=gl)
    if workers == 1:
        return InlineExecutor()
    return LocalExecutor(workers, threads)


def run_all(executor: Executor, fn: Callable[[Any], Any], args: Iterable[Any],
            progress: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Return [fn(arg) for arg in args] computed on `executor`, in the order of `args`;
    `progress(index, value)` is called as each call ends. The first exception of a call is
    raised (after the executor stops taking new calls)."""
    tickets = {executor.submit(fn, a): i for i, a in enumerate(args)}
    values: dict[int, Any] = {}
    while len(values) < len(tickets):
        for done in executor.wait():
            if done.error is not None:
                raise done.error
            i = tickets[done.ticket]
            values[i] = done.value
            if progress is not None:
                progress(i, done.value)
    return [values[i] for i in range(len(tickets))]


# --- local process pool ----------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_pool(workers: int, threads: int = 0):
    """Return a process pool (`concurrent.futures.ProcessPoolExecutor`, spawn start method) of
    `workers` processes with `threads` torch threads each (0: torch's default) that end when
    this process ends, also when it is killed with SIGKILL and cannot shut the pool down
    (`_die_with_parent`). Submit from the thread that keeps the pool: Linux signals a worker
    when the thread that started it ends."""
    import concurrent.futures as cf
    import multiprocessing as mp

    return cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                  initializer=_init_worker, initargs=(os.getpid(), threads))


def _init_worker(parent_pid: int, threads: int) -> None:
    _die_with_parent(parent_pid)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _die_with_parent(parent_pid: int) -> None:
    """Pool worker initializer: end this process (SIGKILL) when its parent `parent_pid` ends, by
    PR_SET_PDEATHSIG on Linux and, everywhere, a daemon thread that polls the parent id."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was set up
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="regtool-parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Return never: exit the process once its parent is no longer `parent_pid`."""
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)


@contextlib.contextmanager
def opened(kind: str, workers: int, **kwargs: Any) -> Iterator[Executor]:
    """Yield `make_executor(kind, workers, **kwargs)` and close it afterwards."""
    executor = make_executor(kind, workers, **kwargs)
    try:
        yield executor
    finally:
        executor.close()
