"""A Celery app whose every task run is one Pinba packet (``pynba.celery``).

    cd src/examples && celery -A celery_app worker -P threads  # then: python celery_app.py [JOBS]

The worker reports to PINBA_SERVER (environment; default 127.0.0.1:30002)
and takes its tasks from CELERY_BROKER_URL (default
redis://127.0.0.1:6379/0). ``python celery_app.py [JOBS]`` sends JOBS
``thumbnail`` tasks (default 3) and one ``broken`` task: the worker sends a
packet for each, named after the task, status 200 or 500, with the request
tags ``queue`` and ``worker`` and the timers of the code the task calls.
"""

import os
import sys
import time

from celery import Celery

from pynba import pynba
from pynba.celery import monitor

app = Celery("celery_app", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True
app.conf.pinba_server = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")
monitor(app, tags={"app": "images"})


def resize(image):
    """Library code: it only knows the pynba proxy."""
    with pynba.timer(group="image", op="resize"):
        time.sleep(0.001)
    return f"{image}-small"


@app.task(name="thumbnail")
def thumbnail(image):
    with pynba.timer(group="storage", op="load"):
        data = image.upper()
    return resize(data)


@app.task(name="broken")
def broken():
    raise RuntimeError("this task always fails")


def main(argv):
    jobs = int(argv[0]) if argv else 3
    for number in range(jobs):
        thumbnail.delay(f"image{number}")
    broken.delay()
    print(f"sent {jobs} thumbnail tasks and 1 broken task")


if __name__ == "__main__":
    main(sys.argv[1:])
