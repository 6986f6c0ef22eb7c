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
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .collector import RequestCollector, settings_for
from .config import resolve
from .context import DISABLED, DisabledCollector, _get, activate, deactivate
from .reporter import Reporter
from .timer import NoopTimer, Timer

__all__ = ["ScriptMonitor", "program_name"]


def program_name() -> str:
    """The running program's file name, without its directory or arguments."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 in ("", "-c", "-m", "-"):
        return os.path.basename(sys.executable) or "python"
    return os.path.basename(argv0.rstrip("/\\")) or argv0


class ScriptMonitor:
    """Monitors a script or a worker: ``ScriptMonitor(("127.0.0.1", 30002))``.

    ``scriptname`` defaults to the program's name (never its arguments, which
    would make one report per command line), ``servername`` and ``hostname``
    to this machine's host name. ``tags`` are sent with every job. Keyword
    options as for ``PynbaMiddleware``: ``enabled``, ``raise_on_fail``,
    ``timer_rusage``, ``memory_footprint``, ``pinboard``. ``address`` and the
    options left unset are read from the environment (``PINBA_SERVER``,
    ``PINBA_HOSTNAME``, ``PINBA_SERVER_NAME``, ...: see ``pynba.config``).
    """

    def __init__(
        self,
        address: Any = None,
        hostname: str | None = None,
        scriptname: str | None = None,
        servername: str | None = None,
        tags: Mapping[str, Any] | None = None,
        autostart: bool = True,
        *,
        enabled: bool | None = None,
        raise_on_fail: bool | None = None,
        timer_rusage: bool | None = None,
        memory_footprint: bool | None = None,
        pinboard: bool | None = None,
    ) -> None:
        for name, value in (("scriptname", scriptname), ("servername", servername)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        # Options left unset come from the environment (see pynba.config).
        config = resolve(
            address,
            hostname=hostname,
            server_name=servername,
            enabled=enabled,
            raise_on_fail=raise_on_fail,
            timer_rusage=timer_rusage,
            memory_footprint=memory_footprint,
            pinboard=pinboard,
        )
        servername = config.server_name
        self.settings = settings_for(config, tags)
        self.reporter: Reporter = self.settings.reporter
        self._own_reporter = self.reporter is not config.address
        self.scriptname: str = scriptname or program_name()
        self.servername: str = servername or self.settings.hostname
        self.autostart = bool(autostart)
        self.enabled = bool(config.enabled)
        self._collector: RequestCollector | None = None
        self._running = False
        self._token = None
        if self.autostart:
            self.start()

    @property
    def hostname(self) -> str:
        return self.settings.hostname

    @property
    def tags(self) -> Mapping[str, Any]:
        """The tags sent with every job."""
        return self.settings.tags

    @property
    def collector(self) -> RequestCollector | DisabledCollector | None:
        """The job running here: this context's ``job()``, else the monitor's own job."""
        current = _get()
        if current is not None and self._owns(current):
            return current
        if not self.enabled:
            return DISABLED if self._running else None
        return self._collector if self._running else None

    def _owns(self, collector: Any) -> bool:
        return getattr(collector, "_settings", None) is self.settings

    def _require(self) -> RequestCollector | DisabledCollector:
        collector = self.collector
        if collector is None:
            raise RuntimeError("no job is running: call start() first (autostart is off)")
        return collector

    # -- the monitor's own job: start() ... send() ----------------------------

    def start(self) -> None:
        """Start a job; RuntimeError if one is running (send() it first)."""
        if self._running:
            raise RuntimeError("a job is already running: send() it first")
        if not self.enabled:
            collector: Any = DISABLED
        elif self._collector is None:
            collector = self._collector = RequestCollector(
                self.settings, self.scriptname, self.servername
            )
        else:
            collector = self._collector
            collector._restart_clock()
        self._running = True
        self._token = activate(collector)

    def timer(self, /, **tags: Any) -> Timer | NoopTimer:
        """A new timer of the running job, not started."""
        return self._require()._timer(tags)

    def send(self) -> None:
        """End the running job: stop its timers and send its packet.

        The next job starts at once when ``autostart`` is set; otherwise
        call start(). Timers made earlier may be used again in later jobs.
        Inside ``job()``, sends what that job measured so far.
        """
        collector = self._require()
        collector.stop_timers()
        collector.flush()
        own_job = DISABLED if not self.enabled else self._collector
        if collector is own_job:
            if collector is self._collector:
                self._forget_job(collector)
            if not self.autostart:
                self._stop()

    def _forget_job(self, collector: RequestCollector) -> None:
        # The monitor's own collector serves job after job: what one job set
        # (its name, tags...) must not carry over to the next.
        collector._tags = None
        collector._script_name = self.scriptname
        collector._server_name = self.servername
        collector._hostname = self.settings.hostname
        collector._schema = None

    def flush(self, only_stopped: bool = False) -> None:
        """Send what the running job measured so far (see ``RequestCollector.flush``)."""
        self._require().flush(only_stopped)

    def _stop(self) -> None:
        self._running = False
        token, self._token = self._token, None
        if token is not None:
            deactivate(token)

    def close(self) -> None:
        """Stop monitoring here (nothing more is sent) and close the reporter.

        A ``Reporter`` given as ``address`` is shared: it is left open.
        """
        if self._running:
            self._stop()
        if self._own_reporter:
            self.reporter.close()

    # -- one job per block ----------------------------------------------------

    @contextmanager
    def job(
        self, script_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[RequestCollector | DisabledCollector]:
        """Measure the block as one job (named ``script_name``), sent when it ends."""
        if not self.enabled:
            token = activate(DISABLED)
            try:
                yield DISABLED
            finally:
                deactivate(token)
            return
        collector = RequestCollector(
            self.settings,
            self.scriptname if script_name is None else script_name,
            self.servername,
        )
        if tags:
            for name, value in tags.items():
                collector.set_tag(name, value)
        token = activate(collector)
        try:
            yield collector
        finally:
            deactivate(token)
            collector.finish()

    def __repr__(self) -> str:
        return f"<ScriptMonitor {self.scriptname!r} -> {self.reporter!r}>"
