"""``pynba run``: run a command as one monitored request, as PHP's CLI reports a script.

``pynba run [--server ADDR] [--tag NAME=VALUE ...] -- python script.py args``
starts the command, waits for it and sends one Pinba packet for the whole
run (and, with ``--flush-every``, one every so many seconds while it runs):

- ``script_name``: the script's path as given, or the module of
  ``python -m pkg.mod``, or the command (its first word) for a command that
  is not a Python script; ``--script-name`` sets it;
- ``request_time``: the wall-clock time from start to exit;
- ``ru_utime``/``ru_stime``: the CPU time of the command and of the children
  it waited for (``RUSAGE_CHILDREN``); ``memory_peak``: the largest of their
  peak resident set sizes;
- ``status``: 200 for exit status 0; 500 otherwise, with the request tag
  ``exit_code`` (``exit_code=3``), or ``signal`` (``signal=SIGKILL``) when a
  signal ended the command.

When the command is a Python interpreter running a script or a module
(``python [options] script.py``, ``python [options] -m module``), the script
runs in that interpreter under a small bootstrap (``pynba._run_child``) as a
``ScriptMonitor`` job: ``pynba.timer(...)`` and the rest of the ``pynba``
proxy work in the script, and the job's timers come back to ``pynba run``
through a pipe, to go in the run's packet. Any other command is only
measured from outside.

``pynba run`` exits with the command's exit status (128 + N when signal N
ended it, as shells do). It leaves the command's standard streams alone,
forwards SIGTERM and SIGHUP to it, and SIGINT and SIGQUIT unless the
terminal sent them to the command already (both in its foreground process
group). A failure of pynba's own (a bad option in the environment, a server
that cannot be reached) is logged; the command runs all the same.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from .. import _run_child
from ..collector import CollectorSettings
from ..config import resolve
from ..errors import internal_error
from ..record import RequestRecord
from ..strict import is_strict
from ..tags import TagPairs, check_tag_name, flatten_tags
from ..timer import TimerRecord
from ..wire.decode import DecodeError, PinbaRequest, decode_request

__all__ = ["Command", "PythonScript", "add_parser", "plan", "run_command"]

#: The packet's status: the command exited 0; it exited otherwise, or a signal ended it.
STATUS_OK, STATUS_FAILED = 200, 500
#: ``pynba run``'s exit status when the command cannot be started: not found, not executable.
EXIT_NOT_FOUND, EXIT_CANNOT_RUN = 127, 126

# How long the last report waits for its server's address, and for the
# script's last timers once it has exited (a child of its own may hold the pipe).
_LOOKUP_WAIT = 2.0
_CHANNEL_WAIT = 2.0

_PYTHON = re.compile(r"(python|pypy)(\d+(\.\d+)*)?[a-z]?(\.exe)?", re.IGNORECASE)
# python's options that take a value; "c", "m" and "W"/"X" may have it attached ("-Wignore").
_OPTIONS_WITH_VALUE = frozenset("cmWX")
# Python runs no script with these: the command is run as it is.
_NO_SCRIPT = frozenset("ciVh?")
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
# Sent by a terminal to its whole foreground process group.
_FROM_TERMINAL = frozenset((signal.SIGINT, signal.SIGQUIT))


#: A Python script as the bootstrap runs it: (interpreter and its options, "path" or
#: "module", the script's path or the module's name, the script's arguments).
PythonScript = tuple[tuple[str, ...], str, str, tuple[str, ...]]


@dataclass(frozen=True)
class Command:
    """What ``pynba run`` starts: ``argv``; for a Python script, what the bootstrap runs."""

    argv: tuple[str, ...]
    script_name: str
    #: What the bootstrap runs, for a Python script.
    python: PythonScript | None = None


def _is_python(program: str) -> bool:
    name = os.path.basename(program)
    return bool(_PYTHON.fullmatch(name)) or (
        bool(sys.executable) and os.path.realpath(program) == os.path.realpath(sys.executable)
    )


def plan(argv: Sequence[str], script_name: str | None = None) -> Command:
    """How ``pynba run`` runs ``argv``, named ``script_name`` (else as the docstring says)."""
    argv = tuple(argv)
    if not argv:
        raise ValueError("no command to run")
    python = _python_script(argv) if _is_python(argv[0]) else None
    if python is None:
        return Command(argv, script_name or argv[0])
    return Command(argv, script_name or python[2], python)


def _python_script(argv: tuple[str, ...]) -> PythonScript | None:
    """What ``python [options] script args`` runs, or None: no script (``-c``, ``-i``...)."""
    position = 1
    while position < len(argv):
        word = argv[position]
        if word == "--":  # the script comes next: "--" itself is no option to keep
            if position + 1 >= len(argv) or argv[position + 1] == "-":
                return None
            return argv[:position], "path", argv[position + 1], argv[position + 2 :]
        if not word.startswith("-") or word == "-":
            break
        if word.startswith("--"):  # --version, --help...: no script
            return None
        letters = word[1:]
        for index, letter in enumerate(letters):
            if letter in _NO_SCRIPT:
                return None
            if letter in _OPTIONS_WITH_VALUE:
                attached = letters[index + 1 :]
                value_at = position if attached else position + 1
                if value_at >= len(argv):
                    return None
                if letter == "m":  # the flags before it stay options: "-um mod"
                    flags = (f"-{letters[:index]}",) if index else ()
                    module = attached or argv[value_at]
                    return (*argv[:position], *flags), "module", module, argv[value_at + 1 :]
                position = value_at
                break
        position += 1
    if position >= len(argv) or argv[position] == "-":
        return None
    return argv[:position], "path", argv[position], argv[position + 1 :]


class _FromScript:
    """What a Python script sent back through the pipe, not sent on yet.

    Its timers, as totals per tag set, and its script name, request tags
    and peak memory as its last packet had them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[TagPairs, list[float]] = {}
        self.script_name: str | None = None
        self.tags: TagPairs = ()
        self.memory_peak: int | None = None

    def add(self, request: PinbaRequest) -> None:
        with self._lock:
            self.script_name = request.script_name
            self.tags = tuple(request.tags)
            self.memory_peak = request.memory_peak
            for timer in request.timers:
                total = self._totals.setdefault(timer.tags, [0.0, 0, 0.0, 0.0])
                total[0] += timer.value
                total[1] += timer.hit_count
                total[2] += timer.ru_utime
                total[3] += timer.ru_stime

    def take(self) -> list[TimerRecord]:
        """The totals as the encoder takes timers; they are not sent again."""
        with self._lock:
            totals, self._totals = self._totals, {}
        return [
            (tags, value, int(hits), utime, stime)
            for tags, (value, hits, utime, stime) in totals.items()
        ]


