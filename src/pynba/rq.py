"""RQ: one Pinba packet per job a worker runs.

Start the worker with pynba's worker class, configured from the environment::

    PINBA_SERVER=pinba:30002 rq worker -w pynba.rq.PinbaWorker high default

``PinbaWorker`` forks a work horse per job, as ``rq.Worker`` does;
``PinbaSimpleWorker`` runs jobs in the worker's own process, as
``rq.SimpleWorker`` does. ``PinbaWorkerMixin`` adds the reporting to any
other worker class (``class MyWorker(PinbaWorkerMixin, HerokuWorker)``).

Each job's packet: ``script_name`` the job's function name (``job.func_name``,
at most ``PINBA_NAME_LIMIT`` distinct ones, then ``"<other>"``), request tags
``queue`` and ``worker`` (the worker's name), the time and CPU of the job's
body (the work horse's own), and its outcome as ``status``: see ``STATUS_*``.
``pynba.timer(...)`` in the job's code, and in its success and failure
callbacks, reports into the job.

Nothing here raises into the job or the worker: a failure inside pynba is
logged to the ``pynba`` logger (raised only in strict mode, see ``pynba.strict``)
and the job runs on unreported.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from rq.job import JobStatus, Retry
from rq.timeouts import JobTimeoutException
from rq.worker import SimpleWorker, Worker

from .config import resolve
from .context import DisabledCollector
from .errors import internal_error
from .names import ClientNames
from .script import ScriptMonitor

__all__ = [
    "STATUS_FAILED",
    "STATUS_KILLED",
    "STATUS_RETRY",
    "STATUS_STOPPED",
    "STATUS_SUCCESS",
    "STATUS_TIMEOUT",
    "PinbaSimpleWorker",
    "PinbaWorker",
    "PinbaWorkerMixin",
    "UNKNOWN_NAME",
]

#: The job returned.
STATUS_SUCCESS = 200
#: The job raised, and will not be tried again (or it returned, and RQ failed it).
STATUS_FAILED = 500
#: The job's time ran out (``job_timeout``): RQ's ``JobTimeoutException``, or
#: a work horse killed by its worker past the timeout.
STATUS_TIMEOUT = 504
#: The job raised or returned ``Retry``, and RQ will run it again (``retry=Retry(...)``).
STATUS_RETRY = 503
#: The job was stopped (``rq.command.send_stop_job_command``) or its work horse
#: killed by the worker's cold shutdown.
STATUS_STOPPED = 499
#: The work horse died in the job (a signal, the OOM killer, ``os._exit()``):
#: reported by the worker, with the ``signal`` or ``exit_code`` as a tag.
STATUS_KILLED = 502

#: The script name of a job whose function cannot be read (its data does not deserialize).
UNKNOWN_NAME = "<unknown>"

#: The environment variables that hand the job's names to a spawned work horse
#: (a ``SpawnWorker``'s: it inherits the environment, not the worker's memory).
_JOB_ID_VARIABLE = "PYNBA_RQ_JOB_ID"
_SCRIPT_NAME_VARIABLE = "PYNBA_RQ_SCRIPT_NAME"

#: ``ru_maxrss`` is in KiB, but in bytes on macOS (as the collector reads it).
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024

#: How long a worker waits, when it starts, for its Pinba servers' addresses (seconds).
_LOOKUP_WAIT = 2.0

_RETRYING = frozenset((JobStatus.QUEUED, JobStatus.SCHEDULED))

if TYPE_CHECKING:
    from rq.worker import BaseWorker as _WorkerBase
else:
    _WorkerBase = object


class _JobRun:
    """One job's report, made where the job runs (the work horse, or the worker itself).

    The packet is sent after RQ's own handling of the outcome (so that a
    retry is known, and a timeout alarm cannot cut the send short), and
    measures the job's body: ``attach()`` wraps ``job.perform``.
    """

    __slots__ = (
        "_monitor",
        "_name",
        "_tags",
        "_done",
        "_blocks",
        "_collector",
        "_error",
        "_returned_retry",
    )

    def __init__(
        self, monitor: ScriptMonitor, name: str, tags: dict[str, str], done: mmap.mmap | None
    ) -> None:
        self._monitor = monitor
        self._name = name
        self._tags = tags
        self._done = done
        self._blocks = ExitStack()
        self._collector: Any = None  # set when the body begins
        self._error: BaseException | None = None  # what the body raised
        self._returned_retry = False

    def attach(self, job: Any) -> None:
        """Measure ``job``'s next ``perform()`` (its body) as the job, until ``end()``."""
        # RQ has no hook around the job's body alone: this job's perform is
        # measured for this one call, then the class's is back.
        job.perform = self._measure(job.perform)

    def _measure(self, perform: Callable[[], Any]) -> Callable[[], Any]:
        def measured() -> Any:
            self._begin()
            try:
                result = perform()
            except BaseException as error:
                self._error = error
                raise
            else:
                self._returned_retry = isinstance(result, Retry)
                return result
            finally:
                self._body_ended()

        return measured

    def _begin(self) -> None:
        try:
            self._collector = self._blocks.enter_context(self._monitor.job(self._name, self._tags))
        except Exception:
            internal_error("cannot begin an RQ job's report", False)

    def _body_ended(self) -> None:
        collector = self._collector
        if collector is None:
            return
        try:
            collector.end_response()  # the body's time and CPU; callbacks' timers still count
        except Exception:
            internal_error("cannot measure an RQ job", False)

    def end(self, job: Any, performed: bool) -> None:
        """RQ has handled the job (``perform_job`` returned ``performed``): send its packet."""
        try:
            del job.perform
        except AttributeError:
            internal_error("cannot restore an RQ job's perform()", False)
        collector = self._collector
        if collector is None:
            return  # the body never ran: no job to report
        try:
            collector.status = self._status(job, performed)
        except Exception:
            internal_error("cannot tell an RQ job's outcome", False)
        try:
            self._blocks.close()  # the job() block ends: its packet goes
        except Exception:
            internal_error("cannot report an RQ job", False)
        if self._done is not None:
            self._done[0] = 1  # for the worker: no report of its own for this job

    def _status(self, job: Any, performed: bool) -> int:
        if isinstance(self._error, JobTimeoutException):
            return STATUS_TIMEOUT
        if self._error is not None or self._returned_retry:
            # RQ has requeued or scheduled the job already if it runs it again.
            # (RQ 2.0 took a returned Retry for any other value: a success.)
            status = job.get_status(refresh=False)
            if status in _RETRYING:
                return STATUS_RETRY
            if self._error is not None or status == JobStatus.FAILED:
                return STATUS_FAILED
        return STATUS_SUCCESS if performed else STATUS_FAILED


