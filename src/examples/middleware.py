"""A WSGI application wrapped in ``PynbaMiddleware``, with timers around its
database and cache calls (both faked here) and route templates as script names.

    python src/examples/middleware.py [PINBA_SERVER] [--serve]

Sends to PINBA_SERVER (argument or environment variable; default
127.0.0.1:30002). Without ``--serve`` it answers a few requests itself and
exits; with it, it serves http://127.0.0.1:8000/ until interrupted.
"""

import re
import sys
import time

from _serve import run_wsgi

from pynba import PynbaMiddleware, pynba

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


if __name__ == "__main__":
    run_wsgi(make_app, ["/", "/users/42", "/users/42", "/users/7", "/missing"], sys.argv[1:])
