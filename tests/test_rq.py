"""pynba.rq: a real ``rq worker`` against a private redis-server, reporting to a real UDP socket.

The jobs are in tests/rq_jobs.py. Each worker runs in burst mode: it
performs every job queued, then exits.
"""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache_servers import start_redis
from conftest import IN_CI
from packets import Packet

try:
    import redis as redis_module
    import rq
    import rq.command
    import rq.job
except ImportError as missing:
    if IN_CI:
        raise  # CI must run them: the "test" extra installs rq
    pytest.skip(f"RQ is not installed: {missing}", allow_module_level=True)

import rq_jobs  # noqa: E402 - needs rq
from pynba import ScriptMonitor, pynba  # noqa: E402
from pynba.rq import (  # noqa: E402
    STATUS_FAILED,
    STATUS_KILLED,
    STATUS_RETRY,
    STATUS_STOPPED,
    STATUS_SUCCESS,
    STATUS_TIMEOUT,
    PinbaSimpleWorker,
    PinbaWorker,
)

ROOT = Path(__file__).resolve().parent.parent
#: A job that returns Retry(max=1): run again once then failed (RQ 2.1 and
#: later), or a plain success (RQ 2.0).
RETURNED_RETRY_STATUSES = (
    [STATUS_RETRY, STATUS_FAILED]
    if tuple(map(int, rq.__version__.split(".")[:2])) >= (2, 1)
    else [STATUS_SUCCESS]
)
WORKERS = ["pynba.rq.PinbaWorker", "pynba.rq.PinbaSimpleWorker"]
WORKER_TIMEOUT = 30  # seconds for each packet; a job here takes at most one


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server):
    connection = redis_module.Redis(host=redis_server.host, port=redis_server.port)
    connection.flushall()
    yield connection
    connection.close()


@pytest.fixture
def queue(redis):
    return rq.Queue("default", connection=redis)


def worker_command(redis_server, worker_class, *queues, name="worker-1"):
    return [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--burst",
        "--url",
        f"redis://{redis_server.address}",
        "--worker-class",
        worker_class,
        "--name",
        name,
        *(queues or ["default"]),
    ]


class WorkerProcess:
    """A burst ``rq worker`` reporting to ``listener``, its output in a file of ``directory``."""

    def __init__(self, directory, redis_server, listener, worker_class, *queues, **variables):
        command = worker_command(redis_server, worker_class, *queues)
        self.start(directory, listener, command, **variables)

    @classmethod
    def of_command(cls, directory, listener, command):
        """Any process that runs an RQ worker (an example)."""
        worker = cls.__new__(cls)
        worker.start(directory, listener, command)
        return worker

    def start(self, directory, listener, command, **variables):
        environ = dict(os.environ, PINBA_SERVER=f"127.0.0.1:{listener.port}", **variables)
        paths = [str(ROOT / "src"), str(ROOT / "tests"), environ.get("PYTHONPATH", "")]
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        self.listener = listener
        self.log_path = Path(directory) / "worker.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def packets(self, count):
        """Exactly ``count`` packets (checked against pinba2's rules), in the order they came.

        Then the worker is killed: in burst mode it would exit, but RQ's
        teardown can wait a minute for its pub/sub thread (a race between
        rq 3 and redis-py 8 in ``unsubscribe()``, with any worker class).
        """
        try:
            packets = []
            for _ in range(count):
                try:
                    packets.append(Packet(self.listener.receive(timeout=WORKER_TIMEOUT)))
                except TimeoutError:
                    pytest.fail(
                        f"{len(packets)} packets of {count}; the worker said:\n{self.log()}"
                    )
            assert self.listener.pending() == []
            return packets
        finally:
            self.stop()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        self.process.kill()
        self.process.wait()


def received(listener, count):
    """Exactly ``count`` packets (checked against pinba2's rules), in the order they came."""
    packets = [Packet(listener.receive()) for _ in range(count)]
    assert listener.pending() == []
    return packets


