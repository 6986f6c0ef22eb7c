"""An RQ worker that reports one Pinba packet per job with ``pynba.rq``.

    python src/examples/rq_worker.py [REDIS_URL] [PINBA_SERVER]

Queues three jobs on the Redis server at REDIS_URL (default
redis://127.0.0.1:6379/0), then runs ``PinbaWorker`` until the queue is
empty. Each job is reported to PINBA_SERVER (argument or environment
variable; default 127.0.0.1:30002), named after its function: two
``rq_worker.thumbnail`` (status 200, with a timer from the job's code) and
one ``rq_worker.broken`` (status 500). A real deployment runs
``rq worker -w pynba.rq.PinbaWorker`` with PINBA_SERVER set instead.
"""

import os
import sys
import time

from redis import Redis
from rq import Queue

from pynba import ScriptMonitor, pynba
from pynba.rq import PinbaWorker

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")


def thumbnail(image):
    """A job, timed by RQ's worker; a step of it timed with the pynba proxy."""
    started = time.monotonic()
    with pynba.timer(group="image", op="resize"):
        time.sleep(0.001)
    print(f"{image} resized in {time.monotonic() - started:.3f} s")


def broken(image):
    """A job that fails: its packet has status 500."""
    raise ValueError(f"cannot read {image}")


def main(argv):
    redis_url = argv[0] if argv else "redis://127.0.0.1:6379/0"
    address = argv[1] if len(argv) > 1 else PINBA_SERVER
    # The jobs under their importable name, as a worker elsewhere would find them
    # (run as a script, this file is __main__).
    import rq_worker as jobs

    queue = Queue("images", connection=Redis.from_url(redis_url))
    for job, image in [(jobs.thumbnail, "a.png"), (jobs.thumbnail, "b.png"), (jobs.broken, "c")]:
        queue.enqueue(job, image)
    monitor = ScriptMonitor(address, tags={"app": "images"}, autostart=False)
    monitor.reporter.raise_on_fail = True  # a demo should say when sending fails
    worker = PinbaWorker([queue], connection=queue.connection, pinba_monitor=monitor)
    worker.work(burst=True)
    monitor.close()


if __name__ == "__main__":
    main(sys.argv[1:])
