"""A monitored request's cost with cold caches, counted by callgrind: the same on every run.

Under load, a worker runs other code between two requests (the server's
parsing and writing, the kernel's network stack), and that code evicts
pynba's from the caches. A request then pays for each line of code and
data it touches, more than for its instructions (docs/performance.md,
"Under load"). Timings of this are noisy; callgrind's counts are not: for
the same build, Python and inputs they vary by well under 1% from one run
to the next, however busy the machine.

Each path serves N requests in a child process run by ``valgrind
--tool=callgrind --cache-sim=yes``, called the way a WSGI server calls them,
with other code and data touched between two requests (a 2 MB buffer, a JSON
round trip, a regular expression: the server's work, stood in for). The
simulated caches are a core's: 32 KB of instructions and 32 KB of data
(L1), 512 KB for both (the last level callgrind models, standing for L2).
Each path runs twice, N and 3N requests, and the difference over 2N is
what one request costs, the start-up left out.

Paths: ``load.py``'s own (its ``HELLO_APP``): ``floor`` (the bare
hello-world app plus the system calls of any Pinba client, 2 getrusage and
one send of a same-sized datagram) and ``monitored`` (``PynbaMiddleware``
with one timer); and ``least``, a lower bound of monitoring in Python:
a middleware in plain Python (no pynba) that keeps its request in a
context variable, times it and the same block, notes the status and the
body's size, and from its body's ``close()`` makes the floor's system
calls and works out the request's time and CPU, sending the floor's
datagram as it is (nothing encoded, named or tagged). Printed, per
request: instructions, L1 instruction misses (about one per 64-byte line
of code run for the first time since the last request), last-level
instruction misses, L1 and last-level data read misses; monitored - floor
by shared object (pynba's modules, libpython, the C library); then least,
least - floor, monitored - least, and least - floor by shared object
(for the first source only, with ``--against``).

With ``--against SRC``, the same for pynba from SRC (another checkout's
``src``), and the difference.

Run: python benchmarks/cold_request.py [--requests 300] [--against ../other/src]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ("Ir", "I1mr", "ILmr", "D1mr", "DLmr")
LABELS = {
    "Ir": "instructions",
    "I1mr": "L1 code misses",
    "ILmr": "LL code misses",
    "D1mr": "L1 data misses",
    "DLmr": "LL data misses",
}
CACHES = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=524288,8,64")

CHILD = r"""
import contextvars, io, json, os, re, resource, socket, sys, time

import pynba as package

print(package.__file__, " ".join(package.compiled_modules()))

listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
listener.bind(("127.0.0.1", 0))
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
# load.py's app, its floor and monitored paths, sending here.
os.environ["PYNBA_LOAD_SERVER"] = os.environ["PYNBA_LOAD_FLOOR_SERVER"] = "127.0.0.1:%d" % (
    listener.getsockname()[1]
)
sys.path.insert(0, os.environ["PYNBA_BENCHMARKS"])
from load import HELLO_APP

app_module = {}
exec(HELLO_APP, app_module)
floor, monitored = app_module["floor"], app_module["monitored"]


def environ():
    # What gunicorn hands a GET / over HTTP/1.1.
    return {
        "wsgi.errors": sys.stderr, "wsgi.version": (1, 0), "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.file_wrapper": object,
        "wsgi.input_terminated": True, "SERVER_SOFTWARE": "gunicorn/23.0.0",
        "wsgi.input": io.BytesIO(), "gunicorn.socket": None, "REQUEST_METHOD": "GET",
        "QUERY_STRING": "", "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "load", "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "PATH_INFO": "/", "SCRIPT_NAME": "",
    }


def start_response(status, headers, exc_info=None):
    return None


BUFFER = bytearray(2 << 20)
DOCUMENT = {"a": [1, 2, 3, {"b": "c" * 50}], "d": "x" * 200, "e": list(range(50))}
PATTERN = re.compile(r"(\w+)=(\d+)")


def between_requests(i):
    start = i % 4096
    BUFFER[start::4096] = bytes(len(BUFFER[start::4096]))
    json.loads(json.dumps(DOCUMENT))
    PATTERN.findall("a=1 b=2 c=3 d=4")


served = set()  # the types of the bodies served: which app this child ran


def serve(app, i):
    response = app(environ(), start_response)
    served.add(type(response).__name__)
    for chunk in response:
        pass
    close = getattr(response, "close", None)
    if close is not None:
        close()
    while True:  # the packets, drained as a Pinba server would
        try:
            listener.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break