def run_worker(tmp_path, redis_server, listener, worker_class, *queues, count, **variables):
    """The ``count`` packets a burst ``rq worker`` sends for the jobs queued."""
    worker = WorkerProcess(tmp_path, redis_server, listener, worker_class, *queues, **variables)
    return worker.packets(count)


def by_name(packets):
    found = {}
    for packet in packets:
        found.setdefault(packet.script_name, []).append(packet)
    return found


@pytest.mark.parametrize("worker_class", WORKERS)
def test_one_packet_per_job_by_outcome(tmp_path, redis_server, queue, udp_listener, worker_class):
    added = [queue.enqueue(rq_jobs.add, n, 1) for n in range(20)]
    queue.enqueue(rq_jobs.fail, "secret-argument")
    queue.enqueue(rq_jobs.sleep, 5, job_timeout=1)
    queue.enqueue(rq_jobs.fail, "again", retry=rq.Retry(max=1))
    queue.enqueue(rq_jobs.ask_retry)
    count = 20 + 1 + 1 + 2 + len(RETURNED_RETRY_STATUSES)
    sent = run_worker(tmp_path, redis_server, udp_listener, worker_class, count=count)

    packets = by_name(sent)
    assert sorted(packets) == [
        "rq_jobs.add",
        "rq_jobs.ask_retry",
        "rq_jobs.fail",
        "rq_jobs.sleep",
    ]
    for packet in [*packets["rq_jobs.add"], *packets["rq_jobs.fail"]]:
        assert packet.tags == [("queue", "default"), ("worker", "worker-1")]
    assert [p.status for p in packets["rq_jobs.add"]] == [STATUS_SUCCESS] * 20
    for packet in packets["rq_jobs.add"]:
        assert packet.timer_tags() == [(("group", "rq"), ("op", "add"))]
        assert packet.timer(group="rq", op="add").hit_count == 1
    assert [job.return_value() for job in added] == [n + 1 for n in range(20)]
    # The failure, then the one that is tried again and fails once more.
    assert [p.status for p in packets["rq_jobs.fail"]] == [
        STATUS_FAILED,
        STATUS_RETRY,
        STATUS_FAILED,
    ]
    for packet in packets["rq_jobs.fail"]:
        assert packet.timer_tags() == [(("group", "rq"), ("op", "fail"))]
        assert b"secret-argument" not in packet.datagram
    (timed_out,) = packets["rq_jobs.sleep"]
    assert timed_out.status == STATUS_TIMEOUT
    assert [p.status for p in packets["rq_jobs.ask_retry"]] == RETURNED_RETRY_STATUSES


@pytest.mark.parametrize("worker_class", WORKERS)
def test_cpu_is_the_jobs_own(tmp_path, redis_server, queue, udp_listener, worker_class):
    burning = queue.enqueue(rq_jobs.burn, 0.2)
    queue.enqueue(rq_jobs.add, 1, 2)
    burnt, added = run_worker(tmp_path, redis_server, udp_listener, worker_class, count=2)

    assert (burnt.script_name, added.script_name) == ("rq_jobs.burn", "rq_jobs.add")
    measured = burning.return_value()  # the CPU the job's thread measured itself
    assert burnt.ru_utime + burnt.ru_stime >= 0.9 * measured
    # The next job does not carry the CPU of the one before (nor of the worker's process).
    assert added.ru_utime + added.ru_stime < measured / 2


def test_stopped_job(tmp_path, redis_server, redis, queue, udp_listener):
    job = queue.enqueue(rq_jobs.sleep, 30, job_timeout=60)
    queue.enqueue(rq_jobs.add, 1, 2)
    worker = WorkerProcess(tmp_path, redis_server, udp_listener, "pynba.rq.PinbaWorker")
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while job.get_status() != rq.job.JobStatus.STARTED:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.02)
        rq.command.send_stop_job_command(redis, job.id)
        stopped, added = worker.packets(2)
    finally:
        worker.stop()

    assert stopped.script_name == "rq_jobs.sleep"
    assert stopped.status == STATUS_STOPPED
    assert sorted(stopped.tags) == [
        ("queue", "default"),
        ("signal", "SIGKILL"),
        ("worker", "worker-1"),
    ]
    assert job.get_status() == rq.job.JobStatus.STOPPED
    assert (added.script_name, added.status) == ("rq_jobs.add", STATUS_SUCCESS)


