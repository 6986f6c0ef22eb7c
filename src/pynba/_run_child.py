"""The Python side of ``pynba run``: the script runs as one job, its packets go to ``pynba run``.

``pynba run -- python [options] script.py args`` starts
``python [options] -c BOOTSTRAP HOME FD EVERY NAME KIND TARGET args``:
BOOTSTRAP (below) imports this module from HOME, the directory pynba is
in, and calls ``run()``. The script runs as ``python script.py`` (KIND
``path``) or ``python -m module`` (KIND ``module``) would run it, inside a
``ScriptMonitor`` job named NAME whose packets are written to the pipe FD
instead of being sent. ``pynba run`` adds their timers (and the request
tags and script name the script set) to the run's report, which it measures
itself: time, CPU, memory, status. With EVERY > 0 the job is flushed every
EVERY seconds, in the main thread, between two of the script's statements.

When pynba cannot be imported there, BOOTSTRAP runs the script unmonitored.
"""

from __future__ import annotations

import _thread
import builtins
import importlib.machinery
import importlib.util
import io
import os
import resource
import runpy
import signal
import struct
import sys
import threading
import types
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import FrameType, TracebackType
from typing import Any

from .errors import internal_error
from .reporter import Reporter
from .script import ScriptMonitor
from .wire.encoder import encode

__all__ = ["BOOTSTRAP", "FRAME_HEADER", "MAXRSS_UNIT", "peak_memory", "run"]

#: The program given to ``python -c``: it must run on any Python 3 and never
#: fail the script: without pynba, the script runs unmonitored.
BOOTSTRAP = """\
import sys
def _pynba_run(home=sys.argv[1]):
    sys.path.append(home)
    try:
        from pynba._run_child import run
    except Exception:
        run = None
    finally:
        if sys.path and sys.path[-1] == home:
            del sys.path[-1]
    if run is not None:
        return run(sys.argv[2:])
    import os, runpy
    os.close(int(sys.argv[2]))
    kind, target = sys.argv[5], sys.argv[6]
    sys.argv = [target] + sys.argv[7:]
    if kind == "module":
        if sys.path and sys.path[0] == "":
            sys.path[0] = os.getcwd()
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        if sys.path and sys.path[0] == "":
            sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(os.path.abspath(target), run_name="__main__")
_pynba_run()
"""

#: Each packet on the pipe: its length (4 bytes, big-endian), then the datagram.
FRAME_HEADER = struct.Struct(">I")

# The signal the flusher raises in the main thread (never sent by the OS:
# see _thread.interrupt_main); one scripts leave alone.
_FLUSH_SIGNAL = getattr(signal, "SIGRTMAX", signal.SIGUSR2)
# How soon a flush put off (the script was inside pynba) is tried again, in seconds.
_FLUSH_RETRY = 0.05

_HOME = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: ru_maxrss is in KiB on Linux and the BSDs, in bytes on macOS.
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


def peak_memory() -> int:
    """The peak resident set size of this process and of the children it waited for, in bytes.

    On Linux, this process's own peak (``VmHWM``): its ``ru_maxrss`` also
    counts the memory of the process that started it (``pynba run``), kept
    across ``exec``.
    """
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * MAXRSS_UNIT
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return max(peak, int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_UNIT)


class _Pipe:
    """The write end of the pipe to ``pynba run``, used only while it is still ours.

    A script may close descriptors it did not open (a daemon closing them
    all) and the number may then be given to a file of its own: nothing is
    written to, nor closed under, a number that no longer names the pipe.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._identity = self._stat()
        if self._identity is not None:
            os.set_inheritable(fd, False)  # the script's own children do not hold it open
            # Nor do those it forks: pynba run would wait for a daemon's end to
            # see the pipe's, and a child ending the script would send its copy
            # of the job (the timers made before the fork) a second time.
            os.register_at_fork(after_in_child=self.close)

    def _stat(self) -> tuple[int, int] | None:
        try:
            found = os.fstat(self.fd)
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def _ours(self) -> bool:
        return self._identity is not None and self._stat() == self._identity

    def write(self, data: bytes) -> None:
        if not self._ours():
            return  # pynba run reports the run without what follows
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        if self._ours():
            os.close(self.fd)
        self._identity = None


class _ParentReporter(Reporter):
    """Hands each packet to ``pynba run`` through a pipe, instead of sending it."""

    def __init__(self, pipe: _Pipe) -> None:
        # A placeholder that needs no lookup: report_request() below sends nothing.
        super().__init__("127.0.0.1:9")
        self.pipe = pipe

    def report_request(self, request: Any) -> None:
        datagram = encode(*request)  # now: the timers are read as they stand
        self.pipe.write(FRAME_HEADER.pack(len(datagram)) + datagram)


class _Flusher:
    """Flushes a job every ``every`` seconds, in the main thread, outside pynba's code.

    A thread of its own keeps time; the flush itself runs in the main thread
    (which runs the job), raised there as a signal handler that no OS signal
    triggers. When the script was inside pynba (a timer starting, a flush of
    its own) the flush is put off a little.
    """

    def __init__(self, collector: Any, every: float) -> None:
        self._collector = collector
        self._every = every
        self._due = False
        self._stopped = threading.Event()
        self._previous = signal.signal(_FLUSH_SIGNAL, self._on_signal)
        self._thread = threading.Thread(target=self._keep_time, name="pynba-run-flush", daemon=True)
        self._thread.start()

    def _ours(self) -> bool:
        return signal.getsignal(_FLUSH_SIGNAL) == self._on_signal

    def _keep_time(self) -> None:
        while not self._stopped.wait(_FLUSH_RETRY if self._due else self._every):
            if not self._ours():
                return  # the script handles that signal itself: no more flushes
            self._due = True
            _thread.interrupt_main(_FLUSH_SIGNAL)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._due or _inside_pynba(frame):
            return
        self._due = False
        self._collector.memory_peak = peak_memory()
        self._collector.flush(only_stopped=True)  # a hit per timer run, not per flush

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        if self._ours():
            signal.signal(_FLUSH_SIGNAL, self._previous)


def _inside_pynba(frame: FrameType | None) -> bool:
    """Whether the main thread, stopped at ``frame``, is running pynba's own code."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith(_HOME) and code not in _SCRIPT_CALLERS:
            return True
        frame = frame.f_back
    return False