# A lower bound of what monitoring a request costs in Python: a middleware in
# plain Python (no pynba) that keeps its request in a context variable, where
# the app's timer finds it, times the request and the same block as the
# monitored app, notes the status and the body's size, and at the body's close
# makes the floor's system calls and works out the request's time and CPU. It
# sends the floor's datagram as it is: nothing encoded, named or tagged.
hello, RUSAGE_WHO = app_module["hello"], app_module["RUSAGE_WHO"]
floor_socket = app_module["floor_socket"]
FLOOR_DATAGRAM, FLOOR_ADDRESS = app_module["FLOOR_DATAGRAM"], app_module["FLOOR_ADDRESS"]
current_request = contextvars.ContextVar("current_request", default=None)


class LeastTimer:
    __slots__ = ("timers", "start")

    def __enter__(self):
        noted = current_request.get()
        self.timers = None if noted is None else noted["timers"]
        self.start = time.perf_counter()

    def __exit__(self, *error):
        if self.timers is not None:
            self.timers.append(time.perf_counter() - self.start)


class LeastBody:
    __slots__ = ("body", "noted")

    def __init__(self, body, noted):
        self.body = body
        self.noted = noted

    def __iter__(self):
        return iter(self.body)

    def close(self):
        noted, self.noted = self.noted, None
        if noted is None:
            return
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            usage = resource.getrusage(RUSAGE_WHO)
            start = noted["usage"]
            noted["seconds"] = time.perf_counter() - noted["start"]
            noted["cpu"] = (usage.ru_utime - start.ru_utime, usage.ru_stime - start.ru_stime)
            floor_socket.sendto(FLOOR_DATAGRAM, FLOOR_ADDRESS)


def least(environ, start_response):
    noted = {
        "start": time.perf_counter(),
        "usage": resource.getrusage(RUSAGE_WHO),
        "path": environ.get("PATH_INFO"),
        "timers": [],
    }

    def noting_start_response(status, headers, exc_info=None):
        noted["status"] = status
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    token = current_request.set(noted)
    try:
        with LeastTimer():
            body = hello(environ, noting_start_response)
    finally:
        current_request.reset(token)
    if type(body) is list:
        noted["size"] = sum(map(len, body))
    return LeastBody(body, noted)


app = {"floor": floor, "monitored": monitored, "least": least}[sys.argv[1]]
for i in range(50):  # warm-up: every code path run once, every cache filled
    serve(app, i)
    between_requests(i)
for i in range(int(sys.argv[2])):
    between_requests(i)
    serve(app, i)
