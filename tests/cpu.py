"""CPU work for the tests that check the CPU time a request or timer carries."""

import time


def burn_cpu(seconds):
    """Spend ``seconds`` of this thread's CPU time; returns the CPU time it measured."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass
    return time.thread_time() - start
