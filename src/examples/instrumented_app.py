"""A Flask application timed with no timer in its code: PostgreSQL, Redis, an outgoing HTTP call.

The ``instrument`` option (``PINBA_INSTRUMENT`` in ``app.config``) turns on
pynba's automatic timers for the database, the cache and the HTTP client,
so each request to ``/users/<id>`` sends, with no ``pynba.timer`` written:

- ``{group: cache, op: get, server: <host:port>}``: the user looked up in Redis;
- on a miss, ``{group: db, op: select, db: <database>}`` (psycopg) and
  ``{group: cache, op: set, server: <host:port>}``: read and kept for a minute;
- ``{group: http, op: get, host: <host:port>, status: 2xx}``: the user's
  recommendations, asked of another service with httpx.

The servers come from the environment:

- ``DATABASE_URL``: PostgreSQL (``postgresql://user@127.0.0.1:5432/shop``);
- ``REDIS_URL``: Redis (``redis://127.0.0.1:6379/0``);
- ``RECOMMENDATIONS_URL``: the HTTP service (``http://127.0.0.1:8080``),
  asked for ``<RECOMMENDATIONS_URL>/users/<id>/recommendations``;
- ``PINBA_SERVER``: where the packets go (default ``127.0.0.1:30002``).

Needs ``pip install '.[flask]' 'psycopg[binary]' redis httpx``. To see the
timers, run ``pynba listen`` in one terminal, and in another::

    export DATABASE_URL=... REDIS_URL=... RECOMMENDATIONS_URL=...
    python src/examples/instrumented_app.py              # a few requests, then exits
    python src/examples/instrumented_app.py --serve      # http://127.0.0.1:8000/users/1
    gunicorn --chdir src/examples 'instrumented_app:create_app()'   # or a real server

``pynba listen`` prints each request with its timers, one line each; the
first request for a user::

    script_name      '/users/<int:user_id>'
    ...
    tags             app=instrumented-example
    timers           4
      group=cache op=get server=127.0.0.1:6379: 1 hit(s), 0.374 ms
      db=shop group=db op=select: 1 hit(s), 0.610 ms
      group=cache op=set server=127.0.0.1:6379: 1 hit(s), 0.276 ms
      group=http host=127.0.0.1:8080 op=get status=2xx: 1 hit(s), 2.370 ms

The ``users`` table is made (and filled with three users) at start-up if
it does not exist.
"""

import os
import sys
import threading

import httpx
import psycopg
import redis
from _serve import run_wsgi
from flask import Flask, abort, jsonify

from pynba.flask import Pynba

#: The integrations this application's requests use (PINBA_INSTRUMENT="all" would do too).
INSTRUMENT = ["db", "cache", "http"]
USERS = [(1, "ada"), (2, "grace"), (3, "barbara")]


def make_app(address):
    """The application, monitored by ``address``'s Pinba server, its libraries timed."""
    app = Flask(__name__)
    app.config["PINBA_SERVER"] = address
    app.config["PINBA_INSTRUMENT"] = INSTRUMENT
    # First: the integrations are turned on here, before the clients below are made.
    Pynba(app, tags={"app": "instrumented-example"})

    database_url = os.environ["DATABASE_URL"]
    cache = redis.Redis.from_url(os.environ["REDIS_URL"])
    recommendations = httpx.Client(base_url=os.environ["RECOMMENDATIONS_URL"], timeout=5)
    connections = threading.local()  # one database connection per thread, opened when needed

    def database():
        if getattr(connections, "current", None) is None:
            connections.current = psycopg.connect(database_url, autocommit=True)
        return connections.current

    with psycopg.connect(database_url, autocommit=True) as connection:  # start-up: not timed
        connection.execute("CREATE TABLE IF NOT EXISTS users (id integer PRIMARY KEY, name text)")
        for user in USERS:
            connection.execute("INSERT INTO users VALUES (%s, %s) ON CONFLICT DO NOTHING", user)

    @app.route("/users/<int:user_id>")
    def user(user_id):
        key = f"user:{user_id}"
        name = cache.get(key)
        if name is None:
            row = database().execute("SELECT name FROM users WHERE id = %s", (user_id,)).fetchone()
            if row is None:
                abort(404)
            name = row[0].encode()
            cache.set(key, name, ex=60)
        answer = recommendations.get(f"/users/{user_id}/recommendations")
        answer.raise_for_status()
        return jsonify(id=user_id, name=name.decode(), recommendations=answer.json())

    return app


def create_app():
    """The application, reporting to ``PINBA_SERVER``: for a WSGI server (gunicorn)."""
    return make_app(os.environ.get("PINBA_SERVER", "127.0.0.1:30002"))


if __name__ == "__main__":
    run_wsgi(make_app, ["/users/1", "/users/1", "/users/2"], sys.argv[1:])