class _JobReports:
    """A worker's Pinba reporting: its monitor, the names of its jobs, its work horses' fate."""

    __slots__ = (
        "_monitor",
        "_own_monitor",
        "_unavailable",
        "_names",
        "_done",
        "_job",
        "_started",
        "_horse_exit",
    )

    def __init__(self, monitor: ScriptMonitor | None) -> None:
        if monitor is not None and not isinstance(monitor, ScriptMonitor):
            raise TypeError(
                f"pinba_monitor must be a pynba.ScriptMonitor, not {type(monitor).__name__}"
            )
        self._monitor = monitor
        self._own_monitor = monitor is None
        self._unavailable = False
        self._names: ClientNames | None = None
        #: Set by a work horse that reported its job (shared: a page mapped before the fork).
        self._done: mmap.mmap | None = None
        self._job: tuple[str, str, dict[str, str]] | None = None  # (id, name, tags)
        self._started = 0.0
        self._horse_exit: tuple[int, Any] | None = None  # (wait status, rusage)

    def monitor(self) -> ScriptMonitor | None:
        """The worker's monitor (made from the environment on first use); None if it cannot be."""
        if self._names is None and not self._unavailable:
            try:
                monitor = self._monitor or ScriptMonitor(autostart=False)
                limit = resolve(monitor.reporter).name_limit
                self._names = ClientNames(monitor.reporter, "script_name", limit)
                self._monitor = monitor
            except Exception:
                self._unavailable = True
                internal_error("cannot set up Pinba monitoring of RQ jobs", False)
        return None if self._unavailable else self._monitor

    def start(self) -> None:
        """The worker starts: set up, so that work horses inherit the servers' addresses."""
        monitor = self.monitor()
        if monitor is None or not monitor.enabled:
            return
        monitor.reporter.wait_for_addresses(_LOOKUP_WAIT)

    def close(self) -> None:
        """The worker stops: close the monitor it made."""
        if self._own_monitor and self._monitor is not None:
            self._monitor.close()

    def begin(self, job: Any, queue: Any, worker_name: str) -> None:
        """The worker takes a job: name it here, where the names admitted are kept."""
        self._horse_exit = None
        self._started = time.perf_counter()
        try:
            self.monitor()
            if self._done is None:
                self._done = mmap.mmap(-1, 1)
            self._done[0] = 0
            self._job = self._job_names(job, queue, worker_name)
            os.environ[_JOB_ID_VARIABLE] = self._job[0]
            os.environ[_SCRIPT_NAME_VARIABLE] = self._job[1]
        except Exception:
            self._job = None
            internal_error("cannot name an RQ job", False)

    def run(self, job: Any, queue: Any, worker_name: str) -> _JobRun | None:
        """The report of the job about to be performed here; None when it is not reported."""
        try:
            monitor = self.monitor()
            if monitor is None:
                return None
            names = self._job
            if names is None or names[0] != job.id:
                names = self._job_names(job, queue, worker_name)
                if os.environ.get(_JOB_ID_VARIABLE) == job.id:
                    # A SpawnWorker's work horse: the name its worker admitted.
                    names = (job.id, os.environ.get(_SCRIPT_NAME_VARIABLE, names[1]), names[2])
            run = _JobRun(monitor, names[1], names[2], self._done)
            run.attach(job)
            return run
        except Exception:
            internal_error("cannot begin an RQ job's report", False)
            return None

    def horse_exited(self, waited: tuple[Any, Any, Any]) -> None:
        """The worker waited for its work horse: ``os.wait4``'s (pid, status, rusage)."""
        try:
            pid, status, usage = waited
            if pid:
                self._horse_exit = (status, usage)
        except Exception:
            internal_error("cannot read how an RQ work horse ended", False)

    def after_horse(self, job: Any, interrupted: bool) -> None:
        """The work horse is gone: report the job it could not (killed, stopped)."""
        horse_exit, self._horse_exit = self._horse_exit, None
        if horse_exit is None or self._job is None or self._done is None or self._done[0]:
            return
        status, usage = horse_exit
        if status == 0 and not interrupted:
            return  # ended cleanly without running the body: nothing to report
        try:
            self._report_lost_job(job, status, usage, interrupted)
        except Exception:
            internal_error("cannot report an RQ job whose work horse died", False)

    def _report_lost_job(self, job: Any, status: int, usage: Any, interrupted: bool) -> None:
        monitor = self.monitor()
        if monitor is None or self._job is None:
            return
        elapsed = time.perf_counter() - self._started
        _, name, tags = self._job
        tags = dict(tags)
        if os.WIFSIGNALED(status):
            tags["signal"] = _signal_name(os.WTERMSIG(status))
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status):
            tags["exit_code"] = str(os.WEXITSTATUS(status))
        with monitor.job(name, tags) as collector:
            if isinstance(collector, DisabledCollector):
                return
            collector.status = _lost_job_status(job, elapsed, interrupted)
            collector.request_time = elapsed
            if usage is not None:
                collector.ru_utime = usage.ru_utime
                collector.ru_stime = usage.ru_stime
                collector.memory_peak = usage.ru_maxrss * _MAXRSS_UNIT

    def _job_names(self, job: Any, queue: Any, worker_name: str) -> tuple[str, str, dict[str, str]]:
        """(job id, script name, request tags) of ``job``."""
        try:
            function = job.func_name
        except Exception:  # its data cannot be deserialized: RQ fails it
            function = None
        names = self._names
        if not function:
            name = UNKNOWN_NAME
        elif names is None:  # not set up (see monitor()): no report will use it
            name = function
        else:
            name = names.name(function)
        return job.id, name, {"queue": str(queue.name), "worker": str(worker_name)}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _lost_job_status(job: Any, elapsed: float, interrupted: bool) -> int:
    if interrupted or job.get_status(refresh=False) == JobStatus.STOPPED:
        return STATUS_STOPPED
    timeout = job.timeout
    if timeout is not None and timeout >= 0 and elapsed >= timeout:
        return STATUS_TIMEOUT
    return STATUS_KILLED


