"""The framework examples in src/examples run, and their packets are what they say."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from packets import receive_all

EXAMPLES = Path(__file__).resolve().parent.parent / "src" / "examples"


def run_example(name, *args):
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(EXAMPLES.parent), *filter(None, [environ.get("PYTHONPATH")])]
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


FRAMEWORK_EXAMPLES = [
    ("asgi_app.py", "starlette", "asgi-example", ["/", "/users/{id}", "/users/{id}"]),
    (
        "flask_app.py",
        "flask",
        "flask-example",
        ["/", "/users/<int:user_id>", "/users/<int:user_id>"],
    ),
    ("pyramid_app.py", "pyramid", "pyramid-example", ["/", "/users/{id}", "/users/{id}"]),
    (
        "django_app.py",
        "django",
        "django-example",
        ["/", "/users/<int:user_id>/", "/users/<int:user_id>/"],
    ),
]


@pytest.mark.parametrize(("example", "framework", "app", "script_names"), FRAMEWORK_EXAMPLES)
def test_framework_example(udp_listener, example, framework, app, script_names):
    pytest.importorskip(framework)
    output = run_example(example, address_of(udp_listener))
    assert output.splitlines()[-1].endswith("user7")
    packets = receive_all(udp_listener, 3)
    assert [p.script_name for p in packets] == script_names
    assert [p.status for p in packets] == [200, 200, 200]
    assert all(p.tags == [("app", app)] for p in packets)
    assert packets[0].timers == []
    for packet in packets[1:]:
        assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert udp_listener.pending() == []


def test_gevent_example_keeps_concurrent_requests_apart(udp_listener):
    pytest.importorskip("gevent")
    output = run_example("gevent_server.py", address_of(udp_listener), "10")
    assert output.split() == ["answers:", *map(str, range(10))]
    packets = receive_all(udp_listener, 10)
    numbers = set()
    for packet in packets:
        assert packet.script_name == "/work/{number}"
        (number,) = {v for timer in packet.timers for name, v in timer.tags if name == "request"}
        numbers.add(number)
        assert packet.timer_tags() == [
            (("group", "work"), ("request", number)),
            (("group", "work"), ("request", number), ("step", "second")),
        ]
        assert packet.timer(group="work", request=number).hit_count == 1
    assert numbers == {str(n) for n in range(10)}
    assert udp_listener.pending() == []
