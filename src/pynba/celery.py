"""Celery: one Pinba packet per task execution, from one line of configuration.

::

    from celery import Celery
    from pynba.celery import monitor

    app = Celery("tasks", broker="redis://localhost:6379/0")
    monitor(app)  # the server from app.conf.pinba_server, or PINBA_SERVER

Each task a worker runs is reported as a ``ScriptMonitor`` job (see
``pynba.script``), from Celery's ``task_prerun`` to its ``task_postrun``
signal: the task body, and the storing of its result when the app has a
result backend. ``script_name`` is the task's name, ``status`` its outcome
(``STATUS_*`` below), and the request tags ``queue`` (the routing key it
came with) and ``worker`` (the worker's node name, ``celery@host``) tell
where it ran; never its arguments or its exception's message. The CPU is
the task's own under every pool: its process's under prefork, its thread's
under threads, its share of its thread under gevent (see ``pynba.rusage``).
``pynba.timer(...)`` and the rest of the ``pynba`` proxy act on the task
being run, in the code it calls; outside a task they do nothing.

A task killed in a prefork child (a hard time limit, ``revoke(...,
terminate=True)``, a child that died) is reported by the worker's main
process, with the time since the child took it and no CPU (the child's is
gone with it). A task revoked before it started ran nothing: it is not
reported.

Options left unset are read from the app's configuration, under the
environment variables' names in lower case (``pinba_server``,
``pinba_enabled``...) or upper case (``PINBA_SERVER``), then from the
environment (see ``pynba.config``), when the worker starts (or at the first
task of a process that runs no worker, as ``task.apply()`` does). Nothing
pynba does raises into a task or the worker: its errors go to the ``pynba``
logger.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from celery import signals, states  # type: ignore[import-untyped]
from celery.exceptions import (  # type: ignore[import-untyped]
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    WorkerLostError,
)

from .config import ENVIRONMENT, resolve
from .errors import internal_error
from .names import ClientNames
from .script import ScriptMonitor

__all__ = [
    "QUEUE_TAG",
    "STATUS_FAILURE",
    "STATUS_RETRY",
    "STATUS_REVOKED",
    "STATUS_SUCCESS",
    "STATUS_TIME_LIMIT",
    "STATUS_WORKER_LOST",
    "WORKER_TAG",
    "CeleryMonitor",
    "monitor",
]

logger = logging.getLogger("pynba")

#: The task returned (or raised ``Ignore``, as ``self.replace()`` does).
STATUS_SUCCESS = 200
#: The task raised, or it rejected its message for good.
STATUS_FAILURE = 500
#: The child process running the task died in it (``WorkerLostError``: a
#: signal, the OOM killer): as ``pynba.rq.STATUS_KILLED``.
STATUS_WORKER_LOST = 502
#: The task will run again: ``self.retry()``, ``autoretry_for``, ``Reject(requeue=True)``.
STATUS_RETRY = 503
#: The task was stopped while it ran: ``revoke(task_id, terminate=True)``
#: (nginx's "client closed request": someone gave up on it).
STATUS_REVOKED = 499
#: A time limit ended the task: the hard one killed it, or the soft one's
#: ``SoftTimeLimitExceeded`` went uncaught.
STATUS_TIME_LIMIT = 504

#: The request tag naming the queue (routing key) a task came from.
QUEUE_TAG = "queue"
#: The request tag naming the worker (its node name) that ran a task.
WORKER_TAG = "worker"

# Options of pynba.config that mean something here (the others are accepted
# as everywhere, and unused).
_OPTIONS = frozenset(ENVIRONMENT) - {"address"}

#: How many killed tasks the main process remembers, not to report one twice.
_KILLED_KEPT = 1000

_STATUS_OF_STATE = {
    states.SUCCESS: STATUS_SUCCESS,
    states.IGNORED: STATUS_SUCCESS,
    states.FAILURE: STATUS_FAILURE,
    states.RETRY: STATUS_RETRY,
}


@dataclass
class _Running:
    """A task running in this context: its job, and how to leave it."""

    task_id: str
    job: AbstractContextManager[Any]
    collector: Any
    token: Token[_Running | None] | None = None


# The task running in this thread, greenlet or context (eager tasks nest).
_running: ContextVar[_Running | None] = ContextVar("pynba_celery_task", default=None)


class _AppConfig:
    """An app's configuration looked up by environment variable name, in either case."""

    __slots__ = ("conf",)

    def __init__(self, conf: Any) -> None:
        self.conf = conf

    def get(self, key: str, default: Any = None, /) -> Any:
        value = self.conf.get(key.lower())
        if value is None:
            value = self.conf.get(key)
        return default if value is None else value