class _Channel:
    """Reads the script's packets from the pipe, in a thread of its own, into ``from_script``."""

    def __init__(self, fd: int, from_script: _FromScript, raise_on_fail: bool) -> None:
        self._file = os.fdopen(fd, "rb", buffering=0)
        self._from_script = from_script
        self._raise_on_fail = raise_on_fail
        self._thread = threading.Thread(target=self._read, name="pynba-run-channel", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        header = _run_child.FRAME_HEADER
        try:
            while True:
                head = self._read_exactly(header.size)
                if head is None:
                    return
                datagram = self._read_exactly(header.unpack(head)[0])
                if datagram is None:
                    return
                self._from_script.add(decode_request(datagram))
        except (OSError, DecodeError):
            internal_error("pynba run: cannot read the script's timers", self._raise_on_fail)
        finally:
            self._file.close()

    def _read_exactly(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = self._file.read(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def wait(self, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, for the last packet."""
        self._thread.join(timeout)


def _proc_usage(pid: int) -> tuple[float, float, int]:
    """(user CPU, system CPU, peak RSS in bytes) of a running process, from /proc; else zeros.

    The CPU counts the children it waited for; the peak is its own.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/status", "rb") as status:
            peak = next((line for line in status if line.startswith(b"VmHWM:")), b"VmHWM: 0 kB")
    except (OSError, IndexError):
        return 0.0, 0.0, 0
    ticks = os.sysconf("SC_CLK_TCK")
    # stat fields 14-17 (utime stime cutime cstime), counted from field 3 here
    utime, stime, cutime, cstime = (int(value) / ticks for value in fields[11:15])
    return utime + cutime, stime + cstime, int(peak.split()[1]) * 1024


class _Run:
    """One run's report: what it measures, and the packets that send it."""

    def __init__(self, settings: CollectorSettings, server_name: str, command: Command) -> None:
        self.settings = settings
        self.server_name = server_name
        self.command = command
        self.from_script = _FromScript()
        self.started = time.perf_counter()
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        # What the packets sent so far reported: (seconds, user CPU, system CPU).
        self.reported = (0.0, 0.0, 0.0)
        #: Where the script's timers come from, for a Python script.
        self.channel: _Channel | None = None

    def listen(self, fd: int) -> None:
        """Take the script's timers from the pipe ``fd`` (read end)."""
        self.channel = _Channel(fd, self.from_script, bool(self.settings.reporter.raise_on_fail))

    def flush(self, pid: int) -> None:
        """Send what the run measured since the last packet; it goes on."""
        utime, stime, peak = _proc_usage(pid)
        self._send(time.perf_counter() - self.started, utime, stime, peak, 0, ())

    def finish(self, returncode: int) -> None:
        """Send the run's last packet, for a command that ended with ``returncode``."""
        elapsed = time.perf_counter() - self.started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        utime = after.ru_utime - self.children_before.ru_utime
        stime = after.ru_stime - self.children_before.ru_stime
        tags: TagPairs = ()
        if returncode == 0:
            status = STATUS_OK
        elif returncode > 0:
            status, tags = STATUS_FAILED, (("exit_code", str(returncode)),)
        else:
            status, tags = STATUS_FAILED, (("signal", _signal_name(-returncode)),)
        if self.channel is not None:
            self.channel.wait(_CHANNEL_WAIT)
        reporter = self.settings.reporter
        reporter.wait_for_addresses(_LOOKUP_WAIT)
        # The script's own measure, when it is a Python script: the children's
        # ru_maxrss also counts pynba run's own memory (see _run_child.peak_memory).
        peak = self.from_script.memory_peak
        if peak is None:
            peak = after.ru_maxrss * _run_child.MAXRSS_UNIT
        self._send(elapsed, utime, stime, peak, status, tags)

    def _send(
        self,
        elapsed: float,
        utime: float,
        stime: float,
        memory_peak: int,
        status: int,
        outcome: TagPairs,
    ) -> None:
        seconds, user, system = self.reported
        self.reported = (max(elapsed, seconds), max(utime, user), max(stime, system))
        timers = self.from_script.take()
        script_name = self.from_script.script_name or self.command.script_name
        tags = dict(self.settings.tag_pairs or ())
        tags.update(self.from_script.tags)
        tags.update(outcome)
        settings = self.settings
        settings.reporter.report_request(
            RequestRecord(
                hostname=settings.hostname,
                server_name=self.server_name,
                script_name=script_name,
                request_count=1,
                document_size=0,
                memory_peak=memory_peak,
                request_time=max(elapsed - seconds, 0.0),
                ru_utime=max(utime - user, 0.0),
                ru_stime=max(stime - system, 0.0),
                status=status,
                memory_footprint=0,
                schema=None,
                tags=flatten_tags(list(tags.items())),
                timers=timers,
            )
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class _Forwarder:
    """Passes the signals that would stop ``pynba run`` on to the command."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []
        self._previous = {number: signal.signal(number, self._on_signal) for number in _FORWARDED}

    def started(self, pid: int) -> None:
        self.pid = pid
        for number in self.pending:
            self._forward(number)

    def _on_signal(self, number: int, frame: FrameType | None) -> None:
        if self.pid is None:
            self.pending.append(number)
        else:
            self._forward(number)

    def _forward(self, number: int) -> None:
        assert self.pid is not None
        if number in _FROM_TERMINAL and self._terminal_signals_reach_command():
            return
        try:
            os.kill(self.pid, number)
        except ProcessLookupError:
            pass  # it has exited: its exit is reported

    def _terminal_signals_reach_command(self) -> bool:
        """Whether the command shares ``pynba run``'s process group, the terminal's foreground."""
        assert self.pid is not None
        try:
            if os.getpgid(self.pid) != os.getpgrp():
                return False
        except OSError:
            return False
        for fd in (0, 1, 2):
            try:
                return os.tcgetpgrp(fd) == os.getpgrp()
            except OSError:
                continue
        return False

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _child_argv(command: Command, fd: int, flush_every: float | None) -> tuple[str, ...]:
    assert command.python is not None
    interpreter, kind, target, arguments = command.python
    home = os.path.dirname(os.path.dirname(os.path.abspath(_run_child.__file__)))
    return (
        *interpreter,
        "-c",
        _run_child.BOOTSTRAP,
        home,
        str(fd),
        repr(flush_every or 0.0),
        command.script_name,
        kind,
        target,
        *arguments,
    )


def _prepare(command: Command, server: str | None, tags: dict[str, str]) -> _Run | None:
    """The run's report, or None when it is not monitored (off, or not configured right)."""
    try:
        config = resolve(server)
        if not config.enabled or config.address is None:
            return None
        settings = config.collector_settings(tags)
        return _Run(settings, config.server_name or settings.hostname, command)
    except (TypeError, ValueError) as error:  # a bad option: said in a line, as pynba says errors
        if is_strict():
            raise
        print(f"pynba run: {error}; the command runs unmonitored", file=sys.stderr)
        return None
    except Exception:
        internal_error("pynba run: cannot monitor the command; it runs unmonitored", False)
        return None


def _wait(process: subprocess.Popen, report: _Run | None, flush_every: float | None) -> int:
    """The command's return code, once it has exited; flushing the report meanwhile."""
    if report is None or flush_every is None:
        return process.wait()
    # A thread of its own keeps time, so that waiting is one blocking call, not a poll.
    exited = threading.Event()

    def flush_until_exit() -> None:
        while not exited.wait(flush_every):
            try:
                report.flush(process.pid)
            except Exception:
                internal_error("pynba run: cannot flush the run's report", False)

    flusher = threading.Thread(target=flush_until_exit, name="pynba-run-flush", daemon=True)
    flusher.start()
    try:
        return process.wait()
    finally:
        exited.set()
        flusher.join()


def run_command(
    argv: Sequence[str],
    server: str | None = None,
    tags: dict[str, str] | None = None,
    script_name: str | None = None,
    flush_every: float | None = None,
) -> int:
    """Run ``argv`` monitored (see the module's docstring); its exit status as a shell gives it."""
    flush_every = _flush_interval(flush_every)
    command = plan(argv, script_name)
    report = _prepare(command, server, tags or {})
    channel_fd = None
    argv = command.argv
    if report is not None and command.python is not None:
        read_fd, channel_fd = os.pipe()
        report.listen(read_fd)
        argv = _child_argv(command, channel_fd, flush_every)
    forwarder = _Forwarder()
    try:
        try:
            process = subprocess.Popen(argv, pass_fds=() if channel_fd is None else (channel_fd,))
        except OSError as error:
            print(f"pynba: cannot run {command.argv[0]!r}: {error.strerror}", file=sys.stderr)
            return EXIT_NOT_FOUND if isinstance(error, FileNotFoundError) else EXIT_CANNOT_RUN
        finally:
            if channel_fd is not None:
                os.close(channel_fd)
        forwarder.started(process.pid)
        returncode = _wait(process, report, flush_every)
    finally:
        forwarder.restore()
    if report is not None:
        try:
            report.finish(returncode)
        except Exception:
            internal_error("pynba run: cannot report the run", False)
    return returncode if returncode >= 0 else 128 - returncode


def _flush_interval(seconds: Any) -> float | None:
    """``flush_every`` checked: None, or seconds > 0 (0 or less would flush in a busy loop)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"flush_every must be a number of seconds, not {type(seconds).__name__}")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"flush_every must be > 0 and finite, got {seconds!r}")
    return float(seconds)


def _tag(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals:
        raise argparse.ArgumentTypeError(f"a tag is NAME=VALUE, got {text!r}")
    try:
        return check_tag_name(name), value
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return seconds


def add_parser(commands: Any) -> None:
    """Add ``run`` to the ``pynba`` command's subcommands."""
    parser = commands.add_parser(
        "run",
        help="run a command or Python script as one monitored request",
        description="Run COMMAND and send one Pinba packet for the whole run. "
        "Exit status: the command's (128+N when signal N ended it).",
    )
    parser.add_argument(
        "--server", metavar="ADDR", help="the Pinba server(s) (default: PINBA_SERVER)"
    )
    parser.add_argument(
        "--tag",
        type=_tag,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a request tag (repeat for more)",
    )
    parser.add_argument(
        "--script-name",
        metavar="NAME",
        help="the script name (default: the script's path, the module or the command)",
    )
    parser.add_argument(
        "--flush-every",
        type=_seconds,
        metavar="SECONDS",
        help="also send a packet every SECONDS while the command runs",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- python script.py args")
    parser.set_defaults(run=_main)


def _main(args: argparse.Namespace) -> int:
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        print("pynba run: no command given (pynba run -- python script.py)", file=sys.stderr)
        return 2
    return run_command(
        argv,
        server=args.server,
        tags=dict(args.tag),
        script_name=args.script_name,
        flush_every=args.flush_every,
    )
