"""A Django site on PostgreSQL, run in a process of its own by test_instrument_db.py.

Django's settings are made once per process, and test_django.py's have no
database: this one gets its own. It configures Django from the environment
(``PYNBA_TEST_DATABASES``: the ``DATABASES`` setting as JSON;
``PINBA_SERVER``; ``PINBA_INSTRUMENT``), creates Django's test databases,
requests each path given on the command line through pynba's middleware
(through WSGI, or ASGI for a path written ``asgi:/path/``),
drops the test databases, and prints each path's status as JSON.
"""

import asyncio
import json
import os
import sys

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["pynba.django.PynbaMiddleware"],
    SECRET_KEY="not secret",
    INSTALLED_APPS=["django.contrib.contenttypes"],
    DATABASES=json.loads(os.environ["PYNBA_TEST_DATABASES"]),
    USE_TZ=True,
    LOGGING_CONFIG=None,
    PINBA_INSTRUMENT=os.environ.get("PINBA_INSTRUMENT", "db"),
)
django.setup()

from django.contrib.contenttypes.models import ContentType  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402
from django.urls import path  # noqa: E402

from pynba.instrumentation import django_db  # noqa: E402


def three_queries(request):
    names = [content_type.model for content_type in ContentType.objects.all()]
    count = ContentType.objects.filter(app_label="pynba").count()
    ContentType.objects.create(app_label="pynba", model=f"model{count}")
    return HttpResponse(f"{len(names)} {count}")


async def async_three_queries(request):
    count = await ContentType.objects.acount()
    exists = await ContentType.objects.filter(app_label="pynba").aexists()
    await ContentType.objects.acreate(app_label="pynba-async", model=f"model{count}")
    return HttpResponse(f"{count} {exists}")


def sleep(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.05)")
    return HttpResponse("slept")


def rows(request):
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE numbers (n integer)")
        cursor.executemany("INSERT INTO numbers (n) VALUES (%s)", [(n,) for n in range(7)])
    return HttpResponse("inserted")


def failing(request):
    with connection.cursor() as cursor:
        try:
            cursor.execute("SELECT * FROM no_such_table")
        except Exception as error:  # the driver's own error, as Django wraps it
            return HttpResponse(type(error).__name__, status=500)
    return HttpResponse("no error?")


def turned_off_and_on(request):
    django_db.uninstrument()
    ContentType.objects.count()  # not timed
    django_db.instrument()
    ContentType.objects.filter(app_label="pynba").exists()
    return HttpResponse("ok")


def other_alias(request):
    count = ContentType.objects.using("other").count()
    return HttpResponse(str(count))


urlpatterns = [
    path("three/", three_queries),
    path("sync-under-asgi/", three_queries),
    path("async-three/", async_three_queries),
    path("sleep/", sleep),
    path("rows/", rows),
    path("failing/", failing),
    path("other/", other_alias),
    path("off-and-on/", turned_off_and_on),
]


async def asgi_get(url):
    """GET ``url`` from Django's ASGI handler, as an ASGI server calls it: (status, body)."""
    application = get_asgi_application()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    requested = False
    never = asyncio.Event()
    sent = []

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()  # the client stays: Django cancels this once it has answered

    async def send(message):
        sent.append(message)

    await application(scope, receive, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


def main(paths):
    """Each path requested through WSGI, or through ASGI when written ``asgi:/path/``."""
    created = setup_databases(verbosity=0, interactive=False)
    try:
        results = []
        for url in paths:
            if url.startswith("asgi:"):
                status, content = asyncio.run(asgi_get(url[len("asgi:") :]))
            else:
                response = Client().get(url)
                status, content = response.status_code, response.content
            results.append([url, status, content.decode()])
    finally:
        connections.close_all()
        teardown_databases(created, verbosity=0)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
