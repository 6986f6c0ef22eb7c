"""The smallest monitored WSGI application: ``@monitor`` and one timer.

    python src/examples/simple.py [PINBA_SERVER] [--serve]

Sends to PINBA_SERVER (argument or environment variable; default
127.0.0.1:30002). Without ``--serve`` it answers a few requests itself and
exits; with it, it serves http://127.0.0.1:8000/ until interrupted.
"""

import os
import sys
import time
import urllib.request
from threading import Thread
from wsgiref.simple_server import WSGIRequestHandler, make_server

from pynba import monitor, pynba

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")


def make_app(address):
    @monitor(address, tags={"app": "simple"})
    def app(environ, start_response):
        with pynba.timer(group="render", template="hello"):
            time.sleep(0.001)
            body = f"Hello from {environ['PATH_INFO']}\n".encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main(argv):
    serve = "--serve" in argv
    args = [a for a in argv if a != "--serve"]
    app = make_app(args[0] if args else PINBA_SERVER)
    app.reporter.raise_on_fail = True  # a demo should say when sending fails
    server = make_server("127.0.0.1", 8000 if serve else 0, app, handler_class=QuietHandler)
    if serve:
        server.serve_forever()
        return
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        for path in ("/", "/users", "/about"):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}") as page:
                print(page.status, page.read().decode().strip())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
