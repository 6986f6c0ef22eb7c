"""Monitoring scripts and workers: one Pinba packet per job.

Two ways to cut the work into jobs:

- ``send()``: the monitor is a running job from the moment it is created
  (``autostart=True``); ``send()`` stops its timers, sends the packet and
  starts the next job. With ``autostart=False`` each job begins with
  ``start()``;
- ``with monitor.job("resize"):``: a job of its own per block, sent when the
  block ends. Jobs in different threads or asyncio tasks do not mix.

While a job runs, ``pynba.timer(...)`` in the code it calls (in the same
thread or task) reports into it.

No job is lost when the monitor ends: ``close()``, the end of a ``with
ScriptMonitor(...) as monitor:`` block, the interpreter's exit or the
collection of a monitor never closed reports the running job, then closes the
monitor. A block (``with`` the monitor, or ``job()``) that raises reports its
job with status 500, as the WSGI middleware does a failed request; a clean
``sys.exit()`` (code 0 or None) does not count as a failure. At exit or
collection there is no exception to see: the job goes with the status it has.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from typing import Any

from .collector import CollectorSettings, RequestCollector
from .config import resolve
from .context import DISABLED, DisabledCollector, activate, current_collector, deactivate
from .reporter import Reporter
from .timer import NOOP_TIMER, NoopTimer, Timer

__all__ = ["ScriptMonitor", "program_name"]

logger = logging.getLogger("pynba")

#: The status of a job whose block raised (as the WSGI middleware reports a failed request).
_FAILED_STATUS = 500

# The fields of a job that stay None until the application sets or measures them.
_UNSET_FIELDS = (
    "schema",
    "status",
    "document_size",
    "memory_peak",
    "memory_footprint",
    "request_time",
    "ru_utime",
    "ru_stime",
)


def program_name() -> str:
    """The running program's file name, without its directory or arguments."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c", "-m", "-"):
        return os.path.basename(sys.executable) or "python"
    return os.path.basename(argv0.rstrip("/\\")) or argv0


def _name_argument(
    name: str, value: str | None, old_name: str, old_value: str | None
) -> str | None:
    """The name given as ``name``, or under its pynba 0.5 spelling ``old_name``: a str, or None."""
    if old_value is not None:
        if value is not None:
            raise TypeError(f"give {name} or {old_name} (its old name), not both")
        name, value = old_name, old_value
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _old_name(name: str) -> Any:
    """Attribute ``name`` under its pynba 0.5 name: ``scriptname = _old_name("script_name")``."""
    return property(
        lambda self: getattr(self, name),
        lambda self, value: setattr(self, name, value),
        doc=f"``{name}`` under its pynba 0.5 name.",
    )


def _failed(error: BaseException | None) -> bool:
    """Whether ``error``, ending a job's block, means the job failed.

    Any exception does, except a clean ``sys.exit()`` (code 0 or None) and
    ``GeneratorExit`` (the block was abandoned, not failed).
    """
    if error is None or isinstance(error, GeneratorExit):
        return False
    if isinstance(error, SystemExit):
        return error.code not in (None, 0)
    return True


#: How long a script's last report waits for its servers' first addresses (seconds).
_LOOKUP_WAIT = 2.0