def test_work_horse_killed_in_its_job(tmp_path, redis_server, queue, udp_listener):
    queue.enqueue(rq_jobs.die)
    queue.enqueue(rq_jobs.add, 1, 2)
    queue.enqueue(rq_jobs.leave, 3)
    queue.enqueue(rq_jobs.outlive_timeout, 1.5, job_timeout=1)
    killed, added, left, timed_out = run_worker(
        tmp_path, redis_server, udp_listener, "pynba.rq.PinbaWorker", count=4
    )

    assert killed.script_name == "rq_jobs.die"
    assert killed.status == STATUS_KILLED
    assert sorted(killed.tags) == [
        ("queue", "default"),
        ("signal", "SIGKILL"),
        ("worker", "worker-1"),
    ]
    assert (added.script_name, added.status) == ("rq_jobs.add", STATUS_SUCCESS)
    assert (left.script_name, left.status) == ("rq_jobs.leave", STATUS_KILLED)
    assert sorted(left.tags) == [("exit_code", "3"), ("queue", "default"), ("worker", "worker-1")]
    # The work horse ran past the job's timeout: the worker reports a timeout.
    assert (timed_out.script_name, timed_out.status) == ("rq_jobs.outlive_timeout", STATUS_TIMEOUT)
    assert dict(timed_out.tags)["signal"] == "SIGKILL"


def test_script_names_are_bounded_across_work_horses(tmp_path, redis_server, queue, udp_listener):
    queue.enqueue(rq_jobs.add, 1, 2)
    queue.enqueue(rq_jobs.sleep, 0)
    queue.enqueue(rq_jobs.add, 3, 4)
    queue.enqueue(rq_jobs.burn, 0)
    sent = run_worker(
        tmp_path, redis_server, udp_listener, "pynba.rq.PinbaWorker", count=4, PINBA_NAME_LIMIT="1"
    )

    names = [packet.script_name for packet in sent]
    assert names == ["rq_jobs.add", "<other>", "rq_jobs.add", "<other>"]


@pytest.mark.skipif(not hasattr(rq.worker, "SpawnWorker"), reason="RQ has no SpawnWorker")
def test_spawn_worker_with_the_mixin(tmp_path, redis_server, queue, udp_listener):
    queue.enqueue(rq_jobs.add, 1, 2)
    queue.enqueue(rq_jobs.sleep, 0)
    queue.enqueue(rq_jobs.add, 3, 4)
    queue.enqueue(rq_jobs.die)
    worker_class = "rq_jobs.PinbaSpawnWorker"
    sent = run_worker(
        tmp_path, redis_server, udp_listener, worker_class, count=4, PINBA_NAME_LIMIT="1"
    )

    # Names admitted by the worker, not by each work horse afresh.
    assert [(p.script_name, p.status) for p in sent] == [
        ("rq_jobs.add", STATUS_SUCCESS),
        ("<other>", STATUS_SUCCESS),
        ("rq_jobs.add", STATUS_SUCCESS),
        ("<other>", STATUS_KILLED),
    ]
    assert sent[0].timer_tags() == [(("group", "rq"), ("op", "add"))]


def test_queue_tag_names_the_jobs_queue(tmp_path, redis_server, redis, udp_listener):
    rq.Queue("high", connection=redis).enqueue(rq_jobs.add, 1, 2)
    rq.Queue("low", connection=redis).enqueue(rq_jobs.add, 3, 4)
    sent = run_worker(
        tmp_path, redis_server, udp_listener, "pynba.rq.PinbaWorker", "high", "low", count=2
    )

    tags = [dict(packet.tags)["queue"] for packet in sent]
    assert tags == ["high", "low"]


