"""Every example in src/examples runs, and its packets are what it says.

The examples report to ``pynba.testing``'s listener (the ``pinba_listener``
fixture), and once to a real ``pynba listen`` process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pinba2_rules import assert_valid

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "src" / "examples"


def run_example(name, *args, env=None):
    return run_example_with(str(EXAMPLES / name), *args, env=env)


def run_example_with(*args, env=None):
    """``python ARGS``' output (the example must succeed)."""
    environ = dict(os.environ, **(env or {}))
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [environ.get("PYTHONPATH")])]
    )
    done = subprocess.run(
        [sys.executable, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def address_of(listener):
    return listener.server


def receive_all(listener, count):
    """The first ``count`` packets, each checked against the strictest rules."""
    packets = listener.wait_for(count)
    for received in listener.received:
        assert_valid(received.datagram)
    return packets


def timer_tags(packet):
    return sorted(tuple(sorted(timer.tags)) for timer in packet.timers)


def test_every_example_is_tested():
    tested = {"simple.py", "middleware.py", "worker.py", "batch_script.py"}
    tested |= {"asgi_app.py", "django_app.py", "flask_app.py", "pyramid_app.py"}
    tested |= {"gevent_server.py"}  # integration examples: tests/test_integration_examples.py
    tested |= {"celery_app.py"}  # needs a broker and a worker: tests/test_celery.py
    tested |= {"rq_worker.py"}  # needs a Redis server: tests/test_rq.py
    tested |= {"instrumented_app.py"}  # its servers: tests/test_instrumented_example.py
    tested |= {"_serve.py"}  # not an example: how the web examples serve, run by each of them
    assert {path.name for path in EXAMPLES.glob("*.py")} == tested


def test_simple(pinba_listener):
    output = run_example("simple.py", address_of(pinba_listener))
    assert "Hello from /users" in output
    packets = sorted(receive_all(pinba_listener, 3), key=lambda p: p.script_name)
    assert [p.script_name for p in packets] == ["/", "/about", "/users"]
    for packet in packets:
        assert packet.status == 200
        assert packet.tags == [("app", "simple")]
        assert timer_tags(packet) == [(("group", "render"), ("template", "hello"))]
        assert packet.document_size == len(f"Hello from {packet.script_name}\n")
    assert len(pinba_listener.received) == 3


def test_middleware(pinba_listener):
    run_example("middleware.py", address_of(pinba_listener))
    home, first, again, other, missing = receive_all(pinba_listener, 5)
    assert home.script_name == "example:/" and home.timers == []
    assert [first.script_name, again.script_name, other.script_name] == ["example:/users/{id}"] * 3
    # A cache miss reads the database and fills the cache; a hit does neither.
    assert timer_tags(first) == sorted(
        [
            (("group", "cache"), ("op", "get")),
            (("group", "db"), ("op", "select")),
            (("group", "cache"), ("op", "set")),
        ]
    )
    assert timer_tags(again) == [(("group", "cache"), ("op", "get"))]
    assert len(other.timers) == 3
    assert first.timer(group="db", op="select").value >= 0.002
    assert (missing.script_name, missing.status) == ("example:unknown", 404)
    assert all(p.tags == [("app", "middleware-example")] for p in (home, first, missing))


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_worker(pinba_listener, via):
    if via == "argument":
        output = run_example("worker.py", address_of(pinba_listener), "4")
        count = 4
    else:
        output = run_example("worker.py", env={"PINBA_SERVER": address_of(pinba_listener)})
        count = 3
    assert output.count("job") == count
    packets = receive_all(pinba_listener, count)
    for packet in packets:
        assert packet.script_name == "thumbnail"
        assert sorted(packet.tags) == [("queue", "images"), ("worker", "images")]
        assert timer_tags(packet) == sorted(
            [(("group", "image"), ("op", "resize")), (("group", "queue"), ("op", "get"))]
        )
    assert len(pinba_listener.received) == count


def test_batch_script_under_pynba_run(pinba_listener):
    script = str(EXAMPLES / "batch_script.py")
    pynba_run = ["-m", "pynba", "run", "--server", address_of(pinba_listener), "--tag", "env=dev"]
    output = run_example_with(*pynba_run, "--", sys.executable, script, "10")
    assert output == "processed 10 rows, total 90\n"
    [packet] = receive_all(pinba_listener, 1)
    assert (packet.script_name, packet.status, packet.tags) == (script, 200, [("env", "dev")])
    assert timer_tags(packet) == [
        (("group", "batch"), ("op", op)) for op in ("load", "transform", "write")
    ]
    assert packet.timer(group="batch", op="write").hit_count == 3


def test_an_example_against_pynba_listen():
    """What the examples' docstrings say: run one while ``pynba listen`` prints its packets."""
    import json
    import re

    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [environ.get("PYTHONPATH")])]
    )
    listen = subprocess.Popen(
        [sys.executable, "-m", "pynba", "listen", "--json", "--count", "3", "--port", "0"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = re.search(r":(\d+) ", listen.stderr.readline()).group(1)
        run_example("worker.py", f"127.0.0.1:{port}")
        out, err = listen.communicate(timeout=30)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.communicate()
    assert listen.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["request"]["script_name"] for r in records] == ["thumbnail"] * 3
    assert all(r["accepted"] and r["warnings"] == [] for r in records)
