"""A Pyramid application monitored with ``pynba.pyramid.monitor``.

    python src/examples/pyramid_app.py [PINBA_SERVER] [--serve]

Needs ``pip install '.[pyramid]'``. Sends to PINBA_SERVER (argument or
environment variable; default 127.0.0.1:30002), one packet per request,
named after the route pattern (``/users/{id}``). Without ``--serve`` it
answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import sys
import time

from _serve import run_wsgi
from pyramid.config import Configurator
from pyramid.response import Response

from pynba import pynba
from pynba.pyramid import monitor


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


if __name__ == "__main__":
    run_wsgi(make_app, ["/", "/users/42", "/users/7"], sys.argv[1:])
