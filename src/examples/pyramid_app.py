"""A Pyramid application monitored with ``pynba.pyramid.monitor``.

    python src/examples/pyramid_app.py [PINBA_SERVER] [--serve]

Needs ``pip install pynba[pyramid]``. Sends to PINBA_SERVER (argument or
environment variable; default 127.0.0.1:30002), one packet per request,
named after the route pattern (``/users/{id}``). Without ``--serve`` it
answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import os
import sys
import threading
import time
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

from pyramid.config import Configurator
from pyramid.response import Response

from pynba import pynba
from pynba.pyramid import monitor

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")


def home(request):
    return Response("home")


def user(request):
    with pynba.timer(group="db", op="select"):
        time.sleep(0.001)  # a pretend database round trip
    return Response(f"user{request.matchdict['id']}")


def make_app(address):
    settings = {"pinba.server": address, "pinba.raise_on_fail": "true"}
    with Configurator(settings=settings) as config:
        config.add_route("home", "/")
        config.add_view(home, route_name="home")
        config.add_route("user", "/users/{id}")
        config.add_view(user, route_name="user")
        app = config.make_wsgi_app()
    return monitor(app, tags={"app": "pyramid-example"})


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main(argv):
    serve = "--serve" in argv
    args = [a for a in argv if a != "--serve"]
    app = make_app(args[0] if args else PINBA_SERVER)
    server = make_server("127.0.0.1", 8000 if serve else 0, app, handler_class=QuietHandler)
    if serve:
        server.serve_forever()
        return
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        for path in ("/", "/users/42", "/users/7"):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}") as page:
                print(page.status, path, page.read().decode())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