class _OwnJob:
    """A monitor's own job (``start()`` ... ``send()``), and the monitor's end.

    Kept apart from the monitor and holding no reference to it, so that
    ``weakref.finalize`` can end it at the interpreter's exit or when the
    monitor is collected.
    """

    __slots__ = (
        "settings",
        "script_name",
        "server_name",
        "enabled",
        "own_reporter",
        "collector",
        "running",
        "token",
        "pid",
        "began_by_send",
        "closed",
    )

    def __init__(
        self,
        settings: CollectorSettings,
        script_name: str,
        server_name: str,
        enabled: bool,
        own_reporter: bool,
    ) -> None:
        self.settings = settings
        self.script_name = script_name
        self.server_name = server_name
        self.enabled = enabled
        self.own_reporter = own_reporter
        self.collector: RequestCollector | None = None  # made by the first start()
        self.running = False
        self.token: Token | None = None
        self.pid = os.getpid()
        self.began_by_send = False
        self.closed = False

    def current(self) -> RequestCollector | DisabledCollector | None:
        """The job's collector while it runs, else None."""
        if not self.running:
            return None
        return self.collector if self.enabled else DISABLED

    def start(self) -> None:
        if not self.enabled:
            collector: Any = DISABLED
        elif self.collector is None:
            collector = self.collector = RequestCollector(
                self.settings, self.script_name, self.server_name
            )
        else:
            collector = self.collector
            collector.next_job(self.script_name, self.server_name)
        self.running = True
        self.began_by_send = False
        self.pid = os.getpid()
        self.token = activate(collector)

    def sent(self, autostart: bool) -> None:
        """send() has sent the job: the next one runs on (``autostart``), or none."""
        if not autostart:
            self.stop()  # start() begins the next one
            return
        if self.collector is not None:
            # The monitor's own collector serves job after job: what one job
            # set (its name, tags, enabled...) must not carry over to the next.
            self.collector.next_job(self.script_name, self.server_name)
        self.began_by_send = True
        self.pid = os.getpid()

    def stop(self) -> None:
        self.running = False
        if self.collector is not None:
            self.collector.suspend()  # not running: no share of the thread's CPU
        token, self.token = self.token, None
        if token is not None:
            deactivate(token)

    def end(self, error: BaseException | None = None) -> None:
        """Report the running job (status 500 if ``error`` failed it) and close: once only."""
        if self.closed:
            return
        self.closed = True
        collector = self.collector if self.running else None
        try:
            if collector is not None and self._worth_reporting(collector, error):
                if _failed(error):
                    collector.status = _FAILED_STATUS
                collector.end_response()  # the job ends here, whatever the wait below
                # A script that ends at once must not lose its one report to a lookup under way.
                self.settings.reporter.wait_for_addresses(_LOOKUP_WAIT)
                collector.finish()  # before stop(): the job's CPU is measured while it runs
        finally:
            try:
                self.stop()
            finally:
                if self.own_reporter:
                    self.settings.reporter.close()

    def end_unattended(self) -> None:
        """``end()`` at the interpreter's exit or the monitor's collection: never raises.

        It may run in any thread: the context that made the job current keeps
        it (a finished job, which sends nothing more). A forked child leaves a
        job begun by its parent to the parent.
        """
        if self.closed:
            return
        self.token = None
        if self.pid != os.getpid():
            self.running = False
        try:
            self.end()
        except Exception:
            logger.exception("pynba: cannot report the script's last job")

    def _worth_reporting(self, collector: RequestCollector, error: BaseException | None) -> bool:
        # A script that ends with send() has sent its job: the next one, begun
        # by send() and left untouched, is no job of its own.
        return _failed(error) or not self.began_by_send or not self._untouched(collector)

    def _untouched(self, collector: RequestCollector) -> bool:
        """Whether no timer ran in the job and nothing was set on it."""
        settings = self.settings
        return (
            not collector.timers_ran
            and collector.script_name == self.script_name
            and collector.server_name == self.server_name
            and collector.hostname == settings.hostname
            and collector.tags == settings.tags
            and all(getattr(collector, name) is None for name in _UNSET_FIELDS)
        )


