"""CPU work for the tests that check the CPU time a request or timer carries."""

import time


def burn_cpu(seconds):
    """Spend ``seconds`` of this thread's CPU time; returns the CPU time it measured."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass
    return time.thread_time() - start


def check_timer_cpu(timer, timer_rusage, at_least):
    """A decoded timer's CPU time: ``at_least`` seconds where its request measures it, else 0."""
    if timer_rusage:
        assert timer.ru_utime + timer.ru_stime >= at_least
    else:
        assert timer.ru_utime == timer.ru_stime == 0