def _status(state: str | None, retval: Any) -> int:
    """The status of a task that ended in ``state`` with ``retval`` (its exception, if any)."""
    if isinstance(retval, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return STATUS_TIME_LIMIT
    if state == states.REJECTED:
        return STATUS_RETRY if getattr(retval, "requeue", False) else STATUS_FAILURE
    if state is None:
        # Something other than an Exception left the task body (no state
        # was set): the pool stopped it. It is being raised through here.
        return _interrupted_status(sys.exc_info()[1])
    return _STATUS_OF_STATE.get(state, STATUS_FAILURE)


def _interrupted_status(error: BaseException | None) -> int:
    """The status of a task that ``error`` (not an Exception) interrupted."""
    gevent = sys.modules.get("gevent")
    if gevent is not None and isinstance(error, gevent.Timeout):
        return STATUS_TIME_LIMIT  # the gevent pool's time limit
    greenlet = sys.modules.get("greenlet")
    if greenlet is not None and isinstance(error, greenlet.GreenletExit):
        return STATUS_REVOKED  # a green pool's terminate_job()
    return STATUS_FAILURE


class CeleryMonitor:
    """Reports the tasks run in this process; made and connected by ``monitor()``."""

    def __init__(
        self,
        app: Any,
        address: Any = None,
        tags: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(f"unknown option {sorted(unknown)[0]!r}")
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"tags must be a mapping, not {type(tags).__name__}")
        self.app = app
        self._address = address
        self._tags = tags
        self._options = options
        self._lock = threading.Lock()
        self._configured = False
        self._closed = False
        #: The ``ScriptMonitor`` the tasks are reported through (None until
        #: configured, or when the configuration failed).
        self.script_monitor: ScriptMonitor | None = None
        self._prefix = ""
        self._task_names: ClientNames | None = None
        self._queues: ClientNames | None = None
        self._workers: ClientNames | None = None
        # Set once a task has run in this process (threads, gevent, solo
        # pools): its own task_postrun reports it, however it ended.
        self._runs_tasks = False
        self._pool_child = False  # a prefork pool's child process (forked or spawned)
        # The requests this (main) process received, by task id: what a
        # report of a task killed in a child needs. Gone with the requests.
        self._requests: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        # The tasks killed in a child and reported, latest last: Celery may
        # tell of one kill twice (a hard time limit, a terminated child).
        self._killed: OrderedDict[Any, None] = OrderedDict()

    # -- connecting ----------------------------------------------------------

    def connect(self) -> None:
        """Connect to Celery's signals (in every process of the worker)."""
        signals.worker_init.connect(self._worker_init, weak=False)
        signals.worker_process_init.connect(self._worker_process_init, weak=False)
        signals.task_received.connect(self._task_received, weak=False)
        signals.task_prerun.connect(self._task_prerun, weak=False)
        signals.task_postrun.connect(self._task_postrun, weak=False)
        signals.task_failure.connect(self._task_failure, weak=False)
        signals.task_revoked.connect(self._task_revoked, weak=False)

    def close(self) -> None:
        """Disconnect from Celery's signals and close the monitor's reporter."""
        signals.worker_init.disconnect(self._worker_init)
        signals.worker_process_init.disconnect(self._worker_process_init)
        signals.task_received.disconnect(self._task_received)
        signals.task_prerun.disconnect(self._task_prerun)
        signals.task_postrun.disconnect(self._task_postrun)
        signals.task_failure.disconnect(self._task_failure)
        signals.task_revoked.disconnect(self._task_revoked)
        with self._lock:
            self._closed = True
            script_monitor, self.script_monitor = self.script_monitor, None
        if script_monitor is not None:
            script_monitor.close()

    def configure(self) -> ScriptMonitor | None:
        """Read the options (once): the monitor the tasks are reported through, or None."""
        if self._configured:
            return self.script_monitor
        with self._lock:
            if self._configured:
                return self.script_monitor
            self._configured = True
            if self._closed:
                return None
            try:
                self.script_monitor = self._script_monitor()
            except Exception:
                internal_error("cannot read the Celery app's Pinba options: monitoring off", False)
            return self.script_monitor

    def _script_monitor(self) -> ScriptMonitor:
        config = resolve(self._address, settings=_AppConfig(self.app.conf), **self._options)
        script_monitor = ScriptMonitor(
            config.address,
            hostname=config.hostname,
            server_name=config.server_name,
            tags=self._tags,
            autostart=False,
            enabled=config.enabled,
            raise_on_fail=config.raise_on_fail,
            timer_rusage=config.timer_rusage,
            memory_footprint=config.memory_footprint,
            pinboard=config.pinboard,
            instrument=config.instrument,
        )
        reporter = script_monitor.reporter
        self._prefix = config.prefix
        self._task_names = ClientNames(reporter, "script_name", config.name_limit)
        self._queues = ClientNames(reporter, QUEUE_TAG, config.name_limit)
        self._workers = ClientNames(reporter, WORKER_TAG, config.name_limit)
        return script_monitor

    def _raise_on_fail(self) -> bool:
        """Whether pynba's errors are raised (to Celery, which logs them), as configured."""
        script_monitor = self.script_monitor
        return script_monitor is not None and script_monitor.reporter.raise_on_fail

    def _job(
        self, task: Any, delivery_info: Any, hostname: Any
    ) -> AbstractContextManager[Any] | None:
        """A job for a run of ``task``, not entered; None when nothing is monitored."""
        script_monitor = self.configure()
        if script_monitor is None:
            return None
        assert self._task_names is not None and self._queues is not None
        assert self._workers is not None
        tags = {}
        queue = delivery_info.get("routing_key") if isinstance(delivery_info, Mapping) else None
        if isinstance(queue, str) and queue:
            tags[QUEUE_TAG] = self._queues.name(queue)
        if isinstance(hostname, str) and hostname:
            tags[WORKER_TAG] = self._workers.name(hostname)
        name = self._prefix + self._task_names.name(task.name)
        return script_monitor.job(name, tags)

    # -- a task run in this process ---------------------------------------

    def _task_prerun(self, sender: Any = None, task_id: Any = None, **extra: Any) -> None:
        self._runs_tasks = True
        try:
            request = sender.request
            job = self._job(sender, request.delivery_info, request.hostname)
            if job is None:
                return
            collector = job.__enter__()
        except Exception:
            internal_error("cannot monitor a Celery task", self._raise_on_fail())
            return
        running = _Running(task_id, job, collector)
        running.token = _running.set(running)

    def _task_postrun(
        self,
        sender: Any = None,
        task_id: Any = None,
        retval: Any = None,
        state: str | None = None,
        **extra: Any,
    ) -> None:
        running = _running.get()
        if running is None or running.task_id != task_id:
            return
        try:
            if running.token is not None:
                _running.reset(running.token)
            if state is None and self._killed_child():
                # Its worker's main process reports it, as when it is killed outright.
                running.collector.enabled = False
            elif running.collector.status is None:  # unless the task set its own
                running.collector.status = _status(state, retval)
        except Exception:
            internal_error("cannot set a Celery task's status", self._raise_on_fail())
        finally:
            try:
                running.job.__exit__(None, None, None)
            except Exception:
                internal_error("cannot report a Celery task", self._raise_on_fail())

    def _killed_child(self) -> bool:
        """Whether this is a pool child being terminated by a signal (raised through here).

        A prefork child unwinds on SIGTERM with ``SystemExit(-(256 - signum))``
        (billiard's handler, so that its ``finally`` blocks run).
        """
        error = sys.exc_info()[1]
        return (
            isinstance(error, SystemExit)
            and isinstance(error.code, int)
            and error.code < 0
            and self._pool_child
        )

    # -- the worker's main process ------------------------------------------

    def _worker_process_init(self, **extra: Any) -> None:
        self._pool_child = True

    def _worker_init(self, **extra: Any) -> None:
        # Configured before the pool starts: errors show once, at start, and
        # prefork children inherit the monitor.
        self.configure()

    def _task_received(self, sender: Any = None, request: Any = None, **extra: Any) -> None:
        try:
            self._requests[request.id] = request
        except Exception:
            internal_error("cannot note a received Celery task", False)

    def _task_failure(
        self, sender: Any = None, task_id: Any = None, exception: Any = None, **extra: Any
    ) -> None:
        # A failure in a task run here is reported by its task_postrun; the
        # main process reports only the tasks its children could not.
        if self._runs_tasks or not isinstance(exception, (TimeLimitExceeded, WorkerLostError)):
            return
        if isinstance(exception, TimeLimitExceeded):
            status, limit = STATUS_TIME_LIMIT, exception.args[0]
        else:
            status, limit = STATUS_WORKER_LOST, None
        self._report_killed(sender, task_id, status, limit)

    def _task_revoked(
        self,
        sender: Any = None,
        request: Any = None,
        terminated: bool = False,
        **extra: Any,
    ) -> None:
        if self._runs_tasks or not terminated:
            return  # run here (reported by its task_postrun), or never run
        self._report_killed(sender, getattr(request, "id", None), STATUS_REVOKED, None)

    def _report_killed(self, task: Any, task_id: Any, status: int, limit: Any) -> None:
        """Report a task that a child of this process ran and could not report (once)."""
        with self._lock:
            if task_id in self._killed:
                return
            self._killed[task_id] = None
            if len(self._killed) > _KILLED_KEPT:
                self._killed.popitem(last=False)
        try:
            request = self._requests.get(task_id) if isinstance(task_id, str) else None
            if request is not None:
                job = self._job(task, request.delivery_info, request.hostname)
                started = request.time_start  # wall-clock time the child took it
                elapsed = time.time() - started if started else None
            else:
                job = self._job(task, None, None)
                elapsed = None
            if job is None:
                return
            if elapsed is None and isinstance(limit, (int, float)):
                elapsed = float(limit)
            with job as collector:
                collector.status = status
                collector.request_time = max(elapsed or 0.0, 0.0)
                # The child's CPU and memory went with it: not this process's.
                collector.ru_utime = collector.ru_stime = 0.0
                collector.memory_peak = 0
        except Exception:
            internal_error("cannot report a killed Celery task", self._raise_on_fail())

    def __repr__(self) -> str:
        return f"<CeleryMonitor of {self.app!r} -> {self.script_monitor!r}>"


_monitor: CeleryMonitor | None = None
_monitor_lock = threading.Lock()


def monitor(
    app: Any, address: Any = None, *, tags: Mapping[str, Any] | None = None, **options: Any
) -> CeleryMonitor:
    """Report every task this process runs: ``pynba.celery.monitor(app)``.

    ``address`` and the options (``enabled``, ``prefix``, ``hostname``,
    ``server_name``, ``raise_on_fail``, ``timer_rusage``,
    ``memory_footprint``, ``pinboard``, ``name_limit``, ``instrument``)
    default to the app's configuration (``pinba_server``...), then to the
    environment (``PINBA_SERVER``...); ``tags`` are sent with every task.
    Called again, it returns the monitor already made: a worker runs one app.
    """
    global _monitor
    with _monitor_lock:
        if _monitor is not None:
            if _monitor.app is not app:
                logger.warning("pynba: Celery tasks are already monitored (for %r)", _monitor.app)
            return _monitor
        made = CeleryMonitor(app, address, tags, **options)
        made.connect()
        _monitor = made
        return made


def stop() -> None:
    """Stop monitoring Celery tasks (``monitor()`` may start again)."""
    global _monitor
    with _monitor_lock:
        made, _monitor = _monitor, None
    if made is not None:
        made.close()
