"""Load: a monitored hello-world app under gunicorn, driven from another process.

One gunicorn server runs both a bare and a monitored hello-world app (``/bare``
and ``/``, the same process and workers); a load generator in a second process
drives each path in turn on loopback (phases bare, monitored, monitored, bare,
so that drift over the run cancels out) and counts the responses. A UDP
listener with a large receive buffer counts the monitored requests' packets;
the kernel's count of datagrams it dropped (``/proc/net/udp``) is reported
separately. A third path, the floor, is the bare app plus the system calls
every Pinba client makes per request (2 getrusage and one send of a
same-sized datagram). Prints req/s monitored, bare and floor, monitored/bare,
monitored/floor (the goal is >= 0.97) with each round's, the server's CPU
per request on each path (its master and workers, from /proc) with
floor/monitored, and the packet counts, for the sync and gthread workers.
On a machine whose cores the server shares with the load generator, the
CPU per request is the steadier figure: the rates depend on whom the
scheduler runs.

Then the same for PHP's C extension, when php-cli and php-pinba are installed:
PHP's built-in server (as many workers) answers the same hello world bare,
with its floor (the system calls php-pinba adds to a request: 3 getrusage
and one send, made from PHP), and monitored by php-pinba with one timer. Its
monitored/floor and CPU per request stand next to pynba's.

With ``--against SRC``, it serves pynba from this checkout and from SRC
(another checkout's ``src``) side by side instead, and prints what each
costs over the floor in its workers, and the difference (``compare``): to
measure a change of code or build under load.

Run: python benchmarks/load.py [--seconds 30] [--workers 2] [--worker-class sync gthread] [--no-php]
     python benchmarks/load.py --against ../other/src [--seconds 60] [--worker-class sync]
"""

from __future__ import annotations

import argparse
import bisect
import errno
import json
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "src"
HELLO_APP = textwrap.dedent(
    """
    import atexit
    import os
    import resource
    import socket
    from array import array
    from time import monotonic_ns, thread_time_ns

    from pynba import PynbaMiddleware, encode, pynba

    BODY = b"Hello, world!\\n"
    HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


    def hello(environ, start_response):
        start_response("200 OK", HEADERS)
        return [BODY]


    def timed_hello(environ, start_response):
        with pynba.timer(group="hello", op="render"):
            return hello(environ, start_response)


    monitored = PynbaMiddleware(timed_hello, os.environ["PYNBA_LOAD_SERVER"])

    # The floor: the bare app plus the system calls any Pinba client makes, two
    # getrusage (at the request's start and end) and one send of a packet of
    # the same size to a listener like the monitored one.
    host, port = os.environ["PYNBA_LOAD_FLOOR_SERVER"].rsplit(":", 1)
    FLOOR_ADDRESS = (host, int(port))
    FLOOR_DATAGRAM = encode(
        "h" * len(monitored.settings.hostname), "127.0.0.1", "/", 1, 14, 50 << 20, 0.001,
        0.001, 0.0, 200, 0, "http", (), [({"group": "hello", "op": "render"}, 1e-5, 1, 0, 0)],
    )
    floor_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    floor_socket.setblocking(False)


    RUSAGE_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


    def floor(environ, start_response):
        resource.getrusage(RUSAGE_WHO)
        response = hello(environ, start_response)
        resource.getrusage(RUSAGE_WHO)
        floor_socket.sendto(FLOOR_DATAGRAM, FLOOR_ADDRESS)
        return response


    # The CPU of each request's own part, from the app's call to the end of its
    # response's close() (the objects it made freed): gunicorn writes the
    # response in between, the same on every path. What a path adds to a
    # request, in the worker, between gunicorn's work on the requests around it.
    # Each request's end (monotonic) and CPU, in ns, by path; written at exit.
    MEASURED = {"bare": array("q"), "floor": array("q"), "monitored": array("q")}
    CPU_DIR = os.environ.get("PYNBA_LOAD_CPU_DIR")


    class Measured:
        __slots__ = ("response", "record", "start")

        def __init__(self, response, record, start):
            self.response = response
            self.record = record
            self.start = start

        def __iter__(self):
            return iter(self.response)

        def close(self):
            response, self.response = self.response, None
            close = getattr(response, "close", None)
            if close is not None:
                close()
            del response, close
            cpu = thread_time_ns() - self.start
            self.record.append(monotonic_ns())
            self.record.append(cpu)


    def write_measured():
        if CPU_DIR:
            for name, record in MEASURED.items():
                # Appended: a worker restarted under a pid used before adds to its file.
                with open(os.path.join(CPU_DIR, f"{os.getpid()}.{name}"), "ab") as out:
                    record.tofile(out)


    atexit.register(write_measured)
    if CPU_DIR:  # which pynba the workers run (load.py --against checks it)
        import pynba as package

        with open(os.path.join(CPU_DIR, "pynba"), "w") as out:
            out.write(package.__file__ + "\\n" + " ".join(package.compiled_modules()) + "\\n")
    ROUTES = {"/bare": ("bare", hello), "/floor": ("floor", floor)}


    def application(environ, start_response):
        start = thread_time_ns()
        name, app = ROUTES.get(environ.get("PATH_INFO"), ("monitored", monitored))
        return Measured(app(environ, start_response), MEASURED[name], start)
    """
)


