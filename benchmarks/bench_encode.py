"""Encoder cost per request: compiled, pure Python, and Google protobuf.

Prints µs per encode (best of several runs) for a bare request, a typical
one (10 timers x 2 tags, 3 request tags) and a heavy one (200 timers), the
heavy one again as the request path hands it over (200 stopped pynba Timer
objects), then 25/100/800/2,000 timers: the µs per timer column shows
whether the per-timer cost stays flat. A second table compares the
wire forms on the typical and heavy requests: unpacked (classic), packed and
packed + LZ4 (pinba2), their cost with the compiled encoder and their size.
Run: python benchmarks/bench_encode.py
"""

import argparse
import sys
import timeit
from pathlib import Path

from pynba.wire import fallback, framing

try:
    from pynba.wire import _encoder as compiled
except ImportError:
    compiled = None

# Google protobuf's classes, the tests' oracle, live with the tests.
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))
try:
    from pinba_pb2 import Request
except ImportError:
    Request = None

REQUEST_TAGS = {"app": "shop", "country": "fr", "version": "2.14"}
GROUPS = ("db", "cache", "http", "queue", "render")
OPS = ("select", "insert", "get", "set", "call")


def timers(count):
    out = []
    for i in range(count):
        tags = (("group", GROUPS[i % 5]), ("op", f"{OPS[(i // 5) % 5]}{i // 25}"))
        out.append((tags, 0.0001 * (i + 1), 1, 0.00002 * i, 0.000005 * i))
    return out


def request(timer_count):
    return (
        "web-1", "shop.example.com", "/users/{id}", 1, 5120, 24 << 20,
        0.0421, 0.0183, 0.0021, 200, 0, "https", REQUEST_TAGS, timers(timer_count),
    )  # fmt: skip


def timer_objects_request(timer_count):
    """``request(timer_count)`` with its timers as stopped pynba Timers, as a request ends."""
    from pynba.timer import Timer

    objects = [Timer(tags).start().stop() for tags, *_ in timers(timer_count)]
    return (*request(0)[:-1], objects)


def protobuf_encode(hostname, server_name, script_name, request_count, document_size,
                    memory_peak, request_time, ru_utime, ru_stime, status,
                    memory_footprint, schema, tags, timers):  # fmt: skip
    """What a client built on Google protobuf does: fill a message, serialize it."""
    message = Request()
    message.hostname = hostname
    message.server_name = server_name
    message.script_name = script_name
    message.request_count = request_count
    message.document_size = document_size
    message.memory_peak = memory_peak
    message.request_time = request_time
    message.ru_utime = ru_utime
    message.ru_stime = ru_stime
    message.status = status
    message.memory_footprint = memory_footprint
    message.schema = schema
    index = {}

    def word(text):
        i = index.get(text)
        if i is None:
            i = index[text] = len(index)
            message.dictionary.append(text)
        return i

    for name, value in tags.items():
        message.tag_name.append(word(name))
        message.tag_value.append(word(value))
    for timer_tags, value, hits, utime, stime in timers:
        pairs = sorted(timer_tags)
        message.timer_hit_count.append(hits)
        message.timer_value.append(value)
        message.timer_tag_count.append(len(pairs))
        for name, tag_value in pairs:
            message.timer_tag_name.append(word(name))
            message.timer_tag_value.append(word(tag_value))
        message.timer_ru_utime.append(utime)
        message.timer_ru_stime.append(stime)
    return message.SerializeToString()


def cost(function, args, budget):
    """Best µs per call over 5 runs of about ``budget`` seconds each."""
    number = 1
    while timeit.timeit(lambda: function(*args), number=number) < budget / 10:
        number *= 10
    runs = timeit.repeat(lambda: function(*args), number=number, repeat=5)
    return min(runs) / number * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per timing run")
    args = parser.parse_args()
    encoders = [("compiled", compiled.encode if compiled else None),
                ("pure", fallback.encode),
                ("protobuf", protobuf_encode if Request else None)]  # fmt: skip
    cases = [("bare (0 timers)", 0, request), ("typical (10 timers)", 10, request),
             ("heavy (200 timers)", 200, request),
             ("heavy, Timer objects", 200, timer_objects_request),
             ("25 timers", 25, request), ("100 timers", 100, request),
             ("800 timers", 800, request), ("2000 timers", 2000, request)]  # fmt: skip
    header = f"{'request':<22}{'bytes':>7}" + "".join(f"{name:>12}" for name, _ in encoders)
    print("µs per encode, best of 5")
    print(header + f"{'compiled/timer':>16}{'protobuf/compiled':>19}")
    for label, count, make in cases:
        data = make(count)
        size = len(fallback.encode(*data))
        row = f"{label:<22}{size:>7}"
        results = {}
        for name, function in encoders:
            if function is None or (name == "protobuf" and make is not request):
                row += f"{'n/a':>12}"
                continue
            results[name] = cost(function, data, args.budget)
            row += f"{results[name]:>12.3f}"
        if "compiled" in results and count:
            row += f"{results['compiled'] / count:>16.3f}"
        else:
            row += f"{'':>16}"
        if "compiled" in results and "protobuf" in results:
            row += f"{results['protobuf'] / results['compiled']:>18.1f}x"
        print(row)
    print()
    wire_forms(compiled.encode if compiled else fallback.encode, args.budget)


def wire_forms(encode, budget):
    """Cost and size of each wire form: unpacked, packed, packed + LZ4."""

    # Each form through a function of the same shape, so that the costs compare.
    def unpacked(*request):
        return encode(*request)

    def packed(*request):
        return encode(*request, True)

    def packed_lz4(*request):
        return framing.compress(encode(*request, True))

    forms = [("unpacked", unpacked), ("packed", packed)]
    if framing.LZ4_AVAILABLE:
        forms.append(("packed+LZ4", packed_lz4))
    implementation = "compiled" if encode is not fallback.encode else "pure"
    print(f"wire forms, {implementation} encoder: µs per encode (best of 5) and bytes")
    print(f"{'request':<22}" + "".join(f"{name + ' µs':>16}{'bytes':>8}" for name, _ in forms))
    for label, count in [("typical (10 timers)", 10), ("heavy (200 timers)", 200)]:
        data = request(count)
        row = f"{label:<22}"
        for _, function in forms:
            row += f"{cost(function, data, budget):>16.3f}{len(function(*data)):>8}"
        print(row)
    if not framing.LZ4_AVAILABLE:
        print("(packed+LZ4 needs the lz4 package: pip install lz4)")


if __name__ == "__main__":
    main()
