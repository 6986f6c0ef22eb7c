"""A Flask application monitored with ``pynba.flask.Pynba``.

    python src/examples/flask_app.py [PINBA_SERVER] [--serve]

Needs ``pip install '.[flask]'``. Sends to PINBA_SERVER (argument or
environment variable; default 127.0.0.1:30002), one packet per request,
named after the URL rule (``/users/<int:user_id>``). Without ``--serve`` it
answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import sys
import time

from _serve import run_wsgi
from flask import Flask

from pynba import pynba
from pynba.flask import Pynba

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


if __name__ == "__main__":
    run_wsgi(make_app, ["/", "/users/42", "/users/7"], sys.argv[1:])
