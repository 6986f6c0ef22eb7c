"""The smallest monitored WSGI application: ``@monitor`` and one timer.

    python src/examples/simple.py [PINBA_SERVER] [--serve]

Sends to PINBA_SERVER (argument or environment variable; default
127.0.0.1:30002). Without ``--serve`` it answers a few requests itself and
exits; with it, it serves http://127.0.0.1:8000/ until interrupted.
"""

import sys
import time

from _serve import run_wsgi

from pynba import monitor, pynba


def make_app(address):
    # raise_on_fail: a demo should say when sending fails
    @monitor(address, tags={"app": "simple"}, raise_on_fail=True)
    def app(environ, start_response):
        with pynba.timer(group="render", template="hello"):
            time.sleep(0.001)
            body = f"Hello from {environ['PATH_INFO']}\n".encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


if __name__ == "__main__":
    run_wsgi(make_app, ["/", "/users", "/about"], sys.argv[1:])
