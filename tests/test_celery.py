"""pynba.celery with real ``celery worker`` processes, a private Redis broker, real UDP.

One worker per pool (threads, prefork, gevent) for the module, each
reporting to its own listener; the tasks are in ``celery_tasks.py``.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from cache_servers import start_redis
from conftest import IN_CI, UDPListener
from packets import Packet

if IN_CI:  # CI must run these: a missing package fails them
    import celery
    import redis
else:
    celery = pytest.importorskip("celery", reason="pip install celery (the test extra)")
    redis = pytest.importorskip("redis", reason="pip install redis (the test extra)")

import pynba.celery  # noqa: E402 - after the skip when Celery is missing
from pynba.celery import (  # noqa: E402
    STATUS_FAILURE,
    STATUS_RETRY,
    STATUS_REVOKED,
    STATUS_SUCCESS,
    STATUS_TIME_LIMIT,
    STATUS_WORKER_LOST,
)

TESTS = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(TESTS), "src", "examples")
SOURCES = os.path.join(os.path.dirname(TESTS), "src")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 1.0
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    server = start_redis(str(tmp_path_factory.mktemp("redis")))
    yield f"redis://{server.address}/0"
    server.stop()


@pytest.fixture(scope="module")
def sender(broker):
    """A Celery app that sends the tasks by name (it runs none)."""
    app = celery.Celery("sender", broker=broker)
    app.conf.broker_connection_retry_on_startup = True
    yield app
    app.close()


class Worker:
    """A ``celery worker`` subprocess on one queue, reporting to its own UDP listener."""

    def __init__(self, pool, broker, tmp_path, concurrency, setting=False, app="celery_tasks"):
        self.queue = pool if app == "celery_tasks" else "celery"
        self.name = f"{pool}@{HOST}"
        self.listener = UDPListener()
        self.log_path = tmp_path / f"{pool}.log"
        env = dict(os.environ, PYNBA_TEST_BROKER=broker, CELERY_BROKER_URL=broker)
        # pynba from this tree, whatever the test run's own path (cwd is TESTS).
        paths = [TESTS, EXAMPLES, SOURCES, env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        address = f"{self.listener.host}:{self.listener.port}"
        if setting:  # read from the app's configuration rather than the environment
            env["PYNBA_TEST_PINBA_SETTING"] = address
            env.pop("PINBA_SERVER", None)
        else:
            env["PINBA_SERVER"] = address
        command = [sys.executable, "-m", "celery", "-A", app, "worker"]
        command += ["-P", pool, "-c", str(concurrency), "-Q", self.queue, "-n", f"{pool}@%h"]
        command += ["-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=TESTS, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._wait_until_ready()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def _wait_until_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if f"{self.name} ready." in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"the {self.queue} worker did not start:\n{self.log()}", pytrace=False)

    def packets(self, count, timeout=20.0):
        """The next ``count`` packets, checked against pinba2's rules and decoded."""
        try:
            return [Packet(self.listener.receive(timeout)) for _ in range(count)]
        except TimeoutError:
            pytest.fail(f"fewer than {count} packets; worker log:\n{self.log()}", pytrace=False)

    def stop(self):
        if self.process.poll() is None:
            # Cold shutdown: no task is left to wait for. A gevent worker
            # takes seconds even so: killed then (its children die with it).
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.listener.close()

    def assert_no_errors(self):
        """Nothing pynba did failed (strict mode raises it into Celery, which logs it)."""
        log = self.log()
        assert "Signal handler" not in log and "pynba:" not in log, log


def start_worker(request, pool, broker, tmp_path_factory, concurrency, **options):
    worker = Worker(pool, broker, tmp_path_factory.mktemp(pool), concurrency, **options)
    request.addfinalizer(worker.stop)
    return worker


@pytest.fixture(scope="module")
def threads_worker(request, broker, tmp_path_factory):
    return start_worker(request, "threads", broker, tmp_path_factory, 8)


@pytest.fixture(scope="module")
def prefork_worker(request, broker, tmp_path_factory):
    return start_worker(request, "prefork", broker, tmp_path_factory, 2, setting=True)


@pytest.fixture(scope="module")
def gevent_worker(request, broker, tmp_path_factory):
    pytest.importorskip("gevent")
    return start_worker(request, "gevent", broker, tmp_path_factory, 20)


def send(sender, worker, name, *args, **options):
    return sender.send_task(name, args, queue=worker.queue, **options)


