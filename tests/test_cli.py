"""The command line: listen, top, demo and sample, run as a person runs them."""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import lz4.block
import pytest

from pinba_pb2 import Request
from pynba import Reporter

ROOT = Path(__file__).resolve().parent.parent


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def pynba_command(*args, **options):
    return subprocess.run(
        [sys.executable, "-m", "pynba", *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=options.pop("timeout", 60),
        **options,
    )


class Running:
    """``pynba listen``/``top`` started on a free port: ``port`` read from its first line."""

    def __init__(self, *args, host="127.0.0.1"):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pynba", *args, "--host", host, "--port", "0"],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.first_line = self.process.stderr.readline()
        shown = f"[{host}]" if ":" in host else host
        match = re.search(rf"UDP {re.escape(shown)}:(\d+) ", self.first_line)
        assert match, self.first_line + self.process.stderr.read()
        self.port = int(match.group(1))
        self.address = (host, self.port)

    def finish(self, timeout=30):
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def running():
    started = []

    def start(*args, **options):
        process = Running(*args, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def report_one(address, **fields):
    request = {
        "hostname": "web-1",
        "server_name": "shop",
        "script_name": "/users/{id}",
        "request_time": 0.25,
        "status": 200,
        "tags": {"app": "shop"},
        "timers": [({"group": "db", "op": "select"}, 0.125, 3, 0.0, 0.0)],
    }
    request.update(fields)
    with Reporter(address, raise_on_fail=True) as reporter:
        reporter.report(**request)


def send_raw(address, datagram):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, address)


def test_help_lists_the_commands():
    done = pynba_command("--help")
    assert done.returncode == 0
    for command in ("listen", "top", "demo", "sample"):
        assert command in done.stdout


@pytest.mark.parametrize("pure_python", ["1", ""])
def test_version_says_which_implementation_runs(pure_python):
    from conftest import compiled_encoder
    from pynba import __version__

    done = subprocess.run(
        [sys.executable, "-m", "pynba", "--version"],
        env={**environment(), "PYNBA_PURE_PYTHON": pure_python, "COLUMNS": "40"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()  # one line, however narrow the terminal
    if pure_python or compiled_encoder() is None:
        assert line == f"pynba {__version__} (pure Python)"
        return
    prefix = f"pynba {__version__} (compiled: "
    assert line.startswith(prefix) and line.endswith(")"), line
    running = line[len(prefix) : -1].split(", ")
    extensions = [
        path
        for suffix in EXTENSION_SUFFIXES
        for path in (ROOT / "src" / "pynba").rglob(f"*{suffix}")
    ]
    package = ROOT / "src" / "pynba"
    built = {str(path.relative_to(package)).split(".")[0].replace("/", ".") for path in extensions}
    # Every module built that the command loads runs compiled (_timer_fields loads on
    # first use, an integration's modules when it is turned on).
    assert "wire._encoder" in running and set(running) <= built
    loaded = {name for name in built if not name.startswith("instrumentation.")}
    assert loaded - {"_timer_fields"} <= set(running), line


def test_console_script_is_installed():
    script = shutil.which("pynba")
    if script is None:
        pytest.skip("pynba is not installed in this environment (pip install -e .)")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "listen" in done.stdout


def test_usage_errors_exit_with_2():
    done = pynba_command("listen", "--port", "70000")
    assert done.returncode == 2
    assert "port must be 0..65535" in done.stderr


def test_listen_prints_each_datagram_readably(running):
    listener = running("listen", "--count", "2")
    report_one(listener.address)
    send_raw(listener.address, b"\x0a\x01h")
    code, out, err = listener.finish()
    assert code == 0, err
    first, second = out.strip().split("\n\n")
    assert first.startswith("#1 ") and ": accepted" in first.splitlines()[0]
    assert "script_name      '/users/{id}'" in first
    assert "status           200" in first
    assert "request_time     250.000 ms" in first
    assert "tags             app=shop" in first
    assert "group=db op=select: 3 hit(s), 125.000 ms" in first
    assert "DROPPED by a Pinba server" in second.splitlines()[0]
    assert "drop: missing required fields: server_name" in second


def test_listen_json_lines(running):
    listener = running("listen", "--json", "--count", "3")
    report_one(listener.address, script_name="/a")
    nan = Request()
    nan.ParseFromString(_valid())
    nan.timer_value[0] = float("nan")
    send_raw(listener.address, nan.SerializeToString())
    send_raw(listener.address, b"\x0a\x05ab")
    code, out, err = listener.finish()
    assert code == 0, err
    first, second, third = (json.loads(line) for line in out.splitlines())
    assert first["accepted"] is True and first["drop_reasons"] == []
    assert first["request"]["script_name"] == "/a"
    assert first["request"]["tags"] == [["app", "shop"]]
    assert first["request"]["timers"][0]["hit_count"] == 3
    assert second["accepted"] is False
    assert second["drop_reasons"] == ["timer_value[0]: NaN float32 0000c07f"]
    assert second["request"]["timers"][0]["tags"] == [["group", "db"]]
    assert third["request"] is None and "truncated" in third["error"]


def _valid():
    return Request(
        hostname="h", server_name="s", script_name="/", request_count=1, document_size=0,
        memory_peak=0, request_time=0.1, ru_utime=0, ru_stime=0, timer_hit_count=[1],
        timer_value=[0.1], timer_tag_count=[1], timer_tag_name=[0], timer_tag_value=[1],
        dictionary=["group", "db"], status=200,
    ).SerializeToString()  # fmt: skip


def test_listen_on_ipv6_shows_addresses_bracketed(running):
    from test_reporter import ipv6_loopback_available

    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback")
    listener = running("listen", "--count", "1", host="::1")
    assert f"on UDP [::1]:{listener.port} (Ctrl-C to stop)" in listener.first_line
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        sender_port = sock.getsockname()[1]
        datagram = _valid()
        sock.sendto(datagram, listener.address)
    code, out, err = listener.finish()
    assert code == 0, err
    assert out.startswith(f"#1 {len(datagram)} bytes from [::1]:{sender_port}: accepted"), out


def test_listen_reads_lz4_framed_datagrams(running):
    listener = running("listen", "--json", "--count", "1")
    payload = _valid()
    body = lz4.block.compress(payload, store_size=False)
    send_raw(listener.address, struct.pack(">HH", 0x1001, len(payload)) + body)
    code, out, err = listener.finish()
    (line,) = out.splitlines()
    record = json.loads(line)
    assert record["framing"] == "v1+lz4" and record["accepted"] is True


def test_listen_stops_after_its_duration(running):
    code, out, err = running("listen", "--duration", "0.3").finish()
    assert (code, out) == (0, "")


def test_busy_port_says_which_and_how_to_choose_another():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        done = pynba_command("listen", "--port", str(port))
    assert done.returncode == 1
    assert f"UDP port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "--port" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["listen", "top"])
def test_ctrl_c_exits_cleanly(running, command):
    listener = running(command)
    report_one(listener.address)
    listener.process.send_signal(signal.SIGINT)
    code, out, err = listener.finish()
    assert code == 0
    assert "Traceback" not in err
    assert "stopped" in err


def test_top_aggregates_per_script_and_timer(running):
    top = running("top", "--count", "5")
    for seconds in (0.1, 0.2, 0.3, 0.4):
        report_one(top.address, request_time=seconds, ru_utime=0.01, ru_stime=0.01)
    report_one(top.address, script_name="/other", status=404, timers=[])
    code, out, err = top.finish()
    assert code == 0, err
    assert "\x1b[" not in out  # plain text when stdout is not a terminal
    lines = out.splitlines()
    assert lines[0].startswith("5 requests in ")
    users = next(line for line in lines if line.startswith("/users/{id}"))
    columns = users.split()
    # requests, req/s, mean, p50, p95, p99, cpu per request, statuses
    assert columns[1] == "4"
    assert columns[3:7] == ["250.00", "200.00", "400.00", "400.00"]
    assert columns[7] == "20.00" and columns[8] == "200:4"
    other = next(line for line in lines if line.startswith("/other"))
    assert other.split()[-1] == "404:1"
    timer = next(line for line in lines if line.startswith("group=db op=select"))
    assert timer.split()[-3:] == ["12", "500.00", "41.67"]


def test_demo_runs_the_example_application():
    done = pynba_command("demo", "--requests", "60", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "60 requests sent" in out and "60 packets received, 0 a Pinba server would drop" in out
    for script in ("/users/{id}", "/search", "/stream", "/"):
        assert re.search(rf"^{re.escape(script)} +\d+", out, re.MULTILINE), script
    assert "group=db op=select table=users" in out
    assert "group=render op=chunk" in out
    assert "Traceback" not in done.stderr


def test_demo_covers_the_error_route():
    from pynba.cli.demo import _paths

    assert "/error" in _paths(300)
    done = pynba_command("demo", "--requests", "300", "--duration", "30", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^/error +\d+ .* 500:\d+$", done.stdout, re.MULTILINE)


def test_sample_still_works():
    done = pynba_command("sample")
    assert done.returncode == 0, done.stderr
    assert ": accepted" in done.stdout
    assert "group=db op=select: 2 hit(s), 20.600 ms" in done.stdout


def test_commands_need_no_third_party_package():
    """What ``pip install .`` gives: no protobuf, no lz4 (the LZ4 frames are then explained)."""
    code = (
        "import sys\n"
        "for name in ('google', 'google.protobuf', 'lz4', 'lz4.block'):\n"
        "    sys.modules[name] = None  # importing them fails\n"
        "from pynba.cli import main\n"
        "from pynba.cli.listener import examine\n"
        "received = examine(bytes.fromhex('10010010') + b'x' * 8)\n"
        "print(received.unreadable, received.drop_reasons)\n"
        "sys.exit(main(['demo', '--requests', '40']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == (
        "compressed (LZ4): cannot read it without the lz4 package (pip install lz4) []"
    )
    assert "40 packets received, 0 a Pinba server would drop" in done.stdout


def test_ctrl_c_interrupts_the_demo_without_a_traceback():
    process = subprocess.Popen(
        [sys.executable, "-m", "pynba", "demo", "--requests", "100000"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "driving 100000 requests" in process.stdout.readline()
        time.sleep(0.5)  # so that the interrupt lands while requests are being sent
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130
    assert "Traceback" not in err
