"""The probe scheduler: every path once per interval, spread evenly, bounded concurrency, no bursts.

Design, for throughput in Python:
- One coalesced tick (default 50 ms) launches every probe that has come due, instead of a timer per
  probe; each path has a fixed phase in the interval (an even spread plus jitter).
- TCP connects run as a callback state machine on non-blocking sockets (no coroutine per probe); all
  attempts share one timeout, so in-flight attempts sit in a deque in deadline order and the tick
  expires them from the front.
- Other checks (protocol probes) are coroutines from `checks`, each with its own deadline.
- Concurrency is capped below the fd limit; when the cap is reached, probes wait and the lag shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import random
import socket
import sys
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.engine.host import default_concurrency, has_fd_callbacks
from exporter.engine.resolver import Resolver
from exporter.probes import bind, tcp
from exporter.probes.contract import Check, Resolved, ResolveFailure, Target
from exporter.probes.outcome import IN_PROGRESS, Outcome, State, os_error_code

log = logging.getLogger(__name__)


class Sink(Protocol):
    def record(self, index: int, outcome: Outcome, wall: float) -> bool | None:
        """Take path `index`'s outcome; True asks for a confirmation probe soon (see `confirm_delay`)."""


@dataclass(slots=True)
class _Attempt:
    index: int
    attempt: int
    due: float
    sock: socket.socket | None = None
    started: float = 0.0
    deadline: float = 0.0
    done: bool = False
    resolved: Resolved | None = None
    extra: bool = False  # an out-of-schedule confirmation probe: not counted in the lag
    task: asyncio.Future[None] | None = None  # the connect, on a loop without fd callbacks


@dataclass
class EngineStats:
    """Counters the outputs read; written only by the engine's thread."""

    probes: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in State})
    in_flight: int = 0
    cycles: int = 0
    lag_max_recent: float = 0.0  # max launch lag over the last lag window
    lag_last: float = 0.0
    completed_paths: int = 0  # paths of the current plans given a first outcome, over all plans
    started_at: float = 0.0


