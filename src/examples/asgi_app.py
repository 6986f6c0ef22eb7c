"""A Starlette application monitored by ``PynbaASGIMiddleware``, served by uvicorn.

    python src/examples/asgi_app.py [PINBA_SERVER] [--serve]

Needs ``pip install '.[asgi]' starlette``. Sends to PINBA_SERVER (argument
or environment variable; default 127.0.0.1:30002), one packet per request,
named after the route template (``/users/{id}``). Without ``--serve`` it
answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import asyncio
import sys

from _serve import run_asgi
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pynba import pynba
from pynba.asgi import PynbaASGIMiddleware


async def fetch_user(user_id):
    with pynba.timer(group="db", op="select"):
        await asyncio.sleep(0.001)  # a pretend database round trip
    return f"user{user_id}"


async def user(request):
    return PlainTextResponse(await fetch_user(request.path_params["id"]))


async def home(request):
    return PlainTextResponse("home")


def make_app(address):
    app = Starlette(routes=[Route("/", home), Route("/users/{id:int}", user)])
    return PynbaASGIMiddleware(app, address, tags={"app": "asgi-example"}, raise_on_fail=True)


if __name__ == "__main__":
    run_asgi(make_app, ["/", "/users/42", "/users/7"], sys.argv[1:])
