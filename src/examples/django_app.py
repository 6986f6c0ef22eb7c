"""A one-file Django project monitored by ``pynba.django.PynbaMiddleware``.

    python src/examples/django_app.py [PINBA_SERVER] [--serve]

Needs ``pip install pynba[django]``. Sends to PINBA_SERVER (argument or
environment variable; default 127.0.0.1:30002), one packet per request,
named after the URL pattern (``/users/<int:user_id>/``). Without
``--serve`` it answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import os
import sys
import threading
import time
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

from pynba import pynba


def home(request):
    return HttpResponse("home")


def user(request, user_id):
    with pynba.timer(group="db", op="select"):
        time.sleep(0.001)  # a pretend database round trip
    return HttpResponse(f"user{user_id}")


urlpatterns = [path("", home), path("users/<int:user_id>/", user)]


def configure(address):
    settings.configure(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        SECRET_KEY="example only",
        MIDDLEWARE=["pynba.django.PynbaMiddleware"],  # first: it sees the final response
        PINBA_SERVER=address,
        PINBA_TAGS={"app": "django-example"},
        PINBA_RAISE_ON_FAIL=True,  # a demo should say when sending fails
    )
    django.setup()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main(argv):
    from django.core.wsgi import get_wsgi_application

    serve = "--serve" in argv
    args = [a for a in argv if a != "--serve"]
    configure(args[0] if args else os.environ.get("PINBA_SERVER", "127.0.0.1:30002"))
    app = get_wsgi_application()
    server = make_server("127.0.0.1", 8000 if serve else 0, app, handler_class=QuietHandler)
    if serve:
        server.serve_forever()
        return
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        for page_path in ("/", "/users/42/", "/users/7/"):
            url = f"http://127.0.0.1:{server.server_port}{page_path}"
            with urllib.request.urlopen(url) as page:
                print(page.status, page_path, page.read().decode())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
