"""A one-file Django project monitored by ``pynba.django.PynbaMiddleware``.

    python src/examples/django_app.py [PINBA_SERVER] [--serve]

Needs ``pip install '.[django]'``. Sends to PINBA_SERVER (argument or
environment variable; default 127.0.0.1:30002), one packet per request,
named after the URL pattern (``/users/<int:user_id>/``). Without
``--serve`` it answers a few requests itself and exits; with it, it serves
http://127.0.0.1:8000/ until interrupted.
"""

import sys
import time

import django
from _serve import run_wsgi
from django.conf import settings
from django.core.wsgi import get_wsgi_application
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


def make_app(address):
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
    return get_wsgi_application()


if __name__ == "__main__":
    run_wsgi(make_app, ["/", "/users/42/", "/users/7/"], sys.argv[1:])