def store(broker):
    return redis.Redis.from_url(broker)


def wait_for_key(broker, key, worker):
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if store(broker).get(key) is not None:
            return
        time.sleep(0.02)
    pytest.fail(f"task {key} did not start:\n{worker.log()}", pytrace=False)


def by_name(packets):
    return sorted(packets, key=lambda packet: (packet.script_name, packet.status))


# -- outcomes -----------------------------------------------------------------


def test_each_task_is_one_packet_named_after_the_task_with_its_status(sender, threads_worker):
    send(sender, threads_worker, "add", 2, 3)
    send(sender, threads_worker, "fail")
    send(sender, threads_worker, "flaky", "k")  # retried once, then succeeds
    packets = threads_worker.packets(4)
    outcomes = sorted((packet.script_name, packet.status) for packet in packets)
    assert outcomes == [
        ("add", STATUS_SUCCESS),
        ("fail", STATUS_FAILURE),
        ("flaky", STATUS_SUCCESS),
        ("flaky", STATUS_RETRY),
    ]
    for packet in packets:
        tags = dict(packet.tags)
        assert tags == {"queue": "threads", "worker": threads_worker.name, "app": "tests"}
        assert packet.hostname == HOST and packet.server_name == HOST
        assert packet.request_time > 0
    add = next(packet for packet in packets if packet.script_name == "add")
    assert add.timer_tags() == [(("group", "helper"),), (("group", "math"), ("op", "add"))]
    assert add.timer(group="math", op="add").hit_count == 1
    failed = next(packet for packet in packets if packet.script_name == "fail")
    assert b"secret-exception-message" not in failed.datagram
    assert failed.timers == []
    threads_worker.assert_no_errors()


def test_a_timer_outside_any_task_does_nothing(sender, threads_worker, broker):
    key = f"outside-{uuid.uuid4()}"
    send(sender, threads_worker, "outside", key)
    (packet,) = threads_worker.packets(1)
    assert packet.script_name == "outside" and packet.timers == []
    # At import, and in a thread the task started: nothing active; in the task: active.
    assert store(broker).get(key) == b"False False True"


def test_a_task_revoked_before_it_ran_sends_nothing(sender, threads_worker):
    send(sender, threads_worker, "add", 1, 1, expires=datetime.now(timezone.utc) - timedelta(1))
    send(sender, threads_worker, "add", 2, 2)
    (packet,) = threads_worker.packets(1)
    assert (packet.script_name, packet.status) == ("add", STATUS_SUCCESS)
    assert threads_worker.listener.pending(0.3) == []
    assert "Discarding revoked task" in threads_worker.log() or "expired" in threads_worker.log()


def test_a_thousand_tasks_on_the_threads_pool_are_a_thousand_unmixed_packets(
    sender, threads_worker
):
    count = 1000
    for n in range(count):
        send(sender, threads_worker, "tagged", n)
    packets = threads_worker.packets(count)
    seen = set()
    for packet in packets:
        assert packet.script_name == "tagged" and packet.status == STATUS_SUCCESS
        n = dict(packet.tags)["n"]
        # Both of the task's timers, merged into one: no other task's timer.
        assert packet.timer_tags() == [(("group", "work"), ("n", n))]
        assert packet.timer(group="work", n=n).hit_count == 2
        seen.add(int(n))
    assert seen == set(range(count))
    assert threads_worker.listener.pending(0.3) == []
    threads_worker.assert_no_errors()


# -- CPU per task, under each pool ---------------------------------------------

BUSY = 0.05  # CPU seconds each task burns


def cpu_of(packet):
    return packet.ru_utime + packet.ru_stime


def test_threads_pool_tasks_report_their_own_threads_cpu(sender, threads_worker):
    for _ in range(8):
        send(sender, threads_worker, "busy", BUSY)
    packets = threads_worker.packets(8)
    for packet in packets:
        # Eight threads ran at once: the process's CPU would be several times more.
        assert BUSY * 0.9 <= cpu_of(packet) < BUSY * 2, [cpu_of(p) for p in packets]


def test_prefork_pool_tasks_report_their_processes_cpu(sender, prefork_worker):
    for _ in range(4):
        send(sender, prefork_worker, "busy", BUSY)
    for packet in prefork_worker.packets(4):
        assert (packet.script_name, packet.status) == ("busy", STATUS_SUCCESS)
        assert dict(packet.tags) == {
            "queue": "prefork",
            "worker": prefork_worker.name,
            "app": "tests",
        }
        assert BUSY * 0.9 <= cpu_of(packet) < BUSY * 2