# PHP's side: the same hello world, served by PHP's built-in server. Two servers
# run it, php-pinba enabled in one (it monitors every request: "/") and
# disabled in the other ("/bare" and "/floor").
PHP_ROUTER = r"""<?php
$body = "Hello, world!\n";
header("Content-Type: text/plain");
header("Content-Length: " . strlen($body));
switch ($_SERVER["REQUEST_URI"]) {
case "/floor":
    // The system calls php-pinba adds to a request (strace): 3 getrusage and
    // one send of its datagram, here from a socket kept by the worker, as the
    // extension keeps its own.
    getrusage();
    echo $body;
    getrusage();
    getrusage();
    $socket = pfsockopen("udp://127.0.0.1", (int) getenv("PYNBA_LOAD_FLOOR_PORT"));
    fwrite($socket, str_repeat("x", (int) getenv("PYNBA_LOAD_FLOOR_BYTES")));
    break;
case "/":
    $timer = pinba_timer_start(["group" => "hello", "op" => "render"]);
    echo $body;
    pinba_timer_stop($timer);
    break;
default:
    echo $body;
}
"""


def find_php() -> str | None:
    """The php binary, when it runs with the pinba extension loaded."""
    php = shutil.which("php")
    if php is None:
        return None
    try:
        probe = subprocess.run(
            [php, "-r", 'echo phpversion("pinba") ?: "";'],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return php if probe.returncode == 0 and probe.stdout.strip() else None


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(server: Gunicorn | PHPServer, name: str, timeout: float) -> None:
    """Wait until ``server`` accepts connections; stopped, and RuntimeError, if it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.stop()
            raise RuntimeError(f"{name} exited early:\n{server.output}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5):
                return
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{name} did not start:\n{server.output}")


class Gunicorn:
    """A gunicorn server on loopback running ``module:application`` from ``app_dir``."""

    def __init__(
        self,
        app_dir: Path | str,
        module: str,
        *,
        workers: int = 2,
        worker_class: str = "sync",
        threads: int = 4,
        preload: bool = True,
        config: Path | str | None = None,
        env: dict[str, str] | None = None,
        sources: Path | str = SOURCES,
    ) -> None:
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--chdir",
            str(app_dir),
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            "--log-level",
            "warning",
            "--graceful-timeout",
            "10",
        ]
        if worker_class == "gthread":
            command += ["--threads", str(threads)]
        if preload:
            command.append("--preload")
        if config is not None:
            command += ["--config", str(config)]
        command.append(f"{module}:application")
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(sources), str(app_dir), environment.get("PYTHONPATH", "")]
        )
        environment.update(env or {})
        self.process = subprocess.Popen(
            command,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its workers too can be killed at once (stop)
        )
        self.output = ""

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the server accepts connections."""
        wait_for_server(self, "gunicorn", timeout)

    def stop(self) -> str:
        """Stop gracefully (SIGTERM: workers finish and run their exit hooks); its output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            # A hung master, and workers that hold its output open: all of them.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                out, err = self.process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out, err = "", "(its output could not be read)"
        self.output = (out or "") + (err or "")
        return self.output

    def __enter__(self) -> Gunicorn:
        self.wait_ready()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PHPServer:
    """PHP's built-in server on loopback, ``workers`` processes, running ``router``."""

    def __init__(
        self,
        php: str,
        router: Path | str,
        *,
        pinba_enabled: bool,
        pinba_server: tuple[str, int],
        workers: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        command = [
            php,
            "-d",
            f"pinba.enabled={int(pinba_enabled)}",
            "-d",
            "pinba.server={}:{}".format(*pinba_server),
            "-q",  # no log line per request, as gunicorn logs none here
            "-S",
            f"127.0.0.1:{self.port}",
            str(router),
        ]
        environment = dict(os.environ, PHP_CLI_SERVER_WORKERS=str(workers), **(env or {}))
        self._log = tempfile.TemporaryFile("w+")
        # A session of its own: stopping it stops its workers too.
        self.process = subprocess.Popen(
            command,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        self.output = ""

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the server accepts connections."""
        wait_for_server(self, "php", timeout)

    def stop(self) -> str:
        """Stop the server and its workers; what it wrote to stderr."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if not self._log.closed:
            self._log.seek(0)
            self.output = self._log.read()
            self._log.close()
        return self.output


class PacketCounter:
    """A UDP socket with a large receive buffer and a thread counting what arrives.

    The thread drains the socket every ``interval`` seconds rather than
    waiting on it: a thread waiting on a socket is woken by each datagram,
    and the kernel does that in the sender's time. A Pinba server elsewhere
    puts no such cost on the sender; here it was 12 to 37 µs of a worker's
    CPU a request (perf), and it moved by more than the client's own cost
    from one run to the next. The buffer holds what arrives meanwhile (the
    interval is shorter where the kernel allows only a small one); the
    kernel's drops are reported.
    """

    def __init__(self, keep: int = 200, buffer_bytes: int = 32 << 20) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # beyond net.core.rmem_max when allowed to (CAP_NET_ADMIN)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, buffer_bytes)
        except (AttributeError, OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()
        self.receive_buffer = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.count = 0
        self.kept: list[bytes] = []
        self._keep = keep
        # Half the time the buffer takes to fill at 50,000 datagrams a second,
        # each charged 2 KB (a small one's share of the buffer), at most 20 ms.
        self._interval = min(0.02, self.receive_buffer / (2048 * 50_000) / 2)
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        recv = self.sock.recv
        while self._running:
            time.sleep(self._interval)
            while True:
                try:
                    datagram = recv(65536)
                except BlockingIOError:
                    break
                except OSError:
                    return
                self.count += 1
                if len(self.kept) < self._keep:
                    self.kept.append(datagram)

    def wait_for(self, expected: int, quiet: float = 1.0, timeout: float = 30.0) -> int:
        """The count once it reaches ``expected``, or stops growing for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last, last_change = self.count, time.monotonic()
        while self.count < expected and time.monotonic() < deadline:
            time.sleep(0.02)
            if self.count != last:
                last, last_change = self.count, time.monotonic()
            elif time.monotonic() - last_change > quiet:
                break
        return self.count

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped for this socket (full buffer), from /proc/net/udp."""
        return udp_drops(self.address[1])

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.sock.close()


def udp_drops(port: int) -> int | None:
    """The drops column of /proc/net/udp for the loopback socket bound to ``port``."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp") as table:
            for line in table:
                columns = line.split()
                if len(columns) > 12 and columns[1] == wanted:
                    return int(columns[-1])
    except OSError:
        pass
    return None


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its children; None off Linux.

    The children that exited count too (a worker restarted): the kernel
    adds their CPU to their parent's once it has waited for them.
    """
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    found = False
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone, or not readable
        # After the command: state, ppid, ... utime, stime, then cutime and
        # cstime (the children waited for) are the 12th to the 15th.
        if int(entry) == pid or int(fields[1]) == pid:
            total += sum(map(int, fields[11:15]))
            found = True
    return total / ticks if found else None


# -- the load generator (run in a process of its own) -------------------------


class _Connection:
    __slots__ = ("sock", "buffer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""


def drive(port: int, path: str, seconds: float, connections: int, keep_alive: bool) -> dict:
    """Send requests on ``connections`` parallel connections for ``seconds``; counts.

    Requests in flight when the time is up are completed and counted, so the
    server answered exactly ``ok + errors`` requests.
    """
    version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
    request = f"GET {path} {version}\r\nHost: 127.0.0.1\r\n\r\n".encode()
    selector = selectors.DefaultSelector()
    counts = {"ok": 0, "errors": 0, "connections": 0}

    def open_connection() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        counts["connections"] += 1
        connection = _Connection(sock)
        sock.send(request)
        selector.register(sock, selectors.EVENT_READ, connection)

    def drop(connection: _Connection) -> None:
        selector.unregister(connection.sock)
        connection.sock.close()

    start = time.perf_counter()
    deadline = start + seconds
    for _ in range(connections):
        open_connection()
    running = connections
    last = start
    while running:
        for key, _ in selector.select(timeout=5.0):
            connection: _Connection = key.data
            try:
                chunk = connection.sock.recv(65536)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue
                chunk = b""
            connection.buffer += chunk
            complete, closes = _response_complete(connection.buffer, eof=not chunk)
            if complete is None:
                continue  # wait for more bytes
            counts["ok" if complete else "errors"] += 1
            last = time.perf_counter()
            connection.buffer = b""
            if last >= deadline:
                drop(connection)
                running -= 1
            elif keep_alive and not closes and chunk:
                connection.sock.send(request)
            else:
                drop(connection)
                open_connection()
    counts["seconds"] = last - start
    counts["rate"] = counts["ok"] / counts["seconds"] if counts["seconds"] else 0.0
    return counts


def _response_complete(buffer: bytes, eof: bool) -> tuple[bool | None, bool]:
    """(True: a 200 response is complete / False: failed / None: incomplete, server closes)."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return (False if eof else None), True
    head = buffer[:head_end].decode("latin-1").lower()
    ok = head.startswith(("http/1.1 200", "http/1.0 200"))
    length = None
    closes = "connection: close" in head or head.startswith("http/1.0")
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip() == "content-length":
            length = int(value)
    body = len(buffer) - head_end - 4
    if length is not None and body >= length:
        return ok, closes
    if eof:
        return ok and length is None, True
    return None, closes


def run_driver(port: int, path: str, seconds: float, connections: int, keep_alive: bool) -> dict:
    """``drive`` in a second process; its counts."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "drive",
        "--port",
        str(port),
        "--path",
        path,
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
    ]
    if keep_alive:
        command.append("--keep-alive")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode:
        raise RuntimeError(f"the load generator failed:\n{done.stderr}")
    return json.loads(done.stdout)


# -- one measured run ------------------------------------------------------------


def hello_server(
    app_dir: Path,
    counter: PacketCounter,
    floor_counter: PacketCounter,
    worker_class: str,
    workers: int,
    threads: int,
    sources: Path | str = SOURCES,
) -> Gunicorn:
    """Gunicorn serving ``HELLO_APP`` from ``app_dir``, pynba from ``sources``.

    The monitored path reports to ``counter``, the floor's to ``floor_counter``;
    the workers write what they measured in ``app_dir``/cpu.
    """
    (app_dir / "cpu").mkdir(parents=True)
    (app_dir / "hello_load_app.py").write_text(HELLO_APP)
    return Gunicorn(
        app_dir,
        "hello_load_app",
        workers=workers,
        worker_class=worker_class,
        threads=threads,
        sources=sources,
        env={
            "PYNBA_LOAD_SERVER": "{}:{}".format(*counter.address),
            "PYNBA_LOAD_FLOOR_SERVER": "{}:{}".format(*floor_counter.address),
            "PYNBA_LOAD_CPU_DIR": str(app_dir / "cpu"),
            "PYNBA_STRICT": "0",
        },
    )


def measure(
    worker_class: str = "sync",
    seconds: float = 3.0,
    workers: int = 2,
    threads: int = 4,
    connections: int = 16,
    keep_alive: bool = False,
) -> dict:
    """Drive bare and monitored hello-world for ``seconds`` each; every figure measured."""
    counter = PacketCounter()
    floor_counter = PacketCounter(keep=0)
    with tempfile.TemporaryDirectory() as app_dir:
        cpu_dir = Path(app_dir, "cpu")
        server = hello_server(Path(app_dir), counter, floor_counter, worker_class, workers, threads)
        # Without keep-alive by default: on loopback, gunicorn's separate writes of
        # headers and body meet delayed ACKs on kept-alive connections, which
        # makes the rates of a run swing by tens of percent either way.
        keep_alive = keep_alive and worker_class != "sync"  # sync closes every connection
        try:
            server.wait_ready()
            served = server.port, server.process.pid
            targets = {
                "bare": (*served, "/bare"),
                "floor": (*served, "/floor"),
                "monitored": (*served, "/"),
            }
            figures = _drive(targets, counter, seconds, connections, keep_alive)
        finally:
            output = server.stop()
        figures["app_cpu"] = app_cpu(cpu_dir, figures)
    floor_counter.close()
    figures.update(
        worker_class=worker_class,
        workers=workers,
        threads=threads if worker_class == "gthread" else 1,
        connections=connections,
        keep_alive=keep_alive,
        client="pynba",
        floor_calls="2 getrusage + one send",
        server_output=output,
    )
    return figures


#: A phase of ``compare``: each path of each server is driven this long at a time (s).
COMPARE_PHASE = 1.0


def compare(
    other_sources: Path | str,
    worker_class: str = "sync",
    seconds: float = 60.0,
    workers: int = 2,
    threads: int = 4,
    connections: int = 16,
) -> dict:
    """pynba from these sources and from ``other_sources``, served side by side.

    Two gunicorn servers run the hello-world app, one importing pynba from
    this checkout's ``src``, the other from ``other_sources`` (the ``src``
    of another checkout, built as it should be measured). Both are up for
    the whole run, and take turns: in each round, each serves its floor and
    monitored paths for ``COMPARE_PHASE`` seconds at a time (floor,
    monitored, monitored, floor), the servers' order swapped every round.
    What each round gives is each server's monitored - floor, the app's part
    of a request measured in its workers (see ``app_cpu``), and this one's
    less the other's: what a change of code or build costs, with whatever
    the machine does then shared by both.
    """
    sides = {"this": Path(SOURCES), "other": Path(other_sources).resolve()}
    if not (sides["other"] / "pynba" / "__init__.py").is_file():
        raise ValueError(f"--against: {other_sources} has no pynba package (give a checkout's src)")
    counter = PacketCounter(keep=0)
    floor_counter = PacketCounter(keep=0)
    try:
        with tempfile.TemporaryDirectory() as root:
            servers = {}
            stopped = None
            try:
                for side, sources in sides.items():
                    servers[side] = hello_server(
                        Path(root, side),
                        counter,
                        floor_counter,
                        worker_class,
                        workers,
                        threads,
                        sources,
                    )
                for side, server in servers.items():
                    try:
                        server.wait_ready()
                    except RuntimeError as error:
                        raise RuntimeError(f"the {side} server ({sides[side]}): {error}") from error
                try:
                    run = _alternate(servers, seconds, connections)
                    received = counter.wait_for(run["expected"])
                except _ServerStopped as error:
                    stopped = error
            finally:
                outputs = {side: server.stop() for side, server in servers.items()}
            if stopped is not None:
                raise RuntimeError(
                    f"the {stopped.side} server ({sides[stopped.side]}) stopped answering:"
                    f" {stopped.__cause__}\nits output:\n{outputs[stopped.side][-3000:]}"
                ) from stopped.__cause__
            figures: dict = {
                "worker_class": worker_class,
                "workers": workers,
                "sides": {},
                "packets": (received, run["expected"]),
            }
            for side, sources in sides.items():
                phases = {
                    name: {"phase_starts": found} for name, found in run["starts"][side].items()
                }
                pynba_file, compiled = _pynba_of(Path(root, side, "cpu"))
                if not Path(pynba_file).is_relative_to(sources):
                    raise RuntimeError(
                        f"the {side} server ran {pynba_file}, not pynba from {sources}"
                    )
                figures["sides"][side] = {
                    "sources": str(sources),
                    "pynba": pynba_file,
                    "compiled": compiled,
                    "served": run["served"][side],
                    "app_cpu": app_cpu(Path(root, side, "cpu"), phases),
                    "server_output": outputs[side],
                }
    finally:
        counter.close()
        floor_counter.close()
    this, other = (
        (figures["sides"][side]["app_cpu"] or {}).get("monitored_over_floor_rounds", [])
        for side in sides
    )
    # Only when each round has both sides' figure (app_cpu leaves out a round without one).
    rounds_found = len(this) == len(other) == run["rounds"]
    figures["this_less_other_rounds"] = (
        [a - b for a, b in zip(this, other, strict=True)] if rounds_found else []
    )
    return figures


class _ServerStopped(Exception):
    """A server of ``compare`` stopped answering (the driver's error is the cause)."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side


def _alternate(servers: dict[str, Gunicorn], seconds: float, connections: int) -> dict:
    """Drive ``compare``'s servers in turn: each phase's start, each side's counts, by path.

    Also the packets the monitored requests sent (``expected``), the warm-up's
    included, and the number of rounds.
    """
    expected = 0
    side = "this"
    try:
        # Not counted: workers booted, code paths hot (and a record of each
        # path written, as app_cpu wants).
        for side in servers:
            for path in ("/bare", "/floor", "/"):
                counts = run_driver(servers[side].port, path, 0.3, connections, False)
                expected += counts["ok"] + counts["errors"] if path == "/" else 0
        starts = {name: {"bare": [], "floor": [], "monitored": []} for name in servers}
        served = {name: {"floor": 0, "monitored": 0, "errors": 0} for name in servers}
        rounds = max(1, round(seconds / (8 * COMPARE_PHASE)))
        for r in range(rounds):
            for side in ("this", "other") if r % 2 == 0 else ("other", "this"):
                for name in ("floor", "monitored", "monitored", "floor"):
                    starts[side][name].append(time.monotonic_ns())
                    path = "/floor" if name == "floor" else "/"
                    counts = run_driver(servers[side].port, path, COMPARE_PHASE, connections, False)
                    served[side][name] += counts["ok"]
                    served[side]["errors"] += counts["errors"]
                    if name == "monitored":  # each sends its packet to the counter
                        expected += counts["ok"] + counts["errors"]
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        raise _ServerStopped(side) from error
    return {"starts": starts, "served": served, "expected": expected, "rounds": rounds}


def _pynba_of(cpu_dir: Path) -> tuple[str, str]:
    """Where the workers' pynba came from, and its compiled modules (as the app wrote them)."""
    try:
        pynba_file, compiled = (cpu_dir / "pynba").read_text().splitlines()
    except (OSError, ValueError):
        return "(not written)", "?"
    return pynba_file, compiled or "-"


def describe_comparison(figures: dict) -> str:
    """``compare``'s figures, in a few lines."""
    lines = [
        f"side by side, gunicorn {figures['worker_class']} x{figures['workers']} each; "
        "the app's part of a request in the worker, µs of CPU (its response's writes included):"
    ]
    for side, found in figures["sides"].items():
        cpu = found["app_cpu"]
        if cpu is None or None in (cpu["mean"]["floor"], cpu["mean"]["monitored"]):
            lines.append(f"  {side} ({found['sources']}): no figures")
            continue
        lines.append(
            f"  {side} ({found['sources']}; compiled: {found['compiled']}): "
            f"floor {cpu['mean']['floor']:.1f}, monitored {cpu['mean']['monitored']:.1f}, "
            f"monitored - floor {_mean_and_error(cpu['monitored_over_floor_rounds'])}"
        )
    differences = figures["this_less_other_rounds"]
    lines.append(
        f"  this - other, monitored - floor: {_mean_and_error(differences)}"
        f" ({len(differences)} rounds); packets {figures['packets'][0]}/{figures['packets'][1]}"
    )
    return "\n".join(lines)


def _mean_and_error(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) / len(values) ** 0.5:.2f}"


def measure_php(php: str, seconds: float = 3.0, workers: int = 2, connections: int = 16) -> dict:
    """``measure`` for PHP's C extension: PHP's built-in server, bare, floor and monitored."""
    counter = PacketCounter()
    floor_counter = PacketCounter(keep=0)
    servers: list[PHPServer] = []
    with tempfile.TemporaryDirectory() as app_dir:
        router = Path(app_dir, "hello_load.php")
        router.write_text(PHP_ROUTER)
        try:
            monitored = PHPServer(
                php, router, pinba_enabled=True, pinba_server=counter.address, workers=workers
            )
            servers.append(monitored)
            monitored.wait_ready()
            # The floor sends a datagram the size of php-pinba's own.
            warm = run_driver(monitored.port, "/", 0.3, connections, False)
            counter.wait_for(warm["ok"] + warm["errors"], quiet=0.5)
            if not counter.kept:
                raise RuntimeError("php-pinba sent nothing")
            bare = PHPServer(
                php,
                router,
                pinba_enabled=False,
                pinba_server=counter.address,
                workers=workers,
                env={
                    "PYNBA_LOAD_FLOOR_PORT": str(floor_counter.address[1]),
                    "PYNBA_LOAD_FLOOR_BYTES": str(len(counter.kept[0])),
                },
            )
            servers.append(bare)
            bare.wait_ready()
            targets = {
                "bare": (bare.port, bare.process.pid, "/bare"),
                "floor": (bare.port, bare.process.pid, "/floor"),
                "monitored": (monitored.port, monitored.process.pid, "/"),
            }
            figures = _drive(targets, counter, seconds, connections, False)
        finally:
            output = "".join(server.stop() for server in servers)
    floor_counter.close()
    figures.update(
        worker_class="php -S",
        workers=workers,
        threads=1,
        connections=connections,
        keep_alive=False,
        client="php-pinba",
        floor_calls="3 getrusage + one send",
        server_output=output,
    )
    return figures


def _drive(
    targets: dict[str, tuple[int, int, str]],
    counter: PacketCounter,
    seconds: float,
    connections: int,
    keep_alive: bool,
) -> dict:
    """Drive each of bare, floor and monitored, ``targets[name]`` = (port, server pid, path)."""
    # Warm up every path (workers booted, code paths hot); not counted.
    for name, (port, _, path) in targets.items():
        before = counter.count
        warm = run_driver(port, path, 0.3, connections, keep_alive)
        if name == "monitored":  # the only path that sends to ``counter``
            counter.wait_for(before + warm["ok"] + warm["errors"], quiet=0.5)
    counted_before = counter.count
    phases: dict[str, list[dict]] = {"bare": [], "floor": [], "monitored": []}
    rounds = max(1, round(seconds / 10))  # phases of about 5 s in long runs
    for name in ("bare", "floor", "monitored", "monitored", "floor", "bare") * rounds:
        port, pid, path = targets[name]
        phase = seconds / (2 * rounds)
        cpu_before = tree_cpu_seconds(pid)
        counts = {"started": time.monotonic_ns()}
        counts.update(run_driver(port, path, phase, connections, keep_alive))
        cpu_after = tree_cpu_seconds(pid)
        if cpu_before is not None and cpu_after is not None:
            counts["server_cpu"] = cpu_after - cpu_before
        phases[name].append(counts)
    monitored_requests = sum(p["ok"] + p["errors"] for p in phases["monitored"])
    received = counter.wait_for(counted_before + monitored_requests) - counted_before
    drops = counter.kernel_drops()
    kept = list(counter.kept)
    counter.close()
    # Each round's monitored/floor, from its own phases: how much the rounds agree.
    round_ratios = []
    for r in range(rounds):
        floor_rate = _rate(phases["floor"][2 * r : 2 * r + 2])
        if floor_rate:
            round_ratios.append(_rate(phases["monitored"][2 * r : 2 * r + 2]) / floor_rate)
    figures = {}
    for name, runs in phases.items():
        ok = sum(p["ok"] for p in runs)
        cpu = [p["server_cpu"] for p in runs if "server_cpu" in p]
        figures[name] = {
            "requests": ok,
            "errors": sum(p["errors"] for p in runs),
            "seconds": round(sum(p["seconds"] for p in runs), 3),
            "rate": _rate(runs),
            # µs of the server's CPU (master and workers) per request answered
            "cpu_per_request": (sum(cpu) / ok * 1e6 if ok and len(cpu) == len(runs) else None),
            "phase_starts": [p["started"] for p in runs],
        }
    return {
        "floor": figures["floor"],
        "bare": figures["bare"],
        "monitored": figures["monitored"],
        "ratio": (
            figures["monitored"]["rate"] / figures["bare"]["rate"]
            if figures["bare"]["rate"]
            else 0.0
        ),
        "ratio_to_floor": (
            figures["monitored"]["rate"] / figures["floor"]["rate"]
            if figures["floor"]["rate"]
            else 0.0
        ),
        "rounds_to_floor": round_ratios,
        "cpu_floor_to_monitored": (
            figures["floor"]["cpu_per_request"] / figures["monitored"]["cpu_per_request"]
            if figures["floor"]["cpu_per_request"] and figures["monitored"]["cpu_per_request"]
            else None
        ),
        "monitored_requests": monitored_requests,
        "packets_received": received,
        "kernel_drops": drops,
        "receive_buffer": counter.receive_buffer,
        "sample_packets": kept,
    }


def app_cpu(cpu_dir: Path, figures: dict) -> dict | None:
    """The app's part of a request in the worker, µs of CPU: each path's mean, and by round.

    Read from what the workers wrote at exit (``PYNBA_LOAD_CPU_DIR``): each
    request's end and CPU. A request counts in the last phase of its path
    that began before its end: a worker records a request once the driver
    has its response, perhaps after the phase's end; the warm-up's requests
    end before any phase begins. Gives each path's ``mean`` and
    ``requests``, and each round's ``monitored - floor`` (the mean of the
    requests of its two monitored phases less that of its two floor
    phases'). None if the workers wrote nothing.
    """
    records: dict[str, list[tuple[int, int]]] = {"bare": [], "floor": [], "monitored": []}
    for name, pairs in records.items():
        for path in cpu_dir.glob(f"*.{name}"):
            data = path.read_bytes()
            values = array("q")
            values.frombytes(data[: len(data) // 16 * 16])  # whole (end, cpu) pairs
            pairs.extend(zip(values[0::2], values[1::2], strict=True))
    if not all(records.values()):
        return None

    def phases(name: str) -> list[list[int]]:
        starts = figures[name]["phase_starts"]
        found: list[list[int]] = [[] for _ in starts]
        for at, cpu in records[name]:
            phase = bisect.bisect_right(starts, at) - 1
            if phase >= 0:
                found[phase].append(cpu)
        return found

    def mean(runs: list[list[int]]) -> float | None:
        count = sum(len(run) for run in runs)
        return sum(sum(run) for run in runs) / count / 1e3 if count else None

    by_phase = {name: phases(name) for name in records}
    result: dict = {
        "mean": {name: mean(runs) for name, runs in by_phase.items()},
        "requests": {name: sum(len(run) for run in runs) for name, runs in by_phase.items()},
    }
    rounds = []
    for r in range(len(by_phase["floor"]) // 2):
        monitored = mean(by_phase["monitored"][2 * r : 2 * r + 2])
        floor = mean(by_phase["floor"][2 * r : 2 * r + 2])
        if monitored is not None and floor is not None:
            rounds.append(monitored - floor)
    result["monitored_over_floor_rounds"] = rounds
    return result


def _rate(runs: list[dict]) -> float:
    """Requests per second over ``runs`` (phases of the load generator)."""
    elapsed = sum(p["seconds"] for p in runs)
    return sum(p["ok"] for p in runs) / elapsed if elapsed else 0.0


def describe(figures: dict) -> str:
    bare, monitored = figures["bare"], figures["monitored"]
    # pynba's goal; PHP's extension is measured to stand next to it
    goal = "goal >= 0.97; " if figures["client"] == "pynba" else ""
    return (
        f"{figures['client']}, {figures['worker_class']} x{figures['workers']}"
        f" (threads {figures['threads']}, {figures['connections']} connections): "
        f"bare {bare['rate']:.0f} req/s ({bare['requests']} in {bare['seconds']:.1f} s), "
        f"monitored {monitored['rate']:.0f} req/s "
        f"({monitored['requests']} in {monitored['seconds']:.1f} s), "
        f"monitored/bare {figures['ratio']:.3f}; "
        f"floor (bare + {figures['floor_calls']}) {figures['floor']['rate']:.0f} req/s, "
        f"monitored/floor {figures['ratio_to_floor']:.3f} ({goal}each round: "
        f"{' '.join(f'{ratio:.3f}' for ratio in figures['rounds_to_floor'])}); "
        f"{_describe_cpu(figures)}"
        f"packets {figures['packets_received']}/{figures['monitored_requests']}, "
        f"kernel drops {figures['kernel_drops']}, errors "
        f"{bare['errors'] + monitored['errors']}"
    )


def _describe_cpu(figures: dict) -> str:
    if figures["cpu_floor_to_monitored"] is None:
        return ""
    per_request = ", ".join(
        f"{name} {figures[name]['cpu_per_request']:.0f}" for name in ("bare", "floor", "monitored")
    )
    return (
        f"server CPU per request (µs) {per_request}, "
        f"floor/monitored {figures['cpu_floor_to_monitored']:.3f}; "
        f"{_describe_app_cpu(figures)}"
    )


def _describe_app_cpu(figures: dict) -> str:
    found = figures.get("app_cpu")
    if not found or None in found["mean"].values():
        return ""
    mean = found["mean"]
    extra = mean["monitored"] - mean["floor"]
    text = (
        f"in the worker, the app's part of a request (its response's writes included; "
        f"µs of CPU) bare {mean['bare']:.1f}, "
        f"floor {mean['floor']:.1f}, monitored {mean['monitored']:.1f}: monitored - floor "
        f"{extra:.1f} (each round: "
        f"{' '.join(f'{r:.1f}' for r in found['monitored_over_floor_rounds'])})"
    )
    floor_request = figures["floor"]["cpu_per_request"]
    if floor_request:
        # The server's CPU per floor request with pynba's extra on top: the
        # throughput monitored/floor a CPU-bound server would have.
        text += f", floor/(floor + that) {floor_request / (floor_request + extra):.3f}"
    return text + "; "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    drive_parser = sub.add_parser("drive", help="the load generator (used internally)")
    drive_parser.add_argument("--port", type=int, required=True)
    drive_parser.add_argument("--path", default="/")
    drive_parser.add_argument("--seconds", type=float, default=3.0)
    drive_parser.add_argument("--connections", type=int, default=16)
    drive_parser.add_argument("--keep-alive", action="store_true")
    parser.add_argument("--seconds", type=float, default=30.0, help="load per app (default 30)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--worker-class", nargs="+", default=["sync", "gthread"])
    parser.add_argument("--keep-alive", action="store_true", help="gthread: keep connections")
    parser.add_argument(
        "--php", default=None, help="php binary with php-pinba (default: found on PATH)"
    )
    parser.add_argument("--no-php", action="store_true", help="leave PHP's C extension out")
    parser.add_argument(
        "--against",
        metavar="SRC",
        help="serve pynba from SRC (another checkout's src) side by side with this one and"
        " compare their monitored - floor (see compare); nothing else is run",
    )
    args = parser.parse_args(argv)
    if args.command == "drive":
        counts = drive(args.port, args.path, args.seconds, args.connections, args.keep_alive)
        print(json.dumps(counts))
        return 0
    if args.against:
        for worker_class in args.worker_class:
            print(
                describe_comparison(
                    compare(
                        args.against,
                        worker_class,
                        args.seconds,
                        args.workers,
                        args.threads,
                        args.connections,
                    )
                )
            )
        return 0
    from pynba import ENCODER, compiled_modules

    print(f"pynba encoder: {ENCODER}; compiled modules: {', '.join(compiled_modules()) or '-'}")
    for worker_class in args.worker_class:
        figures = measure(
            worker_class,
            args.seconds,
            args.workers,
            args.threads,
            args.connections,
            args.keep_alive,
        )
        print(describe(figures))
    if args.no_php:
        return 0
    php = args.php or find_php()
    if php is None:
        print("PHP's C extension: left out, php-cli with php-pinba is not installed")
        return 0
    print(describe(measure_php(php, args.seconds, args.workers, args.connections)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
