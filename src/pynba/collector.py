"""The request collector: everything one Pinba packet reports, gathered during a request.

A collector starts measuring when it is created and sends its packet through
a ``Reporter`` when the request ends (``finish()``), or earlier and more than
once with ``flush()`` for long-running code. The application may set any
field during the request; a field left unset (``None``) is measured at the
end:

- ``request_time``: wall-clock seconds since the start (``time.perf_counter``);
- ``ru_utime``/``ru_stime``: CPU seconds of the current thread
  (``RUSAGE_THREAD``) where the OS has it, of the process otherwise, shared
  out between the requests running on the thread at the same time (asyncio
  tasks, gevent greenlets: see ``pynba.rusage.ThreadCPU``);
- ``memory_peak``: the process's peak resident set size (``ru_maxrss``, from
  the same ``getrusage`` call), in bytes;
- ``memory_footprint``: 0, unless ``memory_footprint=True`` was configured:
  then the current resident set size, which costs a file read per request
  (``/proc/self/statm``, Linux only).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from . import rusage
from ._implementation import check_self_types, runs_compiled
from .errors import internal_error
from .names import default_hostname
from .pinboard import pinboard_timers
from .reporter import Reporter
from .rusage import resident_set_size
from .strict import is_strict
from .tags import (
    TagPairs,
    TagValue,
    check_split_tags,
    check_tag_name,
    flatten_tags,
    timer_tags,
)
from .timer import NOOP_TIMER, NoopTimer, Timer, TimerRecord, check_seconds
from .wire.encoder import STATUS_MAX

__all__ = ["MAX_TAG_SETS", "MERGE_TIMERS_AT", "CollectorSettings", "RequestCollector"]

logger = logging.getLogger("pynba")

_INTERPRETED = not runs_compiled(__file__)

_NEVER = sys.maxsize  # a request's _merge_at while it merges

#: A request holding this many timers merges its stopped ones by tag set,
#: so that a job making a million timers holds a bounded number of objects.
MERGE_TIMERS_AT = 1000
#: The tag sets a request keeps merged timers of; timers with yet other tag
#: sets are dropped from it, counted in ``reporter.stats["timers_dropped"]``.
MAX_TAG_SETS = 10_000

#: A request tag as a collector keeps it: a ``str`` value as itself (it is
#: sent as one pair of its own name: the common case, stored without a tuple);
#: any other value with its pairs, flattened once (None for a configured
#: callable, flattened when the packet is made).
TagEntry = str | tuple[Any, TagPairs | None]

# ru_maxrss is in KiB on Linux and the BSDs, in bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


class CollectorSettings:
    """What every request of one middleware or monitor shares."""

    __slots__ = (
        "reporter",
        "hostname",
        "tags",
        "tag_entries",
        "tag_pairs",
        "timer_rusage",
        "memory_footprint",
        "pinboard",
    )

    def __init__(
        self,
        reporter: Reporter,
        hostname: str | None = None,
        tags: Mapping[str, Any] | None = None,
        timer_rusage: bool = False,
        memory_footprint: bool = False,
        pinboard: bool = False,
    ) -> None:
        if not isinstance(reporter, Reporter):
            raise TypeError(f"reporter must be a Reporter, not {type(reporter).__name__}")
        if hostname is not None and not isinstance(hostname, str):
            raise TypeError(f"hostname must be a str, not {type(hostname).__name__}")
        if tags is not None and not isinstance(tags, Mapping):
            raise TypeError(f"tags must be a mapping, not {type(tags).__name__}")
        self.reporter = reporter
        self.hostname = hostname or default_hostname()
        self.tags: dict[str, Any] = dict(tags or {})
        # Checked and flattened now, where they are configured; callables are
        # called per request, when the packet is made (see RequestCollector.tags).
        self.tag_entries: dict[str, TagEntry] = {}
        for name, value in self.tags.items():
            name = check_tag_name(name)
            self.tag_entries[name] = (value, None) if callable(value) else _tag_entry(name, value)
        #: What every request sends when it changes no tag and none is a callable.
        self.tag_pairs: TagPairs | None = None
        if not any(callable(value) for value in self.tags.values()):
            self.tag_pairs = flatten_tags(self.tags)
        self.timer_rusage = bool(timer_rusage)
        self.memory_footprint = bool(memory_footprint)
        #: Pinboard compatibility: every timer also carries the packet's
        #: ``__hostname`` and ``__server_name`` tags.
        self.pinboard = bool(pinboard)


def _tag_entry(name: str, value: Any) -> TagEntry:
    """The entry of tag ``name`` (checked) set to ``value`` (see ``TagEntry``)."""
    if type(value) is str:
        return value  # flatten_tags would give ((name, value),)
    return (value, flatten_tags([(name, value)]))


def _check_count(name: str, value: Any, top: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if top is not None and value > top:
        raise ValueError(f"{name} must be <= {top}, got {value}")
    return value


def _check_seconds(name: str, value: Any) -> float | None:
    if value is None:
        return None
    return check_seconds(name, value)


def _check_text(name: str, value: Any) -> str | bytes | None:
    cls = type(value)
    if value is None or cls is str or cls is bytes:
        return value
    if isinstance(value, (str, bytes)):  # its plain text: no method of the subclass runs later
        return (
            str.__str__(value) if isinstance(value, str) else bytes.__getitem__(value, slice(None))
        )
    raise TypeError(f"{name} must be a str, not {type(value).__name__}")


class Namer:
    """Names the requests their application names nothing: ``namer(source)``.

    A collector's ``namer`` may be any callable; one of this class's is
    called through ``name``, which compiled is a C call (a Python-level
    call of the namer costs about 370 instructions a request more).
    """

    __slots__ = ()

    def __call__(self, source: Any) -> str:
        return self.name(source)

    def name(self, source: Any) -> str:
        """The script name of the request ``source`` (environ, scope...) stands for."""
        raise NotImplementedError


def _default_name(namer: Callable[[Any], str], source: Any) -> str:
    """``namer(source)``: through ``Namer.name`` for a Namer (see Namer)."""
    if isinstance(namer, Namer):
        known = namer  # compiled: typed (see collector.pxd)
        return known.name(source)
    return namer(source)


class RequestCollector:
    """One request's measurements; sent as one Pinba packet by ``finish()``.

    Reach the current request's collector through the ``pynba`` proxy:
    ``pynba.timer(group="db")``, ``pynba.script_name = "/users/{id}"``,
    ``pynba.set_tag("route", "users")``, ``pynba.document_size = 1234``...
    """

    __slots__ = (
        "_settings",
        "_hostname",
        "_server_name",
        "_script_name",
        "_schema",
        "_status",
        "_document_size",
        "_memory_peak",
        "_memory_footprint",
        "_request_time",
        "_ru_utime",
        "_ru_stime",
        "_tags",
        "_tags_sent",
        "_timers",
        "_merged",
        "_merge_at",
        "_start",
        "_cpu",
        "_utime_start",
        "_stime_start",
        "_finished",
        "_skipped",
        "_namer",
        "_source",
    )

    def __init__(
        self,
        settings: CollectorSettings,
        script_name: str | None = None,
        server_name: str | None = None,
        schema: str | None = None,
        namer: Callable[[Any], str] | None = None,
        source: Any = None,
    ) -> None:
        """``namer(source)`` gives the script name when none is set (called once, at the end).

        The request's own object (environ, scope...) goes in ``source``
        rather than in a closure: then the collector and whatever holds it
        make no reference cycle, and a response dropped unclosed is freed
        (and reported) at once.
        """
        self._setup(settings, script_name, server_name, schema, namer, source)

    @staticmethod
    def of_request(
        settings: CollectorSettings,
        server_name: str | None,
        schema: str | None,
        namer: Callable[[Any], str] | None,
        source: Any,
    ) -> RequestCollector:
        """``RequestCollector(settings, None, server_name, schema, namer, source)``.

        A middleware's way to make its request's collector: compiled, a C
        call (see collector.pxd) that spares the Python-level construction
        and its argument parsing (about 100 instructions a request).
        """
        collector: RequestCollector = RequestCollector.__new__(RequestCollector)
        collector._setup(settings, None, server_name, schema, namer, source)
        return collector

    def _setup(
        self,
        settings: CollectorSettings,
        script_name: str | None,
        server_name: str | None,
        schema: str | None,
        namer: Callable[[Any], str] | None,
        source: Any,
    ) -> None:
        self._cpu: rusage.ThreadCPU | None = None  # read by __del__, even when this raises
        if not isinstance(settings, CollectorSettings):
            raise TypeError(f"settings must be a CollectorSettings, not {type(settings).__name__}")
        self._settings = settings
        # Compiled, self._settings is typed: a C read, not a lookup (about 140 instructions).
        self._hostname: str | bytes | None = self._settings.hostname
        self._server_name: str | bytes | None = server_name
        self._script_name: str | bytes | None = script_name
        self._schema: str | bytes | None = schema
        self._status: int | None = None
        self._document_size: int | None = None
        self._memory_peak: int | None = None
        self._memory_footprint: int | None = None
        self._request_time: float | None = None
        self._ru_utime: float | None = None
        self._ru_stime: float | None = None
        self._tags: dict[str, TagEntry] | None = None
        # Whether self._tags went out with a packet: it is copied before it changes.
        self._tags_sent = False
        self._timers: list[Timer] = []
        self._merged: dict[tuple[Any, ...], list] | None = None
        self._merge_at = MERGE_TIMERS_AT
        self._finished = False
        self._skipped = False
        self._namer = namer
        self._source = source
        cpu = rusage.thread_cpu()
        self._cpu = cpu
        self._utime_start, self._stime_start = cpu.begin()
        self._start = time.perf_counter()

    # -- fields the application may set (None: measured or defaulted at the end)

    @property
    def hostname(self) -> str | bytes | None:
        """The host the request ran on; this machine's name unless set."""
        return self._hostname

    @hostname.setter
    def hostname(self, value: str | bytes | None) -> None:
        self._hostname = _check_text("hostname", value)

    @property
    def server_name(self) -> str | bytes | None:
        """The site the request was for (the Host, for web requests)."""
        return self._server_name

    @server_name.setter
    def server_name(self, value: str | bytes | None) -> None:
        self._server_name = _check_text("server_name", value)

    @property
    def schema(self) -> str | bytes | None:
        """The request's scheme ("http", "https"...)."""
        return self._schema

    @schema.setter
    def schema(self, value: str | bytes | None) -> None:
        self._schema = _check_text("schema", value)

    @property
    def status(self) -> int | None:
        """The response status; the integration's measure unless set."""
        return self._status

    @status.setter
    def status(self, value: int | None) -> None:
        self._status = _check_count("status", value, STATUS_MAX)

    @property
    def document_size(self) -> int | None:
        """Bytes of the response body; the integration's measure unless set."""
        return self._document_size

    @document_size.setter
    def document_size(self, value: int | None) -> None:
        self._document_size = _check_count("document_size", value)

    @property
    def memory_peak(self) -> int | None:
        """Peak memory in bytes; the process's peak RSS unless set."""
        return self._memory_peak

    @memory_peak.setter
    def memory_peak(self, value: int | None) -> None:
        self._memory_peak = _check_count("memory_peak", value)

    @property
    def memory_footprint(self) -> int | None:
        """Memory in use in bytes; 0, or the RSS when configured, unless set."""
        return self._memory_footprint

    @memory_footprint.setter
    def memory_footprint(self, value: int | None) -> None:
        self._memory_footprint = _check_count("memory_footprint", value)

    @property
    def request_time(self) -> float | None:
        """Seconds the request took; measured at the end unless set."""
        return self._request_time

    @request_time.setter
    def request_time(self, value: float | None) -> None:
        self._request_time = _check_seconds("request_time", value)

    @property
    def ru_utime(self) -> float | None:
        """User CPU seconds; measured at the end unless set."""
        return self._ru_utime

    @ru_utime.setter
    def ru_utime(self, value: float | None) -> None:
        self._ru_utime = _check_seconds("ru_utime", value)

    @property
    def ru_stime(self) -> float | None:
        """System CPU seconds; measured at the end unless set."""
        return self._ru_stime

    @ru_stime.setter
    def ru_stime(self, value: float | None) -> None:
        self._ru_stime = _check_seconds("ru_stime", value)

    @property
    def script_name(self) -> str | bytes | None:
        """What the report groups by; defaults to the request path or program name."""
        return self._resolved_script_name()

    @script_name.setter
    def script_name(self, name: str | bytes | None) -> None:
        self._script_name = _check_text("script_name", name)

    # The old pynba spellings.
    scriptname = property(
        lambda self: self.script_name,
        lambda self, name: setattr(self, "script_name", name),
        doc="The old name of script_name.",
    )
    servername = property(
        lambda self: self.server_name,
        lambda self, name: setattr(self, "server_name", name),
        doc="The old name of server_name.",
    )

    def _resolved_script_name(self) -> str | bytes | None:
        """The name set, else the namer's default ("" when the namer fails), else None."""
        name = self._script_name
        if name is None and self._namer is not None:
            try:
                name = _default_name(self._namer, self._source)
            except Exception:
                internal_error("script_name failed; reporting an empty name", self._raise_on_fail)
                name = ""
        return name

    @property
    def _raise_on_fail(self) -> bool:
        return bool(getattr(self._settings.reporter, "raise_on_fail", False))

    @property
    def reporter(self) -> Reporter:
        """The reporter the packet goes through."""
        return self._settings.reporter

    @property
    def finished(self) -> bool:
        """Whether the request has ended (its packet was sent)."""
        return self._finished

    @property
    def timer_rusage(self) -> bool:
        """Whether this request's timers measure their CPU time (the ``timer_rusage`` setting)."""
        return self._settings.timer_rusage

    @property
    def enabled(self) -> bool:
        """Whether this request's packet will be sent.

        Set it to False during the request to skip the request (a favicon, a
        health check): nothing is sent for it, and True again to send it after all.
        """
        return not self._skipped

    @enabled.setter
    def enabled(self, enabled: bool) -> None:
        self._skipped = not enabled

    # -- request tags --------------------------------------------------------

    # Each tag is kept as a TagEntry: flattened once, when it is set; a
    # configured callable is called at the end.

    @property
    def tags(self) -> Mapping[str, Any]:
        """The request tags (read-only); change them with set_tag()/delete_tag().

        Assigning a mapping replaces them all. A callable value given here or
        to set_tag() is called at once; one in the ``tags`` option of a
        middleware or monitor is called for each request, at its end.
        """
        entries = self._tags
        if entries is None:
            return MappingProxyType(self._settings.tags)
        return MappingProxyType(
            {name: entry if isinstance(entry, str) else entry[0] for name, entry in entries.items()}
        )

    @tags.setter
    def tags(self, tags: Mapping[str, Any]) -> None:
        if not isinstance(tags, Mapping):
            raise TypeError(f"tags must be a mapping, not {type(tags).__name__}")
        entries: dict[str, TagEntry] = {}
        for name, value in tags.items():
            name = check_tag_name(name)
            entries[name] = _tag_entry(name, value)
        self._tags = entries
        self._tags_sent = False

    def set_tag(self, name: str, value: Any) -> None:
        """Set one request tag (lists, sets and mappings flatten as for timers)."""
        if type(name) is str and type(value) is str and name:
            entry: TagEntry = value  # what _tag_entry gives, without the call
        else:
            name = check_tag_name(name)
            entry = _tag_entry(name, value)
        entries = self._tags
        if entries is None or self._tags_sent:
            entries = self._tags = self._own_tags()
        entries[name] = entry

    def delete_tag(self, name: str) -> None:
        """Remove one request tag (no error when it is not set)."""
        name = check_tag_name(name)  # a str subclass's __hash__ and __eq__ are not called
        entries = self._tags
        if entries is None or self._tags_sent:
            entries = self._tags = self._own_tags()
        entries.pop(name, None)

    def _own_tags(self) -> dict[str, TagEntry]:
        """A copy of the request's tags to change (the settings' until one is set)."""
        entries = self._tags
        if entries is None:
            entries = self._settings.tag_entries
        self._tags_sent = False
        return entries.copy()

    # -- timers --------------------------------------------------------------

    def timer(self, /, **tags: Any) -> Timer | NoopTimer:
        """A new timer of this request, not started, with these tags."""
        return self.new_timer(tags)

    def new_timer(self, tags: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Timer | NoopTimer:
        """A new timer of this request with ``tags`` (a mapping or pairs), not started.

        After the request has ended, the ``NOOP_TIMER`` (see ``add_timer``).
        """
        if self._finished:
            return self._too_late(tags)
        names, values = timer_tags(tags)
        return self._new_split_timer(names, values)

    def new_checked_timer(
        self, names: tuple[str, ...], values: tuple[TagValue, ...]
    ) -> Timer | NoopTimer:
        """``new_timer()`` for tags split already, as ``timer_tags`` gives them.

        ``pynba.timer(...)``'s compiled fast path makes its timers so. Tags
        in another form are a TypeError or ValueError (see ``check_split_tags``).
        """
        check_split_tags(names, values)
        return self._new_split_timer(names, values)

    def _new_split_timer(
        self, names: tuple[str, ...], values: tuple[TagValue, ...]
    ) -> Timer | NoopTimer:
        # Compiled, a C method (see collector.pxd): pynba.timer(...)'s fast
        # path calls it once it has checked the tags itself, sparing the
        # second check (about 0.1 us a timer).
        return self.add_timer(Timer.of_request(self, names, values, self._settings.timer_rusage))

    def _add_call_timer(
        self, names: tuple[str, ...], values: tuple[TagValue, ...], seconds: float
    ) -> None:
        # The integrations' timers: one call that took ``seconds``, its tags
        # checked by check_split_tags already; none once the request has ended.
        # Compiled, a C method (see collector.pxd) making the timer measured:
        # after a network call, with the caches cold, a Python-level call of
        # the timer's add() cost about 1 us more.
        if not self._finished:
            self.add_timer(Timer.of_call(self, names, values, self._settings.timer_rusage, seconds))

    def add_timer(self, timer: Timer) -> Timer | NoopTimer:
        """Make ``timer`` (of this request) one the next packet carries.

        Once the request has ended, nothing more can be sent for it: the
        timer is not kept, and the ``NOOP_TIMER`` is returned in its place,
        so that work that outlives its request (a task it started) neither
        piles timers up nor fails.
        """
        if self._finished:
            return self._too_late(timer.tags)
        if len(self._timers) >= self._merge_at:
            # Before the timer joins: one rejoining to be started or added to
            # has not measured yet, and a merge would leave it out for good.
            self._merge_timers()
        self._timers.append(timer)
        return timer

    def remove_timer(self, timer: Timer) -> None:
        """Leave ``timer`` out of the next packet (no error when it is not there)."""
        try:
            self._timers.remove(timer)
        except ValueError:
            pass

    def _too_late(self, tags: Any) -> NoopTimer:
        if is_strict():
            raise RuntimeError(f"pynba: a timer {tags!r} made after its request ended")
        logger.debug("pynba: a timer %r made after its request ended does nothing", tags)
        return NOOP_TIMER

    @property
    def timers(self) -> tuple[Timer, ...]:
        """The timers that the next packet will carry (and those not started yet).

        Once a request holds ``MERGE_TIMERS_AT`` timers, the stopped ones are
        merged by tag set and leave this tuple (see ``_merge_timers``).
        """
        return tuple(self._timers)

    @property
    def timers_ran(self) -> bool:
        """Whether a timer has run since the last packet: one running, one with hits, or merged."""
        return bool(self._merged) or any(timer.started or timer.hit_count for timer in self._timers)

    def _merge_timers(self) -> None:
        """Fold the stopped timers into totals per tag set, sent with the next packet.

        A folded timer leaves the request as a flushed one does (see
        ``Timer.hand_over``). Running timers stay; when they are most of what
        the request holds, merging waits for twice as many timers next time.
        """
        merged = self._merged
        if merged is None:
            merged = self._merged = {}
        merge_at = self._merge_at
        # A timer added while this runs (by a finalizer it sets off, a signal
        # handler) joins the list it reads, to be read too: it must not start
        # a merge of its own, whose list this one would then replace.
        self._merge_at = _NEVER
        kept = []
        dropped = 0
        try:
            for timer in self._timers:
                if timer.started:
                    kept.append(timer)
                    continue
                value, hits, utime, stime = timer.hand_over_measures()
                if not hits:  # never run: it rejoins the request when started
                    continue
                tag_set = timer.tag_set
                total = merged.get(tag_set)
                if total is not None:
                    total[1] += value
                    total[2] += hits
                    total[3] += utime
                    total[4] += stime
                elif len(merged) < MAX_TAG_SETS:
                    merged[tag_set] = [timer.tags, value, hits, utime, stime]
                else:
                    dropped += 1
            self._timers = kept
        finally:
            self._merge_at = merge_at * 2 if len(kept) * 2 >= merge_at else merge_at
        if dropped:
            self._settings.reporter.count("timers_dropped", dropped)

    def _merged_timers(self) -> list[TimerRecord]:
        """The merged totals as the encoder takes them; the request keeps none."""
        merged = self._merged
        self._merged = None
        if not merged:
            return []
        return [tuple(total) for total in merged.values()]

    def stop_timers(self) -> None:
        """Stop every running timer."""
        for timer in self._timers:
            if timer.started:
                timer.stop()

    # -- sending -------------------------------------------------------------

    def end_response(self) -> None:
        """The response is complete: fix ``request_time`` and the CPU times now.

        The packet still waits for ``finish()``, so that it carries the
        timers of work that goes on after the response in the same
        application call (an ASGI application's background tasks).
        Measures the application set itself are kept.
        """
        if self._finished:
            return
        utime, stime, _ = self._cpu_reading(False)
        if self._request_time is None:
            self._request_time = time.perf_counter() - self._start
        if self._ru_utime is None:
            self._ru_utime = max(utime - self._utime_start, 0.0)
        if self._ru_stime is None:
            self._ru_stime = max(stime - self._stime_start, 0.0)

    def finish(self, status: int | None = None, document_size: int | None = None) -> None:
        """End the request: stop running timers and send the packet. Once only.

        ``status`` and ``document_size`` are what the integration measured:
        sent unless the application set its own. Nothing is sent when the
        application set ``enabled`` to False.
        """
        if self._finished:
            return
        self._finished = True
        try:
            # Measured, not written by the application: the encoder clamps them.
            if self._status is None:
                self._status = status
            if self._document_size is None:
                self._document_size = document_size
            timers = self._measure_timers(keep_running=False, end=None)
            if not self._skipped:
                self._send(timers)
        except Exception:
            internal_error("cannot report the request", self._raise_on_fail)
        finally:
            self._stop_running()  # when not sent (skipped, failed)
            if self._timers:  # no new list for none (about 140 instructions a request)
                self._timers = []
            # The request's own object can go now.
            self._namer = None
            self._source = None

    def flush(self, only_stopped: bool = False) -> None:
        """Send what was measured so far as a packet of its own, then start afresh.

        Sent timers leave the request (a sent timer started again rejoins
        it). A running timer sends the time it has run so far and goes on
        from zero, unless ``only_stopped`` is set: then it is left out and
        keeps running for a later packet. After the request has ended (its
        packet sent) there is nothing left to send: it does nothing.
        """
        if self._finished:
            logger.debug("pynba: flush() after the request ended; nothing to send")
            return
        try:
            end = time.perf_counter()
            timers = self._measure_timers(keep_running=only_stopped, end=end)
            if not self._skipped:
                self._send(timers, end)
        except Exception:
            internal_error("cannot flush the request", self._raise_on_fail)
        self._start_afresh()

    def next_job(self, script_name: str | None = None, server_name: str | None = None) -> None:
        """Begin a script's next job on this collector, as a new one would begin.

        The names are set anew, the other fields and the request tags go back
        to their defaults, ``enabled`` to True, the merging of timers to
        ``MERGE_TIMERS_AT``, and the clock restarts; the timers not sent
        (made but never run) stay.
        """
        self.script_name = script_name
        self.server_name = server_name
        self.hostname = self._settings.hostname
        self.schema = None
        self._tags = None
        self._tags_sent = False
        self._skipped = False
        self._merge_at = MERGE_TIMERS_AT
        self._start_afresh()

    def _start_afresh(self) -> None:
        """Forget the measures of what was sent, and measure from now on."""
        self._status = self._request_time = self._ru_utime = self._ru_stime = None
        self._document_size = self._memory_peak = self._memory_footprint = None
        self._utime_start, self._stime_start, _ = self._cpu_reading(False)
        self._start = time.perf_counter()

    def _cpu_reading(self, ending: bool) -> tuple[float, float, int]:
        """This request's share of its thread's CPU so far (see ``ThreadCPU``), and ru_maxrss.

        ``ending``: the request stops running on its thread. A request read
        on another thread than it began on (a server that closes responses
        elsewhere) moves there: the CPU of the thread it left cannot be read
        from here, so it counts from now on.
        """
        cpu = self._cpu
        # On the thread it began on, as most requests end: its ThreadCPU is
        # known without looking the thread's up (about 80 instructions).
        if cpu is None or not cpu.is_current():
            cpu = rusage.thread_cpu()
            self._stop_running()
            self._cpu = cpu
            self._utime_start, self._stime_start = cpu.begin()
        if ending:
            self._cpu = None
            return cpu.end()
        return cpu.progress()

    def suspend(self) -> None:
        """The request stops running for now: its thread's CPU is no longer shared with it.

        Measuring goes on from the next reading (a flush, or a restarted job).
        """
        self._stop_running()

    def _stop_running(self) -> None:
        """No longer running on the thread it began on (once only)."""
        cpu = self._cpu
        if cpu is not None:
            self._cpu = None
            cpu.leave()

    def __del__(self) -> None:
        # A request dropped unfinished must not go on sharing its thread's CPU.
        self._stop_running()

    def _measure_timers(
        self, keep_running: bool, end: float | None
    ) -> Sequence[Timer | TimerRecord]:
        """The timers as the encoder takes them; sent ones leave the request.

        At the request's end (``end`` None) these are the Timers themselves;
        a flush sends what they measured so far, as records, and resets them
        (see ``Timer.take_measures``). The totals of merged timers go too.
        """
        if self._merged is None and not self._timers:
            return ()  # no list to make and free (about 140 instructions a request)
        out: list[Timer | TimerRecord] = []
        if self._merged is not None:
            out.extend(self._merged_timers())
        if not self._timers:
            return out
        ending = end is None
        kept = []
        for timer in self._timers:
            measured = timer.take_measures(ending, keep_running)
            if measured is not None:
                out.append(measured)
            if not ending and (measured is None or timer.started):
                kept.append(timer)  # running on, or not run yet
        self._timers = kept
        return out

    def _send(self, timers: Sequence[Timer | TimerRecord], end: float | None = None) -> None:
        utime, stime, maxrss = self._cpu_reading(self._finished)
        # Compiled, a C double, as self._start (see collector.pxd): no float
        # made and freed for either, nor subtracted by the number protocol.
        request_end = time.perf_counter() if end is None else end
        settings = self._settings
        tags: dict[str, str] | TagPairs | None = settings.tag_pairs
        if self._tags is not None:
            tags = self._request_tags(self._tags)
        elif tags is None:
            tags = self._request_tags(settings.tag_entries)
        request_time = self._request_time
        ru_utime = self._ru_utime
        ru_stime = self._ru_stime
        memory_peak = self._memory_peak
        memory_footprint = self._memory_footprint
        if memory_footprint is None:
            memory_footprint = resident_set_size() if settings.memory_footprint else 0
        script_name = self._resolved_script_name()
        if self._finished:
            self._script_name = script_name  # the namer goes with the request
        hostname = self._hostname or settings.hostname
        server_name = self._server_name or ""
        if settings.pinboard:
            timers = pinboard_timers(timers, hostname, server_name)
        # A plain tuple of RequestRecord's fields, in order: building the
        # record and unpacking it again costs about 0.3 us a request more.
        settings.reporter.report_request(
            (  # type: ignore[arg-type]
                hostname,
                server_name,
                script_name or "",
                1,
                self._document_size or 0,
                maxrss * _MAXRSS_UNIT if memory_peak is None else memory_peak,
                request_end - self._start if request_time is None else request_time,
                utime - self._utime_start if ru_utime is None else ru_utime,
                stime - self._stime_start if ru_stime is None else ru_stime,
                self._status or 0,
                memory_footprint,
                self._schema,
                tags,
                timers,
            )
        )

    def _request_tags(self, entries: dict[str, TagEntry]) -> dict[str, str] | TagPairs:
        """The request tags to send: ``entries`` when each is a str (the
        encoder reads a dict as names and values), else their pairs.

        The packet has the tags as they were when it was begun: a tag set
        later (by the namer, another thread, after a flush) changes a copy.
        """
        if _INTERPRETED:
            # Interpreted, another thread can set a tag between two steps of
            # the loop, or of set_tag (compiled, neither runs Python code).
            entries = entries.copy()
        for entry in entries.values():
            if type(entry) is not str:
                return self._request_pairs(entries)
        if entries is self._tags:
            self._tags_sent = True
        return entries  # type: ignore[return-value]  # each a str

    def _request_pairs(self, entries: dict[str, TagEntry]) -> TagPairs:
        """The pairs of ``entries``; a configured callable that fails is left out."""
        out: list = []
        alone = True  # each tag one pair of its own name: no two can be equal
        for name, entry in list(entries.items()):  # a callable may set a tag
            if isinstance(entry, str):
                out.append((name, entry))
                continue
            value, pairs = entry
            if pairs is None:
                alone = False
                try:
                    pairs = flatten_tags([(name, value)])
                except Exception:
                    self._settings.reporter.count("tag_failed")
                    internal_error(
                        f"request tag {name!r} failed; sent without it",
                        self._raise_on_fail,
                        "request tag failed",
                    )
                    continue
            elif len(pairs) != 1 or pairs[0][0] != name:
                alone = False
            out.extend(pairs)  # compiled, a C call (``+=`` is the generic in-place add)
        return tuple(out) if alone else flatten_tags(out)

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running"
        return f"<RequestCollector {self.script_name!r} {state}, {len(self._timers)} timers>"


check_self_types(Namer, CollectorSettings, RequestCollector)
