"""src/examples/instrumented_app.py, a Flask application with no timer in its code.

It runs under gunicorn against a private PostgreSQL (``pg_server``), a
private redis-server (``cache_servers``) and an HTTP service on 127.0.0.1
(in this process); its packets carry the automatic timers of all three,
with their tags, each as long as the call it times.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cache_servers import free_port, start_redis
from packets import receive

for _module in ("flask", "gunicorn", "httpx", "psycopg", "redis"):
    pytest.importorskip(_module)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gunicorn needs POSIX")

# The postgres fixture: one private PostgreSQL for the session.
pytest_plugins = ["pg_server"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "src" / "examples"
#: The HTTP service takes this long to answer: its timer must be at least as long.
SERVICE_DELAY = 0.05


class RecommendationsHandler(BaseHTTPRequestHandler):
    """``GET /users/<id>/recommendations``: a JSON list, after SERVICE_DELAY."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the body, written apart, goes at once

    def do_GET(self):
        time.sleep(SERVICE_DELAY)
        body = json.dumps(["book", "pen"]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recommendations():
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecommendationsHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def redis_server(tmp_path):
    server = start_redis(str(tmp_path))
    yield server
    server.stop()


@pytest.fixture
def example(postgres, redis_server, recommendations, udp_listener):
    """The example under gunicorn (one worker), the servers given by the environment; its port."""
    environment = dict(os.environ)
    environment.update(
        DATABASE_URL=f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/"
        f"{postgres.database}",
        REDIS_URL=f"redis://{redis_server.host}:{redis_server.port}/0",
        RECOMMENDATIONS_URL=f"http://{recommendations}",
        PINBA_SERVER="{}:{}".format(*udp_listener.address),
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), environment.get("PYTHONPATH", "")]),
        # httpx goes straight to the service, whatever proxy the environment names.
        NO_PROXY="*",
        no_proxy="*",
    )
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--chdir", str(EXAMPLES), "--workers", "1"]
    command += ["--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    server = subprocess.Popen(
        [*command, "instrumented_app:create_app()"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_serving(server, port)
        yield port
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Traceback" not in output, output


def wait_until_serving(server, port, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    server.kill()
    pytest.fail(f"gunicorn did not serve the example:\n{server.communicate()[0]}")


def get(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_each_request_carries_the_automatic_timers(example, postgres, redis_server,
                                                    recommendations, udp_listener):  # fmt: skip
    cache = f"127.0.0.1:{redis_server.port}"
    expected = {"id": 2, "name": "grace", "recommendations": ["book", "pen"]}

    # A miss: Redis, then PostgreSQL, then Redis again; and the HTTP service.
    assert get(example, "/users/2") == (200, expected)
    packet = receive(udp_listener)
    assert packet.script_name == "/users/<int:user_id>"
    assert packet.status == 200
    assert packet.tags == [("app", "instrumented-example")]
    assert packet.timer_tags() == sorted(
        [
            (("group", "cache"), ("op", "get"), ("server", cache)),
            (("db", postgres.database), ("group", "db"), ("op", "select")),
            (("group", "cache"), ("op", "set"), ("server", cache)),
            (("group", "http"), ("host", recommendations), ("op", "get"), ("status", "2xx")),
        ]
    )
    assert all(timer.hit_count == 1 and timer.value > 0 for timer in packet.timers)
    assert packet.timer(group="http", op="get", host=recommendations, status="2xx").value >= (
        SERVICE_DELAY
    )
    assert sum(timer.value for timer in packet.timers) <= packet.request_time

    # A hit: Redis alone, and the HTTP service.
    assert get(example, "/users/2") == (200, expected)
    packet = receive(udp_listener)
    assert packet.timer_tags() == [
        (("group", "cache"), ("op", "get"), ("server", cache)),
        (("group", "http"), ("host", recommendations), ("op", "get"), ("status", "2xx")),
    ]
    assert packet.timer(group="cache", op="get", server=cache).hit_count == 1
    assert udp_listener.pending() == []


def test_the_example_has_no_timer_in_its_code():
    source = (EXAMPLES / "instrumented_app.py").read_text(encoding="utf-8")
    code = source.split('"""', 2)[2]  # after the docstring, which tells what is sent
    assert "timer" not in code
    assert 'app.config["PINBA_INSTRUMENT"]' in code
