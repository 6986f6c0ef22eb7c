"""pynba.testing: the listener users assert on, and its pytest fixture."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pynba import PynbaMiddleware, Reporter, ScriptMonitor, pynba
from pynba.testing import PinbaListener

ROOT = Path(__file__).resolve().parent.parent


def test_context_manager_collects_decoded_packets():
    with PinbaListener() as listener:
        host, port = listener.address
        assert host == "127.0.0.1" and port > 0
        assert listener.server == f"127.0.0.1:{port}"
        monitor = ScriptMonitor(listener.address, scriptname="/users/{id}", autostart=False)
        with monitor.job():
            with pynba.timer(group="db", op="select"):
                pass
        monitor.close()
        packets = listener.wait_for(1)
    assert packets[0].script_name == "/users/{id}"
    assert packets[0].timers[0].tags == (("group", "db"), ("op", "select"))
    assert listener.packets == packets


def test_server_of_an_ipv6_listener_is_what_a_reporter_takes():
    from test_reporter import ipv6_loopback_available

    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback")
    with PinbaListener("::1") as listener:
        host, port = listener.address
        assert host == "::1" and listener.server == f"[::1]:{port}"
        with Reporter(listener.server, raise_on_fail=True) as reporter:
            reporter.report(hostname="h", server_name="s", script_name="/v6")
        (packet,) = listener.wait_for(1)
    assert packet.script_name == "/v6"


def test_wait_for_says_what_did_not_arrive():
    with PinbaListener() as listener:
        with pytest.raises(AssertionError, match=r"0 of 2 Pinba packets arrived"):
            listener.wait_for(2, timeout=0.2)


def test_packets_a_server_would_drop_fail_the_wait():
    with PinbaListener() as listener:
        with Reporter(listener.address) as reporter:
            reporter.send(b"\x0a\x01h")  # hostname only
        with pytest.raises(AssertionError, match="missing required fields: server_name"):
            listener.wait_for(1)
        assert len(listener.rejected) == 1
        assert listener.wait_for(1, valid=False) == []
        listener.clear()
        assert listener.received == []


def test_fixture_hands_out_a_listener(pinba_listener):
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"hello"]

    monitored = PynbaMiddleware(app, pinba_listener.address)
    body = monitored({"PATH_INFO": "/users/42", "HTTP_HOST": "shop"}, lambda *a: None)
    list(body)
    body.close()
    (packet,) = pinba_listener.wait_for(1)
    assert (packet.script_name, packet.server_name, packet.document_size) == (
        "/users/42",
        "shop",
        5,
    )


def test_fixture_is_registered_by_the_entry_point(tmp_path):
    """A user's test suite gets the fixture from the installed package, with no conftest."""
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(metadata)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "PYNBA_NO_EXTENSION": "1"},
        timeout=120,
    )
    entry_points = (metadata / "pynba.egg-info" / "entry_points.txt").read_text()
    assert "[pytest11]\npynba = pynba.pytest_plugin" in entry_points
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_user.py").write_text(
        textwrap.dedent(
            """
            from pynba import ScriptMonitor

            def test_route(pinba_listener):
                monitor = ScriptMonitor(pinba_listener.address, scriptname="/users/{id}")
                monitor.send()
                monitor.close()
                assert pinba_listener.wait_for(1)[0].script_name == "/users/{id}"
            """
        )
    )
    environment = {
        **os.environ,
        # The generated metadata first: it is how an installed pynba is found.
        "PYTHONPATH": os.pathsep.join([str(metadata), str(ROOT / "src")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
