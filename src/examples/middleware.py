"""A WSGI application wrapped in ``PynbaMiddleware``, with timers around its
database and cache calls (both faked here) and route templates as script names.

    python src/examples/middleware.py [PINBA_SERVER] [--serve]

Sends to PINBA_SERVER (argument or environment variable; default
127.0.0.1:30002). Without ``--serve`` it answers a few requests itself and
exits; with it, it serves http://127.0.0.1:8000/ until interrupted.
"""

import os
import re
import sys
import time
import urllib.error
import urllib.request
from threading import Thread
from wsgiref.simple_server import WSGIRequestHandler, make_server

from pynba import PynbaMiddleware, pynba

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")

CACHE = {}


# Library code: it only knows the pynba proxy. The decorator is applied at
# import time and times each call made during a request.
@pynba.timer(group="db", op="select")
def fetch_user(user_id):
    time.sleep(0.002)  # a pretend database round trip
    return {"id": user_id, "name": f"user{user_id}"}


def cached_user(user_id):
    with pynba.timer(group="cache", op="get"):
        user = CACHE.get(user_id)
    if user is None:
        user = fetch_user(user_id)
        with pynba.timer(group="cache", op="set"):
            CACHE[user_id] = user
    return user


ROUTES = [
    (re.compile(r"^/users/(\d+)$"), "/users/{id}"),
    (re.compile(r"^/$"), "/"),
]


def route_template(environ):
    """Report /users/42 and /users/7 together, as /users/{id}."""
    return environ.get("example.route", "unknown")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    for pattern, template in ROUTES:
        match = pattern.match(path)
        if match:
            environ["example.route"] = template
            break
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    if match.groups():
        user = cached_user(int(match.group(1)))
        body = f"{user['name']}\n".encode()
    else:
        body = b"home\n"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def make_app(address):
    return PynbaMiddleware(
        application,
        address,
        prefix="example:",
        script_name=route_template,
        tags={"app": "middleware-example"},
        raise_on_fail=True,  # a demo should say when sending fails
    )


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
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        for path in ("/", "/users/42", "/users/42", "/users/7", "/missing"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}") as page:
                    print(page.status, path, page.read().decode().strip())
            except urllib.error.HTTPError as error:
                print(error.code, path)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
