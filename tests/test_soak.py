"""Soak: many requests through the middleware in one process; memory must not grow.

A process of its own serves the requests (timers, request tags, varied
paths, now and then a failing one) and reports its resident memory after a
warm-up and at the end, and the size of the reporter's state. The default
suite runs 100,000 requests; the long run, 1,000,000:
``python -m pytest -m slow -s tests/test_soak.py`` (``PYNBA_SOAK_REQUESTS`` sets it).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHORT_REQUESTS = 100_000
LONG_REQUESTS = int(os.environ.get("PYNBA_SOAK_REQUESTS", "1000000"))
WARM_UP = 20_000

SOAK_SCRIPT = textwrap.dedent(
    """
    import gc, json, os, socket, sys

    from pynba import PynbaMiddleware, compiled_modules, pynba

    total, warm_up = int(sys.argv[1]), int(sys.argv[2])
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # never read: the kernel drops what overflows

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        pynba.set_tag("route", path[:6])
        with pynba.timer(group="db", op="select"):
            with pynba.timer(group="cache", key=path[-1]):
                pass
        if path.endswith("7"):
            raise ValueError("a failing request")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"Hello, world!\\n"]

    middleware = PynbaMiddleware(app, sink.getsockname())
    reporter = middleware.reporter
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "QUERY_STRING": "",
               "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "HTTP_HOST": "example.com",
               "wsgi.url_scheme": "http"}

    def rss():
        gc.collect()
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def state():
        return {"stats_keys": len(reporter.stats), "sockets": len(reporter._sockets),
                "log_kinds": len(reporter._limiter), "objects": len(gc.get_objects())}

    def serve(n):
        environ["PATH_INFO"] = f"/items/{n % 100}"
        try:
            result = middleware(environ, lambda *args: None)
        except ValueError:
            return
        b"".join(result)
        result.close()

    for n in range(warm_up):
        serve(n)
    before, state_before = rss(), state()
    for n in range(warm_up, total):
        serve(n)
    after, state_after = rss(), state()
    print(json.dumps({"rss_before": before, "rss_after": after, "state_before": state_before,
                      "state_after": state_after, "stats": reporter.stats,
                      "compiled": compiled_modules()}))
    """
)


def soak(requests):
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    environment.pop("PYNBA_STRICT", None)
    done = subprocess.run(
        [sys.executable, "-c", SOAK_SCRIPT, str(requests), str(WARM_UP)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check_soak(outcome, requests, capsys):
    growth = outcome["rss_after"] - outcome["rss_before"]
    with capsys.disabled():
        print(
            f"\nsoak: {requests} requests, RSS {outcome['rss_before'] / 2**20:.1f} MiB after "
            f"warm-up -> {outcome['rss_after'] / 2**20:.1f} MiB (growth {growth / 1024:.0f} KiB); "
            f"reporter state {outcome['state_before']} -> {outcome['state_after']}; "
            f"stats {outcome['stats']}; compiled modules {outcome['compiled']}"
        )
    assert growth < 1 << 20
    before, after = outcome["state_before"], outcome["state_after"]
    for key in ("stats_keys", "sockets", "log_kinds"):
        assert after[key] == before[key], (key, before, after)
    assert after["objects"] - before["objects"] < 100, (before, after)
    stats = outcome["stats"]
    assert stats["sent"] + stats["failed"] == requests  # one report per request


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm")
def test_short_soak(capsys):
    check_soak(soak(SHORT_REQUESTS), SHORT_REQUESTS, capsys)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm")
def test_long_soak(capsys, request):
    expression = request.config.getoption("markexpr") or ""
    if "slow" not in expression or "not slow" in expression:
        pytest.skip("a long run: select it with -m slow")
    check_soak(soak(LONG_REQUESTS), LONG_REQUESTS, capsys)