class ScriptMonitor:
    """Monitors a script or a worker: ``ScriptMonitor(("127.0.0.1", 30002))``.

    ``script_name`` defaults to the program's name (never its arguments, which
    would make one report per command line), ``server_name`` and ``hostname``
    to this machine's host name (``scriptname`` and ``servername``, pynba
    0.5's spellings, are accepted too: as keywords, and as the attributes'
    old names). ``tags`` are sent with every job. Keyword options as for
    ``PynbaMiddleware``: ``enabled``, ``raise_on_fail``, ``timer_rusage``,
    ``memory_footprint``, ``pinboard``, ``instrument``. ``address`` and the
    options left unset are read from the environment (``PINBA_SERVER``,
    ``PINBA_HOSTNAME``, ``PINBA_SERVER_NAME``, ...: see ``pynba.config``).

    ``with ScriptMonitor(...) as monitor:`` closes it when the block ends,
    reporting the running job (status 500 if the block raised). A monitor
    never closed reports its running job when it is collected or at the
    interpreter's exit.
    """

    def __init__(
        self,
        address: Any = None,
        hostname: str | None = None,
        script_name: str | None = None,
        server_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        autostart: bool = True,
        *,
        scriptname: str | None = None,
        servername: str | None = None,
        enabled: bool | None = None,
        raise_on_fail: bool | None = None,
        timer_rusage: bool | None = None,
        memory_footprint: bool | None = None,
        pinboard: bool | None = None,
        instrument: Iterable[str] | str | None = None,
    ) -> None:
        script_name = _name_argument("script_name", script_name, "scriptname", scriptname)
        server_name = _name_argument("server_name", server_name, "servername", servername)
        # Options left unset come from the environment (see pynba.config).
        config = resolve(
            address,
            hostname=hostname,
            server_name=server_name,
            enabled=enabled,
            raise_on_fail=raise_on_fail,
            timer_rusage=timer_rusage,
            memory_footprint=memory_footprint,
            pinboard=pinboard,
            instrument=instrument,
        )
        config.instrument_libraries()
        self.settings = config.collector_settings(tags)
        self.reporter: Reporter = self.settings.reporter
        #: The names of the monitor's jobs (``job()`` blocks read them when they begin).
        self.script_name: str = script_name or program_name()
        self.server_name: str = config.server_name or self.settings.hostname
        self.autostart = bool(autostart)
        self._job = _OwnJob(
            self.settings,
            self.script_name,
            self.server_name,
            enabled=bool(config.enabled),
            own_reporter=self.reporter is not config.address,
        )
        # Called once: by close(), at the interpreter's exit, or when the
        # monitor is collected; it holds the job, not the monitor.
        self._finalizer = weakref.finalize(self, self._job.end_unattended)
        # The collectors of the job() blocks running now, by id.
        self._jobs: dict[int, RequestCollector] = {}
        if self.autostart:
            self._job.start()

    scriptname = _old_name("script_name")
    servername = _old_name("server_name")

    @property
    def hostname(self) -> str:
        return self.settings.hostname

    @property
    def tags(self) -> Mapping[str, Any]:
        """The tags sent with every job."""
        return self.settings.tags

    @property
    def enabled(self) -> bool:
        """Whether jobs are reported (else they run unmeasured)."""
        return self._job.enabled

    @property
    def closed(self) -> bool:
        """Whether the monitor was closed: it measures and sends nothing more."""
        return self._job.closed

    @property
    def collector(self) -> RequestCollector | DisabledCollector | None:
        """The job running here: this context's ``job()``, else the monitor's own job."""
        if self._job.closed:
            return None
        current = current_collector()
        if current is not None and (
            current is self._job.collector or self._jobs.get(id(current)) is current
        ):
            return current
        return self._job.current()

    def _require(self) -> RequestCollector | DisabledCollector | None:
        """The job running here; None once closed; RuntimeError when none runs."""
        if self._job.closed:
            return None
        collector = self.collector
        if collector is None:
            raise RuntimeError("no job is running: call start() first (autostart is off)")
        return collector

    # -- the monitor's own job: start() ... send() ----------------------------

    def start(self) -> None:
        """Start a job; RuntimeError if one is running (send() it first)."""
        if self._job.closed:
            return
        if self._job.running:
            raise RuntimeError("a job is already running: send() it first")
        self._job.start()

    def timer(self, /, **tags: Any) -> Timer | NoopTimer:
        """A new timer of the running job, not started."""
        collector = self._require()
        if collector is None:
            return NOOP_TIMER
        return collector.timer(**tags)

    def send(self) -> None:
        """End the running job: stop its timers and send its packet.

        The next job starts at once when ``autostart`` is set; otherwise
        call start(). Timers made earlier may be used again in later jobs.
        Inside ``job()``, sends what that job measured so far.
        """
        collector = self._require()
        if collector is None:
            return
        collector.stop_timers()
        collector.flush()
        if collector is self._job.current():
            self._job.sent(self.autostart)

    def flush(self, only_stopped: bool = False) -> None:
        """Send what the running job measured so far (see ``RequestCollector.flush``)."""
        collector = self._require()
        if collector is not None:
            collector.flush(only_stopped)

    def close(self) -> None:
        """Report the running job, stop monitoring here and close the reporter.

        A ``Reporter`` given as ``address`` is shared: it is left open. With
        ``autostart``, the job that ``send()`` began is not reported when
        nothing ran in it (no timer, nothing set): a script that ends with
        ``send()`` sends that one packet. Closing again does nothing; once
        closed, the monitor's methods do nothing (``timer()`` gives a timer
        that measures nothing, ``job()`` a disabled job).
        """
        self._finalizer.detach()
        self._job.end()

    def __enter__(self) -> ScriptMonitor:
        return self

    def __exit__(self, exc_type: object, error: BaseException | None, traceback: object) -> None:
        self._finalizer.detach()
        self._job.end(error)

    # -- one job per block ----------------------------------------------------

    @contextmanager
    def job(
        self, script_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[RequestCollector | DisabledCollector]:
        """Measure the block as one job (named ``script_name``), sent when it ends.

        A block that raises reports its job with status 500.
        """
        if not self._job.enabled or self._job.closed:
            token = activate(DISABLED)
            try:
                yield DISABLED
            finally:
                deactivate(token)
            return
        collector = RequestCollector(
            self.settings,
            self.script_name if script_name is None else script_name,
            self.server_name,
        )
        if tags:
            for name, value in tags.items():
                collector.set_tag(name, value)
        self._jobs[id(collector)] = collector
        token = activate(collector)
        try:
            yield collector
        except BaseException as error:
            if _failed(error):
                collector.status = _FAILED_STATUS
            raise
        finally:
            deactivate(token)
            del self._jobs[id(collector)]
            collector.finish()

    def __repr__(self) -> str:
        return f"<ScriptMonitor {self.script_name!r} -> {self.reporter!r}>"
