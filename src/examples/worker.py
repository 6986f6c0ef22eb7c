"""A worker that reports one Pinba packet per job with ``ScriptMonitor``.

    python src/examples/worker.py [PINBA_SERVER] [JOBS]

Sends to PINBA_SERVER (argument or environment variable; default
127.0.0.1:30002) one packet per job (default 3 jobs), named after the job's
kind, with timers from the worker and from the library code it calls.
"""

import os
import sys
import time

from pynba import ScriptMonitor, pynba

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")


def resize(image):
    """Library code: it only knows the pynba proxy."""
    with pynba.timer(group="image", op="resize"):
        time.sleep(0.001)
    return f"{image}-small"


def main(argv):
    address = argv[0] if argv else PINBA_SERVER
    jobs = int(argv[1]) if len(argv) > 1 else 3
    monitor = ScriptMonitor(address, tags={"worker": "images"}, autostart=False)
    monitor.reporter.raise_on_fail = True  # a demo should say when sending fails
    for number in range(jobs):
        with monitor.job("thumbnail", tags={"queue": "images"}):
            with monitor.timer(group="queue", op="get"):
                image = f"image{number}"
            print("job", number, resize(image))
    monitor.close()


if __name__ == "__main__":
    main(sys.argv[1:])
