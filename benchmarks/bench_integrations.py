"""Per-request overhead of each framework integration: monitored minus bare.

Each application is called the way its server calls it, in this process, no
network between: WSGI applications (Django, Flask, Pyramid) are called,
iterated and closed; ASGI applications (a raw one, Starlette) are awaited
with in-memory ``receive``/``send``. The same application is measured bare
and monitored, reporting to a loopback UDP socket; frameworks that are not
installed are skipped.
Run: python benchmarks/bench_integrations.py [--quick]
"""

import argparse
import asyncio
import socket
import timeit
import warnings

from pynba.wire.encoder import IMPLEMENTATION

# Pyramid imports pkg_resources, which warns on recent setuptools.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

ENVIRON = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/users/42",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "127.0.0.1",
    "wsgi.url_scheme": "http",
    "wsgi.version": (1, 0),
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
    "wsgi.errors": None,
}
SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/users/42",
    "raw_path": b"/users/42",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1")],
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
}


class Target:
    """A loopback UDP socket that nobody reads.

    Once its buffer is full the kernel drops what arrives, which costs the
    sender the same; a reading thread would compete for the GIL instead.
    """

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        host, port = self.sock.getsockname()
        self.address = f"{host}:{port}"


def start_response(status, headers, exc_info=None):
    return None


def wsgi_caller(app):
    import io

    def one():
        environ = dict(ENVIRON, **{"wsgi.input": io.BytesIO()})
        response = app(environ, start_response)
        for _chunk in response:
            pass
        close = getattr(response, "close", None)
        if close is not None:
            close()

    return one


def asgi_caller(app, loop):
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def many(count):
        for _ in range(count):
            await app(dict(SCOPE), receive, send)

    return lambda count: loop.run_until_complete(many(count))


# -- the applications: (bare, monitored) pairs ---------------------------------


def django_pair(address):
    import django
    from django.conf import settings
    from django.http import HttpResponse
    from django.test import override_settings
    from django.urls import path

    def user(request, user_id):
        return HttpResponse("hello world")

    module = type(django)("bench_django_urls")
    module.urlpatterns = [path("users/<int:user_id>", user)]
    import sys

    sys.modules[module.__name__] = module
    settings.configure(
        ROOT_URLCONF=module.__name__,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="benchmark",
        MIDDLEWARE=[],
        PINBA_SERVER=address,
    )
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    bare = WSGIHandler()
    with override_settings(MIDDLEWARE=["pynba.django.PynbaMiddleware"]):
        monitored = WSGIHandler()
    return wsgi_caller(bare), wsgi_caller(monitored)


def flask_pair(address):
    from flask import Flask

    from pynba.flask import init_app

    def make():
        app = Flask("bench")
        app.add_url_rule("/users/<int:user_id>", "user", lambda user_id: "hello world")
        return app

    bare, monitored = make(), make()
    init_app(monitored, address)
    return wsgi_caller(bare), wsgi_caller(monitored)


def pyramid_pair(address):
    from pyramid.config import Configurator
    from pyramid.response import Response

    from pynba.pyramid import monitor

    def make():
        with Configurator() as config:
            config.add_route("user", "/users/{id}")
            config.add_view(lambda request: Response("hello world"), route_name="user")
            return config.make_wsgi_app()

    return wsgi_caller(make()), wsgi_caller(monitor(make(), address))


def raw_asgi_pair(address, loop):
    from pynba.asgi import PynbaASGIMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello world"})

    return asgi_caller(app, loop), asgi_caller(PynbaASGIMiddleware(app, address), loop)


def starlette_pair(address, loop):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from pynba.asgi import PynbaASGIMiddleware

    async def user(request):
        return PlainTextResponse("hello world")

    def make():
        return Starlette(routes=[Route("/users/{id:int}", user)])

    monitored = PynbaASGIMiddleware(make(), address)
    return asgi_caller(make(), loop), asgi_caller(monitored, loop)


def best_wsgi(one, number, repeat):
    return min(timeit.repeat(one, number=number, repeat=repeat)) / number * 1e6


def best_asgi(many, number, repeat):
    return min(timeit.repeat(lambda: many(number), number=1, repeat=repeat)) / number * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    number, repeat = (200, 3) if args.quick else (2000, 7)
    target = Target()
    loop = asyncio.new_event_loop()
    cases = [
        ("ASGI (raw application)", lambda: raw_asgi_pair(target.address, loop), best_asgi),
        ("ASGI (Starlette route)", lambda: starlette_pair(target.address, loop), best_asgi),
        ("Django (WSGI handler)", lambda: django_pair(target.address), best_wsgi),
        ("Flask", lambda: flask_pair(target.address), best_wsgi),
        ("Pyramid", lambda: pyramid_pair(target.address), best_wsgi),
    ]
    print(f"encoder: {IMPLEMENTATION}; best of {repeat} runs of {number} requests")
    print(f"{'integration':<26} {'bare us':>9} {'monitored us':>13} {'overhead us':>12}")
    for label, make, best in cases:
        try:
            bare, monitored = make()
        except ImportError as error:
            print(f"{label:<26} skipped ({error.name} is not installed)")
            continue
        bare_cost = best(bare, number, repeat)
        monitored_cost = best(monitored, number, repeat)
        print(
            f"{label:<26} {bare_cost:>9.2f} {monitored_cost:>13.2f} "
            f"{monitored_cost - bare_cost:>12.2f}"
        )
    loop.close()


if __name__ == "__main__":
    main()