def test_gevent_pool_tasks_share_their_threads_cpu(sender, gevent_worker):
    count = 10
    for _ in range(count):
        send(sender, gevent_worker, "busy", BUSY, 10)
    packets = gevent_worker.packets(count)
    total = sum(cpu_of(packet) for packet in packets)
    # Interleaved on one thread: each reports its share, not the thread's CPU while it ran.
    assert total == pytest.approx(count * BUSY, rel=0.5)
    for packet in packets:
        assert (packet.script_name, packet.status) == ("busy", STATUS_SUCCESS)
        assert cpu_of(packet) < BUSY * 3, [cpu_of(p) for p in packets]
    gevent_worker.assert_no_errors()


# -- killed, terminated, timed out ---------------------------------------------


def test_a_task_terminated_by_revoke_is_reported_as_revoked(sender, prefork_worker, broker):
    key = f"hold-{uuid.uuid4()}"
    result = send(sender, prefork_worker, "hold", key, 60)
    wait_for_key(broker, key, prefork_worker)
    sender.control.revoke(result.id, terminate=True)
    (packet,) = prefork_worker.packets(1)
    assert (packet.script_name, packet.status) == ("hold", STATUS_REVOKED)
    assert dict(packet.tags) == {"queue": "prefork", "worker": prefork_worker.name, "app": "tests"}
    assert 0 < packet.request_time < 60
    assert cpu_of(packet) == 0  # the child's CPU went with it
    assert prefork_worker.listener.pending(0.5) == []  # one packet: the child sent none


def test_a_task_killed_by_its_hard_time_limit_is_reported_as_timed_out(
    sender, prefork_worker, broker
):
    key = f"hold-{uuid.uuid4()}"
    send(sender, prefork_worker, "hold", key, 60, time_limit=1)
    (packet,) = prefork_worker.packets(1)
    assert (packet.script_name, packet.status) == ("hold", STATUS_TIME_LIMIT)
    assert 0.5 < packet.request_time < 60
    assert prefork_worker.listener.pending(0.5) == []  # Celery tells of it twice: one packet


def test_a_task_whose_child_process_dies_is_reported_as_worker_lost(sender, prefork_worker):
    send(sender, prefork_worker, "die")
    (packet,) = prefork_worker.packets(1)
    assert (packet.script_name, packet.status) == ("die", STATUS_WORKER_LOST)
    assert prefork_worker.listener.pending(0.5) == []


def test_a_task_ended_by_its_soft_time_limit_is_reported_as_timed_out(sender, prefork_worker):
    send(sender, prefork_worker, "hold", f"hold-{uuid.uuid4()}", 60, soft_time_limit=0.3)
    (packet,) = prefork_worker.packets(1)
    assert (packet.script_name, packet.status) == ("hold", STATUS_TIME_LIMIT)
    assert 0.2 < packet.request_time < 60


def gevent_pool_terminates():
    from celery.concurrency.base import BasePool
    from celery.concurrency.gevent import TaskPool

    return TaskPool.terminate_job is not BasePool.terminate_job


def test_gevent_task_terminated_by_revoke(sender, gevent_worker, broker):
    if not gevent_pool_terminates():
        pytest.skip("this Celery's gevent pool cannot terminate a task (Celery >= 5.5 can)")
    key = f"hold-{uuid.uuid4()}"
    result = send(sender, gevent_worker, "hold", key, 60)
    wait_for_key(broker, key, gevent_worker)
    sender.control.revoke(result.id, terminate=True)
    (packet,) = gevent_worker.packets(1)
    assert (packet.script_name, packet.status) == ("hold", STATUS_REVOKED)
    assert gevent_worker.listener.pending(0.5) == []  # one packet, not one more from the revoke


def test_gevent_task_killed_by_its_time_limit(sender, gevent_worker):
    send(sender, gevent_worker, "hold", f"hold-{uuid.uuid4()}", 60, time_limit=0.5)
    (packet,) = gevent_worker.packets(1)
    assert (packet.script_name, packet.status) == ("hold", STATUS_TIME_LIMIT)
    assert gevent_worker.listener.pending(0.5) == []  # one packet, not one more from the limit


# -- the example -----------------------------------------------------------------


