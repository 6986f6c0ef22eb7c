"""A Flask application monitored with ``pynba.flask.Pynba``.

    python src/examples/flask_app.py [PINBA_SERVER] [--serve]

Needs ``pip install pynba[flask]``. Sends to PINBA_SERVER (argument or
environment variable; default 127.0.0.1:30002), one packet per request,
named after the URL rule (``/users/<int:user_id>``). Without ``--serve`` it
answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import logging
import os
import sys
import threading
import time
import urllib.request

from flask import Flask
from werkzeug.serving import make_server

from pynba import pynba
from pynba.flask import Pynba

PINBA_SERVER = os.environ.get("PINBA_SERVER", "127.0.0.1:30002")

app = Flask(__name__)
monitoring = Pynba()  # configured in make_app(), as with other Flask extensions


@app.route("/")
def home():
    return "home"


@app.route("/users/<int:user_id>")
def user(user_id):
    with pynba.timer(group="db", op="select"):
        time.sleep(0.001)  # a pretend database round trip
    return f"user{user_id}"


def make_app(address):
    app.config["PINBA_SERVER"] = address
    app.config["PINBA_RAISE_ON_FAIL"] = True  # a demo should say when sending fails
    monitoring.tags = {"app": "flask-example"}
    monitoring.init_app(app)
    return app


def main(argv):
    serve = "--serve" in argv
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    args = [a for a in argv if a != "--serve"]
    server = make_server(
        "127.0.0.1", 8000 if serve else 0, make_app(args[0] if args else PINBA_SERVER)
    )
    if serve:
        server.serve_forever()
        return
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        for path in ("/", "/users/42", "/users/7"):
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}") as page:
                print(page.status, path, page.read().decode())
    finally:
        server.shutdown()
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1:])
