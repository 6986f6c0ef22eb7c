"""A Starlette application monitored by ``PynbaASGIMiddleware``, served by uvicorn.

    python src/examples/asgi_app.py [PINBA_SERVER] [--serve]

Needs ``pip install pynba[asgi] starlette``. Sends to PINBA_SERVER (argument
or environment variable; default 127.0.0.1:30002), one packet per request,
named after the route template (``/users/{id}``). Without ``--serve`` it
answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import asyncio
import os
import socket
import sys
import threading
import time
import urllib.request

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from pynba import pynba
from pynba.asgi import PynbaASGIMiddleware

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")


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


def main(argv):
    serve = "--serve" in argv
    args = [a for a in argv if a != "--serve"]
    app = make_app(args[0] if args else PINBA_SERVER)
    if serve:
        uvicorn.run(app, host="127.0.0.1", port=8000)
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    try:
        for path in ("/", "/users/42", "/users/7"):
            url = f"http://127.0.0.1:{sock.getsockname()[1]}{path}"
            with urllib.request.urlopen(url) as page:
                print(page.status, path, page.read().decode())
    finally:
        server.should_exit = True
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