print(*sorted(served))
"""

#: The type of the body each path serves.
BODIES = {"floor": "list", "monitored": "_MonitoredRequest", "least": "LeastBody"}


def run_child(
    label: int, source: str, path: str, requests: int, out_dir: str
) -> dict[str, list[int]]:
    """Callgrind's self counts by shared object for ``requests`` requests of ``path``."""
    out = os.path.join(out_dir, f"{label}.{path}.{requests}")
    env = dict(
        os.environ, PYTHONPATH=source, PYTHONHASHSEED="0", PYNBA_BENCHMARKS=str(ROOT / "benchmarks")
    )
    child = subprocess.run(
        [
            "valgrind", "-q", "--tool=callgrind", "--cache-sim=yes", *CACHES,
            f"--callgrind-out-file={out}", sys.executable, "-c", CHILD, path, str(requests),
        ],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if child.returncode != 0:
        sys.exit(f"the {path} child failed: {child.stderr.strip()}")
    lines = child.stdout.splitlines()
    used = lines[0].split() if lines else []
    if not used or not used[0].startswith(os.path.join(source, "")):
        sys.exit(f"the child ran pynba from {used[:1]}, not from {source}")
    if lines[1:] != [BODIES[path]]:
        sys.exit(f"the {path} child served bodies {lines[1:]}, not {BODIES[path]}")
    if len(used) == 1:
        print(f"note: pynba from {source} runs with no compiled module")
    return counts_by_object(out)


def counts_by_object(callgrind_out: str) -> dict[str, list[int]]:
    """Self counts of ``EVENTS``, summed by the shared object the code is in.

    Read from callgrind's file: ``ob=`` names the object of the cost lines
    that follow; the line after a ``calls=`` line is the cost of the call
    (the callee's, counted where it runs), not the caller's own.
    """
    names: dict[str, str] = {}
    by_object: dict[str, list[int]] = collections.defaultdict(lambda: [0] * len(EVENTS))
    columns: list[int] = []
    current = "?"
    skip_next = False
    with open(callgrind_out, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith("events:"):
                recorded = line.split()[1:]
                columns = [recorded.index(event) for event in EVENTS]
            elif line.startswith("ob="):
                current = object_name(_name(line[3:], names))
            elif line.startswith("cob="):
                _name(line[4:], names)  # defined where first named, as a callee's
            elif line.startswith("calls="):
                skip_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                counts = line.split()[1:]  # after the position
                totals = by_object[current]
                for i, column in enumerate(columns):
                    if column < len(counts):
                        totals[i] += int(counts[column])
    return by_object


def _name(text: str, names: dict[str, str]) -> str:
    """A compressed name of callgrind's file: ``(id) name`` defines it, ``(id)`` uses it."""
    text = text.strip()
    if text.startswith("("):
        key, _, name = text.partition(")")
        if name.strip():
            names[key] = name.strip()
        return names.get(key, "?")
    return text


def object_name(path: str) -> str:
    """``pynba.wsgi`` for pynba's modules, the file's name for the others."""
    name = os.path.basename(path).split(".cpython-")[0]
    if "/pynba/" in path:
        package = path.split("/pynba/", 1)[1].split(".cpython-")[0]
        return "pynba." + package.replace("/", ".")
    return name


def per_request(label: int, source: str, path: str, requests: int, out_dir: str, pool) -> dict:
    """One request's counts by object: (3N requests - N requests) / 2N."""
    short, long = pool.map(
        lambda n: run_child(label, source, path, n, out_dir), (requests, 3 * requests)
    )
    objects = set(short) | set(long)
    zero = [0] * len(EVENTS)
    return {
        name: [
            (b - a) / (2 * requests)
            for a, b in zip(short.get(name, zero), long.get(name, zero), strict=True)
        ]
        for name in objects
    }


def total(counts: dict) -> list[float]:
    return [sum(values[i] for values in counts.values()) for i in range(len(EVENTS))]


def difference(a: dict, b: dict) -> dict:
    zero = [0.0] * len(EVENTS)
    return {
        name: [x - y for x, y in zip(a.get(name, zero), b.get(name, zero), strict=True)]
        for name in set(a) | set(b)
    }


def row(label: str, values: list[float]) -> str:
    return f"{label:<28}" + "".join(f"{v:>16,.0f}" for v in values)


def print_by_object(label: str, counts: dict) -> None:
    """``counts`` by shared object, those with the most code misses first (the small left out)."""
    print(f"{label}, by shared object (the largest in code misses):")
    for name, values in sorted(counts.items(), key=lambda item: -item[1][1]):
        if abs(values[1]) >= 2 or abs(values[0]) >= 100:
            print(row("  " + name, values))


def measure(label: int, source: str, requests: int, out_dir: str, pool, least: bool) -> dict:
    floor = per_request(label, source, "floor", requests, out_dir, pool)
    monitored = per_request(label, source, "monitored", requests, out_dir, pool)
    print(f"\npynba from {source}: per request")
    print(" " * 28 + "".join(f"{LABELS[e]:>16}" for e in EVENTS))
    print(row("floor", total(floor)))
    print(row("monitored", total(monitored)))
    added = difference(monitored, floor)
    print(row("monitored - floor", total(added)))
    print_by_object("monitored - floor", added)
    if least:
        least_path = per_request(label, source, "least", requests, out_dir, pool)
        least_added = difference(least_path, floor)
        print(row("least", total(least_path)))
        print(row("least - floor", total(least_added)))
        print(row("monitored - least", total(difference(added, least_added))))
        print_by_object("least - floor", least_added)
    return added


def positive(text: str) -> int:
    """An option's value that must be a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=positive, default=300, help="N (default 300)")
    parser.add_argument("--against", help="another checkout's src, measured the same way")
    args = parser.parse_args()
    missing = [tool for tool in ("valgrind",) if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"cold_request.py needs {' and '.join(missing)} (Debian: apt-get install valgrind)"
        )
    sources = [str(ROOT / "src")] + ([os.path.abspath(args.against)] if args.against else [])
    print(f"{args.requests} and {3 * args.requests} requests a path; simulated caches "
          + " ".join(CACHES))  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="pynba-cold-") as out_dir,
        ThreadPoolExecutor(2) as pool,
    ):
        results = [
            measure(label, source, args.requests, out_dir, pool, least=label == 0)
            for label, source in enumerate(sources)
        ]
    if len(results) == 2:
        print(f"\nmonitored - floor, {sources[0]} - {sources[1]}:")
        print(" " * 28 + "".join(f"{LABELS[e]:>16}" for e in EVENTS))
        print(
            row(
                "compare",
                [a - b for a, b in zip(total(results[0]), total(results[1]), strict=True)],
            )
        )


if __name__ == "__main__":
    main()
