"""The Celery app the tests' workers run (``celery -A celery_tasks worker``).

The broker is ``PYNBA_TEST_BROKER``; the Pinba server is ``PINBA_SERVER``,
or ``PYNBA_TEST_PINBA_SETTING`` written into the app's configuration
(``pinba_server``). Task names are short and fixed: the tests expect them
as script names.
"""

import os
import signal
import threading
import time

import redis
from celery import Celery

from cpu import burn_cpu
from pynba import pynba
from pynba.celery import monitor

app = Celery("celery_tasks", broker=os.environ.get("PYNBA_TEST_BROKER", "memory://"))
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False
if os.environ.get("PYNBA_TEST_PINBA_SETTING"):
    app.conf.pinba_server = os.environ["PYNBA_TEST_PINBA_SETTING"]

monitor(app, tags={"app": "tests"})
monitor(app)  # idempotent: still one packet per task


@pynba.timer(group="helper")
def helper(value):
    """Timed when a task calls it; called at import (outside any task), timed by nobody."""
    return value


helper("import")
IMPORTED_ACTIVE = pynba.active  # False: no task runs at import


def store():
    return redis.Redis.from_url(os.environ["PYNBA_TEST_BROKER"])


@app.task(name="add")
def add(x, y):
    with pynba.timer(group="math", op="add"):
        return helper(x + y)


@app.task(name="fail")
def fail():
    raise ValueError("secret-exception-message")


@app.task(name="flaky", bind=True, max_retries=2)
def flaky(self, key):
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return key


@app.task(name="tagged")
def tagged(n):
    """Leaves ``n`` in a request tag and a timer tag: a packet holds one task's measures."""
    pynba.set_tag("n", str(n))
    with pynba.timer(group="work", n=str(n)):
        time.sleep(0.0005 * (n % 3))
    with pynba.timer(group="work", n=str(n)):
        pass


@app.task(name="outside")
def outside(key):
    """A timer in a thread the task did not hand its context to: it measures nothing."""
    seen = {}

    def elsewhere():
        seen["active"] = pynba.active

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    store().set(key, f"{IMPORTED_ACTIVE} {seen['active']} {pynba.active}")


@app.task(name="busy")
def busy_task(seconds, slices=1):
    """``seconds`` of CPU in ``slices``, yielding between them (under gevent, to the others)."""
    for _ in range(slices):
        burn_cpu(seconds / slices)
        time.sleep(0)  # gevent: patched, lets the other greenlets run


@app.task(name="hold")
def hold(key, seconds):
    """Says it started (``key`` in Redis), then sleeps: for revoke and time limits."""
    store().set(key, "started")
    time.sleep(seconds)


@app.task(name="die")
def die():
    """Kills the process running it, as the OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)
