"""Every example in src/examples runs, and its packets are what it says."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from packets import receive_all

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "src" / "examples"


def run_example(name, *args, env=None):
    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [environ.get("PYTHONPATH")])]
    )
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def address_of(listener):
    return f"{listener.host}:{listener.port}"


def test_every_example_is_tested():
    tested = {"simple.py", "middleware.py", "worker.py"}
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_simple(udp_listener):
    output = run_example("simple.py", address_of(udp_listener))
    assert "Hello from /users" in output
    packets = sorted(receive_all(udp_listener, 3), key=lambda p: p.script_name)
    assert [p.script_name for p in packets] == ["/", "/about", "/users"]
    for packet in packets:
        assert packet.status == 200
        assert packet.tags == [("app", "simple")]
        assert packet.timer_tags() == [(("group", "render"), ("template", "hello"))]
        assert packet.document_size == len(f"Hello from {packet.script_name}\n")
    assert udp_listener.pending() == []


def test_middleware(udp_listener):
    run_example("middleware.py", address_of(udp_listener))
    home, first, again, other, missing = receive_all(udp_listener, 5)
    assert home.script_name == "example:/" and home.timers == []
    assert [first.script_name, again.script_name, other.script_name] == ["example:/users/{id}"] * 3
    # A cache miss reads the database and fills the cache; a hit does neither.
    assert first.timer_tags() == sorted(
        [
            (("group", "cache"), ("op", "get")),
            (("group", "db"), ("op", "select")),
            (("group", "cache"), ("op", "set")),
        ]
    )
    assert again.timer_tags() == [(("group", "cache"), ("op", "get"))]
    assert len(other.timers) == 3
    assert first.timer(group="db", op="select").value >= 0.002
    assert (missing.script_name, missing.status) == ("example:unknown", 404)
    assert all(p.tags == [("app", "middleware-example")] for p in (home, first, missing))


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_worker(udp_listener, via):
    if via == "argument":
        output = run_example("worker.py", address_of(udp_listener), "4")
        count = 4
    else:
        output = run_example("worker.py", env={"PINBA_SERVER": address_of(udp_listener)})
        count = 3
    assert output.count("job") == count
    packets = receive_all(udp_listener, count)
    for packet in packets:
        assert packet.script_name == "thumbnail"
        assert sorted(packet.tags) == [("queue", "images"), ("worker", "images")]
        assert packet.timer_tags() == sorted(
            [(("group", "image"), ("op", "resize")), (("group", "queue"), ("op", "get"))]
        )
    assert udp_listener.pending() == []
