"""``PynbaMiddleware`` under gevent's WSGI server, serving concurrent greenlets.

    python src/examples/gevent_server.py [PINBA_SERVER] [REQUESTS]

Needs ``pip install gevent``. Each request sleeps (cooperatively) inside a
timer tagged with its own number, so the requests overlap; each packet
carries its own request's timers only, since every greenlet has its own
context. Sends to PINBA_SERVER (argument or environment variable; default
127.0.0.1:30002), then exits.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
import urllib.request  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from pynba import PynbaMiddleware, pynba  # noqa: E402

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")


def application(environ, start_response):
    number = environ["PATH_INFO"].rpartition("/")[2]
    with pynba.timer(group="work", request=number):
        gevent.sleep(0.02)  # other requests run meanwhile
    with pynba.timer(group="work", request=number, step="second"):
        gevent.sleep(0.01)
    pynba.script_name = "/work/{number}"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [number.encode()]


def main(argv):
    address = argv[0] if argv else PINBA_SERVER
    requests = int(argv[1]) if len(argv) > 1 else 10
    app = PynbaMiddleware(application, address, tags={"app": "gevent-example"})
    app.reporter.raise_on_fail = True  # a demo should say when sending fails
    # A pool, so that stop() waits for the handlers: a request ends (and its
    # packet is sent) when the server closes the response, which can be after
    # the client has read the whole answer.
    server = WSGIServer(("127.0.0.1", 0), app, spawn=Pool(64), log=None)
    server.start()

    def fetch(number):
        url = f"http://127.0.0.1:{server.server_port}/work/{number}"
        with urllib.request.urlopen(url) as page:
            return page.read().decode()

    clients = [gevent.spawn(fetch, number) for number in range(requests)]
    gevent.joinall(clients, raise_error=True)
    print("answers:", " ".join(client.value for client in clients))
    server.stop(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1:])