class _ScriptFramesOnly:
    """``sys.excepthook`` for the script's uncaught exception: shows the script's frames only.

    The frames of the bootstrap, of runpy and of pynba, which ran the script,
    are left out, as ``python script.py`` shows none.
    """

    def __init__(self, hook: Callable[..., Any]) -> None:
        self.hook = hook

    def __call__(
        self, kind: type[BaseException], error: BaseException, traceback: TracebackType | None
    ) -> Any:
        while traceback is not None and _runs_the_script(traceback.tb_frame.f_code.co_filename):
            traceback = traceback.tb_next
        # The default hook prints the exception's own __traceback__ when it has one.
        return self.hook(kind, error.with_traceback(traceback), traceback)


def _runs_the_script(filename: str) -> bool:
    """Whether code of ``filename`` is part of what runs the script, not the script."""
    return filename in (
        "<string>",
        "<frozen runpy>",
        runpy.__file__,
        _CONTEXTLIB,
    ) or filename.startswith(_HOME)


_CONTEXTLIB = sys.modules[nullcontext.__module__].__file__


def _exit_as_python_would(message: str, code: int) -> None:
    print(f"{sys.executable}: {message}", file=sys.stderr)
    raise SystemExit(code)


def _execute(kind: str, target: str) -> None:
    """Run the script or module as ``python`` runs it, as ``__main__``."""
    if kind == "module":
        if sys.path and sys.path[0] == "":  # "" is python -c's; -m puts the directory itself
            sys.path[0] = os.getcwd()
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError) as error:
            found, why = None, f"{type(error).__name__}: {error}"
        else:
            why = f"No module named {target}"
        if found is None:
            _exit_as_python_would(why, 1)
        runpy.run_module(target, run_name="__main__", alter_sys=True)
        return
    path = os.path.abspath(target)  # as python shows the script's frames, since 3.9
    if sys.path and sys.path[0] == "":
        sys.path[0] = os.path.dirname(path)
    try:
        with io.open_code(path) as file:
            source = file.read()
    except IsADirectoryError:  # a directory with a __main__.py: python runs it through runpy
        runpy.run_path(path, run_name="__main__")
        return
    except OSError as error:
        _exit_as_python_would(
            f"can't open file {path!r}: [Errno {error.errno}] {error.strerror}", 2
        )
    if zipfile.is_zipfile(path):  # so does a zip file
        runpy.run_path(path, run_name="__main__")
        return
    # As python runs a script: in a __main__ module of its own, sys.argv[0] as given.
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__dict__.update(__cached__=None, __builtins__=builtins)
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    sys.modules["__main__"] = main
    # dont_inherit: the script is compiled with its own __future__ imports, not this module's.
    exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)


def _monitor(pipe: _Pipe, name: str) -> ScriptMonitor | None:
    try:
        return ScriptMonitor(_ParentReporter(pipe), script_name=name, autostart=False)
    except Exception:
        internal_error("pynba run: cannot monitor the script; it runs unmonitored", False)
        return None


def run(argv: list[str]) -> None:
    """Run the script of ``argv`` (FD EVERY NAME KIND TARGET args) as one job."""
    fd, every, name, kind, target, *args = argv
    pipe = _Pipe(int(fd))
    sys.argv = [target, *args]
    monitor = _monitor(pipe, name)
    job: AbstractContextManager[Any] = nullcontext() if monitor is None else monitor.job()
    try:
        with job as collector:
            flusher = None
            if collector is not None and float(every) > 0:
                flusher = _Flusher(collector, float(every))
            try:
                _execute(kind, target)
            finally:
                if flusher is not None:
                    flusher.stop()
                if collector is not None:
                    collector.memory_peak = peak_memory()
    except SystemExit:
        raise
    except BaseException:
        sys.excepthook = _ScriptFramesOnly(sys.excepthook)
        raise
    finally:
        if monitor is not None:
            monitor.close()
        pipe.close()


#: The functions of this module on the main thread's stack while the script runs.
_SCRIPT_CALLERS = frozenset((run.__code__, _execute.__code__))
