"""The workload a profile-guided build trains pynba's compiled modules on.

``PYNBA_PGO=1 pip install .`` (see setup.py) builds the compiled modules
with GCC's ``-fprofile-generate``, runs this script on them, and builds
them again with the profile it leaves (``-fprofile-use``): the code these
requests run is laid out together, the rest apart, so that a request
touches fewer lines of code.

It runs what requests run: the WSGI middleware with and without timers
(context manager, decorator, start/stop, ``timer.add``), request tags,
statuses, paths and hosts that vary, a reporter sending to a UDP socket on
127.0.0.1 (bound here and never read: the kernel drops what overflows),
and the encoder on small and large requests, in both wire forms. The
automatic timers' hooks are left out: they need their libraries.

Run: python benchmarks/pgo_training.py MODULE [MODULE ...]
Exits with status 1 unless each pynba MODULE named that it imported ran
compiled (and it imported one at least).
"""

from __future__ import annotations

import socket
import sys

REQUESTS = 20_000
ENCODES = 2_000


def run() -> None:
    from pynba import PynbaMiddleware, encode, pynba

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    address = "{}:{}".format(*sink.getsockname())

    @pynba.timer(group="db", op="select")
    def query() -> int:
        return 1

    def application(environ: dict, start_response) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith("/users"):
            with pynba.timer(group="cache", op="get"):
                query()
            render = pynba.timer(group="render", template="user")
            render.start()
            pynba.set_tag("country", "fr")
            render.stop()
        elif path == "/report":
            timer = pynba.timer(group="db", op="insert")
            timer.add(0.002, hit_count=3)
            for _ in range(10):
                query()
        start_response("404 Not Found" if path == "/missing" else "200 OK", HEADERS)
        return [b"Hello, world!\n"]

    app = PynbaMiddleware(application, address)
    paths = ["/", "/users/1", "/users/2", "/report", "/missing", "/static/app.js"]
    for i in range(REQUESTS):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": paths[i % len(paths)],
            "SCRIPT_NAME": "",
            "QUERY_STRING": "page=1" if i % 3 else "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "example.com" if i % 2 else "127.0.0.1:8000",
            "wsgi.url_scheme": "http",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        body = app(environ, start_response)
        for _chunk in body:
            pass
        body.close()

    timers = [({"group": "db", "op": f"op{i % 20}"}, 0.001, 1, 0.0, 0.0) for i in range(200)]
    for i in range(ENCODES):
        encode(
            "web1", "example.com", "/index", 1, 14, 50 << 20, 0.01, 0.001, 0.0, 200, 0,
            None, [("country", "fr")], timers[: (1, 10, 200)[i % 3]], bool(i % 2),
        )  # fmt: skip
    sink.close()


HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "14")]


def start_response(status: str, headers: list, exc_info: object = None) -> None:
    return None


def main(argv: list[str]) -> int:
    run()
    from pynba import compiled_modules

    # Of the modules named, those the workload imported (not the hooks').
    ran = {name for name in argv if f"pynba.{name}" in sys.modules}
    missing = sorted(ran - set(compiled_modules()))
    if missing or not ran:
        print(f"pgo_training: not compiled: {', '.join(missing) or argv}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
