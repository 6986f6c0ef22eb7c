"""The jobs the RQ tests enqueue: importable by the ``rq worker`` they start."""

import os
import signal
import time

import rq.worker
from rq import Retry

from cpu import burn_cpu
from pynba import pynba
from pynba.rq import PinbaWorkerMixin

if hasattr(rq.worker, "SpawnWorker"):  # RQ 2.2 and later

    class PinbaSpawnWorker(PinbaWorkerMixin, rq.worker.SpawnWorker):
        """Work horses started afresh (posix_spawn), each job reported."""


def add(a, b):
    with pynba.timer(group="rq", op="add"):
        total = a + b
    return total


def fail(message):
    with pynba.timer(group="rq", op="fail"):
        raise ValueError(message)


def sleep(seconds):
    time.sleep(seconds)


def burn(seconds):
    """Spend ``seconds`` of this thread's CPU; returns the CPU it measured itself."""
    return burn_cpu(seconds)


def ask_retry():
    return Retry(max=1)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def leave(code):
    os._exit(code)


def outlive_timeout(seconds):
    """Run past the job's timeout (its alarm blocked, as by C code), then die as if killed."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)
