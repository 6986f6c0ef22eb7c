"""A batch script to run under ``pynba run``: one Pinba packet for the whole run.

    pynba run --server 127.0.0.1:30002 --tag env=dev -- python src/examples/batch_script.py [ROWS]

The script only times its steps with the ``pynba`` proxy; ``pynba run``
sends one packet named after the script's path, with the run's time, CPU
and peak memory, status 200 and the tag env=dev, and the script's timers:
group=batch with op=load, op=transform and op=write (3 hits).
"""

import sys
import time

from pynba import pynba


@pynba.timer(group="batch", op="load")
def load(count):
    return list(range(count))


def main(argv):
    rows = load(int(argv[0]) if argv else 1000)
    with pynba.timer(group="batch", op="transform"):
        total = sum(row * 2 for row in rows)
    for _ in range(3):
        with pynba.timer(group="batch", op="write"):
            time.sleep(0.001)  # a pretend write
    print(f"processed {len(rows)} rows, total {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