class Engine:
    """Runs on one asyncio loop. `run()` probes forever (or one pass with `once=True`)."""

    def __init__(
        self,
        targets: Sequence[Target],
        sink: Sink,
        *,
        interval: float = 30.0,
        timeout: float = 2.0,
        attempts: int = 3,
        max_concurrency: int | None = None,
        checks: dict[str, Check] | None = None,
        tick: float = 0.05,
        once: bool = False,
        jitter: float = 0.5,
        seed: str = "",
        resolver: Resolver | None = None,
        stats: EngineStats | None = None,
        confirm_delay: float = 0.0,
    ) -> None:
        self.targets = list(targets)
        self.sink = sink
        self.interval = interval
        self.timeout = timeout
        self.attempts = attempts
        self.limit = max_concurrency or default_concurrency()
        self.checks = checks or {}
        self.tick = tick
        self.once = once
        self.confirm_delay = confirm_delay
        self.resolver = resolver or Resolver()
        # shared across plan changes, so counters never go backwards
        self.stats = stats or EngineStats()
        self._phase, self._order = self._spread(len(self.targets), jitter, seed)
        self._cursor = 0
        self._cycle_start = 0.0
        self._inflight: deque[_Attempt] = deque()
        self._waiting: deque[_Attempt] = deque()  # due, but held back by the cap or a DNS lookup
        self._tasks: set[asyncio.Future[None]] = set()
        self._seen = bytearray(len(self.targets))
        self._lag_window: deque[tuple[float, float]] = deque()
        # extra probes asked for out of schedule (confirming a change), at most one per path
        self._extra: list[tuple[float, int]] = []
        self._extra_pending: set[int] = set()
        # the paths of each target host (by name, else address), for the burst that follows a failure
        # (one host string and one array of indexes per host, not a string and an int object per path)
        by_host: dict[str, array[int]] = {}
        self._host_of: list[str] = []
        for index, target in enumerate(self.targets):
            name = sys.intern((target.name or target.host).lower())
            paths = by_host.get(name)
            if paths is None:
                paths = by_host[name] = array("q")
            paths.append(index)
            self._host_of.append(name)
        self._paths_of_host = by_host
        self._host_burst: dict[str, float] = {}  # host -> when its paths were last probed out of schedule
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd_callbacks = True  # decided per loop in run()
        self._handle: asyncio.TimerHandle | None = None
        self._finished: asyncio.Future[None] | None = None
        self._stopping = False
        self._launched_once = 0
        self._completed = 0

    # ---- schedule -------------------------------------------------------------------------------
    def _spread(self, n: int, jitter: float, seed: str) -> tuple[array[float], array[int]]:
        """(phases, indexes), in the order they fire: slot i of n, shifted by up to `jitter` of a slot,
        is path indexes[i]'s phase. Two arrays: 16 bytes a path, not a tuple and two number objects."""
        rng = random.Random(seed or "exchange-firewall-exporter")
        indexes = array("q", range(n))
        rng.shuffle(indexes)  # neighbours in the plan (one target's ports) should not fire together
        slot = self.interval / n if n else self.interval
        return array("d", [(i + rng.random() * jitter) * slot for i in range(n)]), indexes

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._fd_callbacks = has_fd_callbacks(loop)
        self._finished = loop.create_future()
        self.stats.started_at = self.stats.started_at or time.time()
        self._cycle_start = time.monotonic()
        if not self.targets and self.once:
            return
        self._tick()
        try:
            await self._finished
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop launching; in-flight probes are abandoned (their sockets closed), not reported."""
        self._stopping = True
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)

    def _shutdown(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        for attempt in self._inflight:
            if not attempt.done and attempt.sock is not None:
                self._release(attempt)
        self._inflight.clear()
        for task in list(self._tasks):
            task.cancel()

    def _tick(self) -> None:
        assert self._loop is not None
        if self._stopping:
            return
        now = time.monotonic()
        self._expire(now)
        self._launch_extra(now)
        self._launch_due(now)
        if self.once and self._completed >= len(self.targets) and self.stats.in_flight == 0:
            self.stop()
            return
        # update the recent-lag window
        while self._lag_window and self._lag_window[0][0] < now - 10.0:
            self._lag_window.popleft()
        # the window is kept decreasing in lag (see _start), so its head is the maximum: O(1) per tick
        self.stats.lag_max_recent = self._lag_window[0][1] if self._lag_window else 0.0
        self._handle = self._loop.call_at(now + self.tick, self._tick)

    def expedite(self, index: int, delay: float) -> None:
        """Probe path `index` again after `delay` seconds, outside its schedule: a path that just stopped
        answering is confirmed (or cleared) in seconds instead of intervals. Call on the engine's loop."""
        if index in self._extra_pending or self._stopping or self.once:
            return
        self._extra_pending.add(index)
        heapq.heappush(self._extra, (time.monotonic() + delay, index))

    def _launch_extra(self, now: float) -> None:
        while self._extra and self._extra[0][0] <= now and self.stats.in_flight < self.limit:
            due, index = heapq.heappop(self._extra)
            self._extra_pending.discard(index)
            self._start(_Attempt(index, 1, due, extra=True), now)

    def _launch_due(self, now: float) -> None:
        # first what was held back, then what came due since the last tick
        while self._waiting and self.stats.in_flight < self.limit:
            self._start(self._waiting.popleft(), now)
        n = len(self._order)
        if n == 0:
            return
        while self.stats.in_flight < self.limit and not self._waiting:
            if self.once:
                if self._launched_once >= n:
                    return
                index = self._order[self._launched_once]
                self._launched_once += 1
                due = self._cycle_start
            else:
                index = self._order[self._cursor]
                due = self._cycle_start + self._phase[self._cursor]
                if due > now:
                    return
                self._cursor += 1
                if self._cursor == n:
                    self._cursor = 0
                    self._cycle_start += self.interval
                    self.stats.cycles += 1
            self._start(_Attempt(index, 1, due), now)

    # ---- one attempt ----------------------------------------------------------------------------
    def _start(self, attempt: _Attempt, now: float) -> None:
        target = self.targets[attempt.index]
        if attempt.attempt == 1 and not attempt.extra:
            lag = max(0.0, now - attempt.due)
            self.stats.lag_last = lag
            window = self._lag_window
            while window and window[-1][1] <= lag:  # a later, larger lag supersedes smaller ones
                window.pop()
            window.append((now, lag))
        resolved = attempt.resolved or self.resolver.cached(target.host, now, target.family)
        if resolved is None:
            self._begin_async(attempt, self._resolve_then_start(attempt))
            return
        if isinstance(resolved, ResolveFailure):
            self._finish(attempt, Outcome(resolved.state, None, resolved.evidence, attempt.attempt))
            return
        attempt.resolved = resolved
        check = target.check
        if check == "tcp":
            self._start_tcp(attempt, resolved, target)
        elif check in self.checks:
            self._begin_async(attempt, self._run_check(attempt, resolved, target))
        else:
            self._finish(attempt, Outcome(State.LOCAL_ERROR, None, f"no probe for check {check!r}"))

    def _start_tcp(self, attempt: _Attempt, resolved: Resolved, target: Target) -> None:
        assert self._loop is not None
        try:
            sock = tcp.open_socket(resolved.family, target.local)
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, a source address we lack: ours, not the network's
            self._finish(attempt, Outcome(State.LOCAL_ERROR, None, bind.evidence(exc), attempt.attempt))
            return
        started = time.monotonic()
        sockaddr: tcp.SockAddr
        if resolved.family == socket.AF_INET6:
            sockaddr = (resolved.host, target.port, 0, 0)
        else:
            sockaddr = (resolved.host, target.port)
        if not self._fd_callbacks:
            self._start_connect_task(attempt, sock, sockaddr, started)
            return
        code = tcp.start_connect(sock, sockaddr)
        if code in IN_PROGRESS:
            attempt.sock = sock
            attempt.started = started
            attempt.deadline = started + self.timeout
            try:
                self._loop.add_writer(sock.fileno(), self._on_writable, attempt)
            except (OSError, ValueError) as exc:
                sock.close()
                attempt.sock = None
                self._finish(attempt, Outcome(State.LOCAL_ERROR, None, f"poller: {exc}", attempt.attempt))
                return
            self.stats.in_flight += 1
            self._inflight.append(attempt)
            return
        sock.close()
        self._finish(attempt, tcp.outcome_of(code, time.monotonic() - started, attempt.attempt))

    def _start_connect_task(
        self, attempt: _Attempt, sock: socket.socket, sockaddr: tcp.SockAddr, started: float
    ) -> None:
        """The connect as a task of `loop.sock_connect` (ConnectEx on Windows' Proactor), for loops that
        offer no fd callbacks. Deadlines, retries and classification stay the callback path's: the attempt
        sits in the same deadline queue, and expiry cancels the task. The socket is closed only once the
        task has finished, after the loop let go of it (its fd number cannot be reused under a live
        registration)."""
        assert self._loop is not None
        attempt.sock = sock
        attempt.started = started
        attempt.deadline = started + self.timeout
        task = asyncio.ensure_future(self._loop.sock_connect(sock, sockaddr))
        attempt.task = task
        task.add_done_callback(functools.partial(self._on_connected, attempt, sock))
        self.stats.in_flight += 1
        self._inflight.append(attempt)

    def _on_connected(self, attempt: _Attempt, sock: socket.socket, task: asyncio.Future[None]) -> None:
        sock.close()
        if attempt.done or task.cancelled():
            return  # expired (or the engine stopped): already accounted for
        rtt = time.monotonic() - attempt.started
        exc = task.exception()
        self._release(attempt)
        if exc is None:
            outcome = tcp.outcome_of(0, rtt, attempt.attempt)
        elif isinstance(exc, OSError):
            outcome = tcp.outcome_of(os_error_code(exc) or -1, rtt, attempt.attempt)
        else:
            outcome = Outcome(State.LOCAL_ERROR, rtt, f"connect: {type(exc).__name__}", attempt.attempt)
        self._finish(attempt, outcome)
        if self.once:
            self._launch_due(time.monotonic())

    def _on_writable(self, attempt: _Attempt) -> None:
        if attempt.done or attempt.sock is None:
            return
        code = tcp.connect_result(attempt.sock)
        rtt = time.monotonic() - attempt.started
        self._release(attempt)
        self._finish(attempt, tcp.outcome_of(code, rtt, attempt.attempt))
        if self.once:
            self._launch_due(time.monotonic())

    def _release(self, attempt: _Attempt) -> None:
        assert self._loop is not None and attempt.sock is not None
        attempt.done = True
        if attempt.task is not None:
            attempt.task.cancel()  # its done callback closes the socket
            attempt.task = None
        else:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(attempt.sock.fileno())
            attempt.sock.close()
        attempt.sock = None
        self.stats.in_flight -= 1

    def _expire(self, now: float) -> None:
        while self._inflight:
            head = self._inflight[0]
            if head.done:
                self._inflight.popleft()
                continue
            if head.deadline > now:
                break
            self._inflight.popleft()
            self._release(head)
            if head.attempt < self.attempts:
                retry = _Attempt(
                    head.index, head.attempt + 1, head.due, resolved=head.resolved, extra=head.extra
                )
                self._start(retry, now)
            else:
                self._finish(head, tcp.filtered(self.timeout, self.attempts))

    # ---- coroutine checks -----------------------------------------------------------------------
    def _begin_async(self, attempt: _Attempt, work: Awaitable[None]) -> None:
        self.stats.in_flight += 1
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(fut: asyncio.Future[None]) -> None:
            self._tasks.discard(fut)
            self.stats.in_flight -= 1
            if fut.cancelled():
                if not self._stopping:
                    self._finish(attempt, Outcome(State.LOCAL_ERROR, None, "cancelled", attempt.attempt))
            elif fut.exception() is not None:
                exc = fut.exception()
                log.error("probe of %s crashed: %r", self.targets[attempt.index], exc)
                self._finish(attempt, Outcome(State.LOCAL_ERROR, None, f"probe bug: {type(exc).__name__}"))
            if self.once and not self._stopping:
                self._launch_due(time.monotonic())

        task.add_done_callback(done)

    async def _resolve_then_start(self, attempt: _Attempt) -> None:
        target = self.targets[attempt.index]
        resolved = await self.resolver.resolve(target.host, target.family)
        if isinstance(resolved, ResolveFailure):
            self._finish(attempt, Outcome(resolved.state, None, resolved.evidence, attempt.attempt))
            return
        attempt.resolved = resolved
        # hand back to the scheduler (after this task's slot is released)
        assert self._loop is not None
        self._loop.call_soon(self._requeue, attempt)

    def _requeue(self, attempt: _Attempt) -> None:
        if self._stopping:
            return
        if self.stats.in_flight < self.limit:
            self._start(attempt, time.monotonic())
        else:
            self._waiting.append(attempt)

    async def _run_check(self, attempt: _Attempt, resolved: Resolved, target: Target) -> None:
        check = self.checks[target.check]
        # the check owns its attempts; this outer deadline only guards against a check that hangs
        budget = self.timeout * self.attempts + 1.0
        try:
            outcome = await asyncio.wait_for(check(resolved, target, self.timeout, self.attempts), budget)
        except TimeoutError:
            outcome = Outcome(State.LOCAL_ERROR, budget, "check overran its deadline", self.attempts)
        self._finish(attempt, outcome)

    # ---- results --------------------------------------------------------------------------------
    def _finish(self, attempt: _Attempt, outcome: Outcome) -> None:
        attempt.done = True
        self.stats.probes[outcome.state.value] += 1
        if not self._seen[attempt.index]:
            self._seen[attempt.index] = 1
            self._completed += 1
            self.stats.completed_paths += 1
        if self.sink.record(attempt.index, outcome, time.time()) and self.confirm_delay > 0:
            self.expedite(attempt.index, self.confirm_delay)
            if outcome.state.is_block:
                self._burst(attempt.index)

    def _burst(self, index: int) -> None:
        """A path of a host just stopped answering: probe the host's other paths now too (at most once an
        interval per host). A host that is cut off then has all its paths blocked within seconds of each
        other, instead of port by port over a whole interval, so the one host alert (which inhibits the
        per-port pages) fires with the first of them, not an interval after them."""
        host = self._host_of[index]
        now = time.monotonic()
        if now - self._host_burst.get(host, -math.inf) < self.interval:
            return
        self._host_burst[host] = now
        for sibling in self._paths_of_host.get(host, ()):
            if sibling != index:
                self.expedite(sibling, self.confirm_delay)