def test_the_example_app(request, broker, tmp_path_factory):
    worker = Worker("solo", broker, tmp_path_factory.mktemp("example"), 1, app="celery_app")
    request.addfinalizer(worker.stop)
    env = dict(os.environ, CELERY_BROKER_URL=broker)
    example = os.path.join(EXAMPLES, "celery_app.py")
    done = subprocess.run(
        [sys.executable, example, "2"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    packets = by_name(worker.packets(3))
    assert [(packet.script_name, packet.status) for packet in packets] == [
        ("broken", STATUS_FAILURE),
        ("thumbnail", STATUS_SUCCESS),
        ("thumbnail", STATUS_SUCCESS),
    ]
    for packet in packets:
        assert dict(packet.tags) == {"queue": "celery", "worker": worker.name, "app": "images"}
    assert packets[1].timer_tags() == [
        (("group", "image"), ("op", "resize")),
        (("group", "storage"), ("op", "load")),
    ]


# -- in this process: configuration, idempotence -------------------------------


@pytest.fixture
def eager_app():
    pynba.celery.stop()  # whatever monitor an earlier test left (a docs block's)
    app = celery.Celery("eager", broker="memory://")
    yield app
    pynba.celery.stop()
    app.close()


def test_options_come_from_the_apps_configuration(eager_app, udp_listener):
    eager_app.conf.pinba_server = f"127.0.0.1:{udp_listener.port}"
    eager_app.conf.PINBA_PREFIX = "celery:"
    monitor = pynba.celery.monitor(eager_app, server_name="jobs")
    assert pynba.celery.monitor(eager_app) is monitor

    @eager_app.task(name="double")
    def double(x):
        return 2 * x

    assert double.apply((21,)).get() == 42
    (packet,) = [Packet(datagram) for datagram in udp_listener.pending()]
    assert (packet.script_name, packet.status, packet.server_name) == (
        "celery:double",
        STATUS_SUCCESS,
        "jobs",
    )


def test_unknown_options_are_refused_at_once(eager_app):
    with pytest.raises(TypeError, match="'adress'"):
        pynba.celery.monitor(eager_app, adress="127.0.0.1:30002")


def test_a_task_run_inside_a_task_is_a_packet_of_its_own(eager_app, udp_listener):
    from pynba import pynba as current

    pynba.celery.monitor(eager_app, f"127.0.0.1:{udp_listener.port}")

    @eager_app.task(name="inner")
    def inner():
        with current.timer(group="inner"):
            current.status = 201  # a task's own status is kept

    @eager_app.task(name="outer")
    def outer():
        with current.timer(group="outer", step="before"):
            pass
        inner.apply()
        with current.timer(group="outer", step="after"):
            pass

    outer.apply()
    inner_packet, outer_packet = [Packet(datagram) for datagram in udp_listener.pending()]
    assert (inner_packet.script_name, inner_packet.status) == ("inner", 201)
    assert inner_packet.timer_tags() == [(("group", "inner"),)]
    assert (outer_packet.script_name, outer_packet.status) == ("outer", STATUS_SUCCESS)
    assert outer_packet.timer_tags() == [
        (("group", "outer"), ("step", "after")),
        (("group", "outer"), ("step", "before")),
    ]
    assert not current.active  # the tasks' jobs are over


def test_a_bad_option_turns_monitoring_off_and_the_tasks_run(eager_app, monkeypatch, caplog):
    monkeypatch.setenv("PYNBA_STRICT", "0")
    eager_app.conf.pinba_enabled = "perhaps"
    pynba.celery.monitor(eager_app, "127.0.0.1:30002")

    @eager_app.task(name="double")
    def double(x):
        return 2 * x

    assert double.apply((21,)).get() == 42
    assert double.apply((1,)).get() == 2
    errors = [record for record in caplog.records if record.name == "pynba"]
    assert len(errors) == 1 and "monitoring off" in errors[0].getMessage()
    assert "PINBA_ENABLED" in str(errors[0].exc_info[1])


def test_stop_disconnects(eager_app, udp_listener):
    pynba.celery.monitor(eager_app, f"127.0.0.1:{udp_listener.port}")
    pynba.celery.stop()

    @eager_app.task(name="double")
    def double(x):
        return 2 * x

    assert double.apply((21,)).get() == 42
    assert udp_listener.pending() == []
    assert pynba.celery.monitor(eager_app) is not None  # may start again