class PinbaWorkerMixin(_WorkerBase):
    """Reports each job an RQ worker runs: put it first in a worker class's bases.

    ``pinba_monitor``, a ``pynba.ScriptMonitor`` made with ``autostart=False``,
    says where and how to report (its address, ``tags`` for every job, the
    options); without it (as under ``rq worker -w``) the worker makes one
    from the ``PINBA_*`` environment variables when it starts.
    """

    def __init__(
        self, *args: Any, pinba_monitor: ScriptMonitor | None = None, **kwargs: Any
    ) -> None:
        self._pinba = _JobReports(pinba_monitor)
        super().__init__(*args, **kwargs)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        self._pinba.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._pinba.close()

    def execute_job(self, job: Any, queue: Any) -> None:
        self._pinba.begin(job, queue, self.name)
        try:
            super().execute_job(job, queue)
        except BaseException:
            self._pinba.after_horse(job, interrupted=True)
            raise
        self._pinba.after_horse(job, interrupted=False)

    def wait_for_horse(self) -> Any:
        waited = super().wait_for_horse()
        self._pinba.horse_exited(waited)
        return waited

    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> bool:
        run = self._pinba.run(job, queue, self.name)  # measures the job's body from now
        if run is None:
            return super().perform_job(job, queue, *args, **kwargs)
        performed = False
        try:
            performed = super().perform_job(job, queue, *args, **kwargs)
        finally:
            run.end(job, performed)
        return performed


class PinbaWorker(PinbaWorkerMixin, Worker):
    """``rq.Worker`` (a work horse forked per job) reporting each job to Pinba."""


class PinbaSimpleWorker(PinbaWorkerMixin, SimpleWorker):
    """``rq.SimpleWorker`` (jobs run in the worker's process) reporting each job to Pinba."""