def test_example(tmp_path, redis_server, udp_listener):
    example = ROOT / "src" / "examples" / "rq_worker.py"
    command = [sys.executable, str(example), f"redis://{redis_server.address}/0"]
    command.append(f"127.0.0.1:{udp_listener.port}")
    sent = WorkerProcess.of_command(tmp_path, udp_listener, command).packets(3)

    assert [(p.script_name, p.status) for p in sent] == [
        ("rq_worker.thumbnail", 200),
        ("rq_worker.thumbnail", 200),
        ("rq_worker.broken", 500),
    ]
    for packet in sent:
        tags = dict(packet.tags)
        assert sorted(tags) == ["app", "queue", "worker"]
        assert (tags["app"], tags["queue"]) == ("images", "images")
    assert [p.timer_tags() for p in sent] == [[(("group", "image"), ("op", "resize"))]] * 2 + [[]]


# In the test's own process: a SimpleWorker forks nothing.


class InProcessWorker(PinbaSimpleWorker):
    """Takes no commands: with no pub/sub thread, no wait for it at the end (see above)."""

    def subscribe(self):
        pass


def simple_worker(queue, monitor=None, **options):
    return InProcessWorker([queue], connection=queue.connection, pinba_monitor=monitor, **options)


def test_monitor_given_as_an_argument(queue, udp_listener):
    monitor = ScriptMonitor(udp_listener.address, tags={"app": "shop"}, autostart=False)
    queue.enqueue(rq_jobs.add, 1, 2)
    simple_worker(queue, monitor, name="in-process").work(burst=True)

    (packet,) = received(udp_listener, 1)
    assert packet.tags == [("app", "shop"), ("queue", "default"), ("worker", "in-process")]
    # The worker leaves a monitor it was given open.
    with monitor.job("after"):
        pass
    assert received(udp_listener, 1)[0].script_name == "after"
    monitor.close()


def test_monitor_must_be_a_script_monitor(queue):
    with pytest.raises(TypeError, match="pinba_monitor must be a pynba.ScriptMonitor"):
        simple_worker(queue, "127.0.0.1:30002")
    with pytest.raises(TypeError, match="pinba_monitor"):
        PinbaWorker([queue], connection=queue.connection, pinba_monitor=object())


def test_no_server_configured_runs_jobs_unreported(queue, udp_listener, monkeypatch):
    monkeypatch.delenv("PINBA_SERVER", raising=False)
    job = queue.enqueue(rq_jobs.add, 1, 2)
    simple_worker(queue).work(burst=True)

    assert job.return_value() == 3
    assert udp_listener.pending() == []


def test_bad_configuration_is_logged_not_raised(queue, udp_listener, monkeypatch, caplog):
    monkeypatch.setenv("PYNBA_STRICT", "0")
    monkeypatch.setenv("PINBA_SERVER", f"127.0.0.1:{udp_listener.port}")
    monkeypatch.setenv("PINBA_NAME_LIMIT", "many")
    job = queue.enqueue(rq_jobs.add, 1, 2)
    with caplog.at_level(logging.ERROR, logger="pynba"):
        simple_worker(queue).work(burst=True)

    assert job.return_value() == 3
    assert "cannot set up Pinba monitoring of RQ jobs" in caplog.text
    assert udp_listener.pending() == []


def test_bad_configuration_raises_in_strict_mode(queue, monkeypatch):
    monkeypatch.setenv("PINBA_SERVER", "127.0.0.1:30002")
    monkeypatch.setenv("PINBA_NAME_LIMIT", "many")
    with pytest.raises(ValueError, match="PINBA_NAME_LIMIT"):
        simple_worker(queue).work(burst=True)


def test_timer_outside_a_job_does_nothing(queue, udp_listener, monkeypatch):
    monkeypatch.setenv("PYNBA_STRICT", "0")  # strict mode raises there
    monitor = ScriptMonitor(udp_listener.address, autostart=False)
    worker = simple_worker(queue, monitor)
    with pynba.timer(group="outside"):
        pass
    queue.enqueue(rq_jobs.add, 1, 2)
    worker.work(burst=True)
    with pynba.timer(group="outside"):
        pass

    (packet,) = received(udp_listener, 1)
    assert packet.timer_tags() == [(("group", "rq"), ("op", "add"))]
    monitor.close()
