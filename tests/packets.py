"""Reading what pynba sent: datagrams checked against pinba2's rules, then decoded."""

from contextlib import contextmanager
from dataclasses import dataclass

from conftest import decode
from pinba2_rules import assert_valid, timer_cpu


@dataclass
class SentTimer:
    tags: tuple  # sorted (name, value) pairs
    value: float
    hit_count: int
    ru_utime: float
    ru_stime: float


class Packet:
    """One decoded request with its timers and tags as plain Python values."""

    def __init__(self, datagram):
        assert_valid(datagram)
        self.datagram = datagram
        self.message = message = decode(datagram)
        words = [w for w in message.dictionary]
        self.tags = [
            (words[n], words[v]) for n, v in zip(message.tag_name, message.tag_value, strict=True)
        ]
        self.timers = []
        position = 0
        for i, count in enumerate(message.timer_tag_count):
            names = message.timer_tag_name[position : position + count]
            values = message.timer_tag_value[position : position + count]
            position += count
            self.timers.append(
                SentTimer(
                    tuple(sorted((words[n], words[v]) for n, v in zip(names, values, strict=True))),
                    message.timer_value[i],
                    message.timer_hit_count[i],
                    *timer_cpu(message, i),
                )
            )

    def __getattr__(self, name):
        return getattr(self.message, name)

    def timer(self, **tags):
        """The one timer sent with exactly these tags."""
        wanted = tuple(sorted((k, str(v)) for k, v in tags.items()))
        found = [t for t in self.timers if t.tags == wanted]
        assert len(found) == 1, f"{wanted} not in {[t.tags for t in self.timers]}"
        return found[0]

    def timer_tags(self):
        return sorted(t.tags for t in self.timers)


def receive(listener, timeout=5.0):
    """The next datagram on ``listener``, checked and decoded."""
    return Packet(listener.receive(timeout))


def receive_all(listener, count, timeout=5.0):
    return [receive(listener, timeout) for _ in range(count)]


@contextmanager
def monitored_request(listener):
    """A monitored request around the block (its collector), reported to ``listener`` at its end."""
    from pynba.context import activate, deactivate

    collector = make_collector(listener)
    token = activate(collector)
    try:
        yield collector
    finally:
        deactivate(token)
        collector.finish()


def make_collector(listener, script_name="test", **settings):
    """A request collector reporting to ``listener`` through a real Reporter."""
    from pynba.collector import CollectorSettings, RequestCollector
    from pynba.reporter import Reporter

    reporter = Reporter(listener.address)
    return RequestCollector(CollectorSettings(reporter, **settings), script_name)
