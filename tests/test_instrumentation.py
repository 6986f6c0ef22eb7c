"""The registry of automatic timers (``pynba.instrument``) and the ``instrument`` option."""

import importlib.util
import sys
import textwrap

import pytest

from conftest import IN_CI
from pynba import PynbaMiddleware, ScriptMonitor
from pynba.asgi import PynbaASGIMiddleware
from pynba.config import ENVIRONMENT, resolve
from pynba.instrumentation import GROUPS, INTEGRATIONS, instrument, parse_names, uninstrument
from scripts import run_script


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)


def hello(environ, start_response):
    start_response("204 No Content", [])
    return []


# -- parse_names -----------------------------------------------------------------


def test_parse_names_of_nothing_is_nothing():
    assert parse_names(None) == parse_names([]) == parse_names("") == parse_names(" , ") == ()


def test_parse_names_all_is_every_integration_in_order():
    assert parse_names("all") == parse_names(["all"]) == tuple(INTEGRATIONS)


def test_parse_names_of_groups_and_integrations():
    assert parse_names(["cache"]) == ("redis", "pymemcache")
    assert parse_names(" redis , db,,") == ("redis", "dbapi", "sqlalchemy", "django_db")
    # Each once, where first named.
    assert parse_names(("jinja2", "render", "jinja2")) == ("jinja2", "django_templates")
    assert parse_names(["all", "otel"]) == tuple(INTEGRATIONS)
    assert parse_names("otel") == parse_names("opentelemetry") == ("opentelemetry",)


def test_every_group_names_its_integrations():
    assert set(GROUPS) == {"db", "cache", "http", "render", "otel"}
    assert sorted(name for names in GROUPS.values() for name in names) == sorted(INTEGRATIONS)
    for group, names in GROUPS.items():
        assert all(INTEGRATIONS[name][0] == group for name in names)


@pytest.mark.parametrize("names", ["nope", ["db", "nope"], "redis,nope", ["Redis"], ["all "]])
def test_parse_names_refuses_an_unknown_name_naming_it(names):
    unknown = "nope" if "nope" in str(names) else str(names[0])
    with pytest.raises(ValueError, match=f"unknown integration or group {unknown!r}"):
        parse_names(names)


@pytest.mark.parametrize("names", [[5], ["db", None], [b"redis"], b"redis", 5])
def test_parse_names_refuses_what_is_no_name(names):
    with pytest.raises(TypeError):
        parse_names(names)


# -- instrument() and uninstrument() ---------------------------------------------


def hide(monkeypatch, library):
    """Make ``library`` fail to import, as when it is not installed."""
    monkeypatch.setitem(sys.modules, library, None)


@pytest.mark.parametrize("name", list(INTEGRATIONS))
def test_instrument_refuses_an_integration_named_whose_library_is_missing(monkeypatch, name):
    library = INTEGRATIONS[name][1]
    hide(monkeypatch, library)
    with pytest.raises(ImportError, match=f"{name!r} needs {library!r}"):
        instrument(name)
    uninstrument(name)  # nothing to turn off: no error


@pytest.mark.parametrize("group", list(GROUPS))
def test_instrument_skips_the_missing_libraries_of_a_group(monkeypatch, group):
    for name in GROUPS[group]:
        hide(monkeypatch, INTEGRATIONS[name][1])
    assert instrument(group) == ()
    uninstrument(group)


def test_instrument_returns_what_it_turned_on_and_is_harmless_twice(udp_listener):
    packets, done = run_script(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import pynba
        from pynba import ScriptMonitor

        trace.set_tracer_provider(TracerProvider())
        print(pynba.instrument("otel"))
        print(pynba.instrument("opentelemetry", "otel"))
        with ScriptMonitor(ADDRESS, autostart=False).job("job"):
            trace.get_tracer("tests").start_span("work").end()
        """,
        udp_listener,
    )
    assert done.stdout == "('opentelemetry',)\n('opentelemetry',)\n"
    [packet] = packets
    assert packet.timer(group="otel", op="work").hit_count == 1  # one processor, not two


def test_instrument_all_turns_on_every_installed_integration(udp_listener):
    unwritten = [
        name
        for name in INTEGRATIONS
        if importlib.util.find_spec(f"pynba.instrumentation.{name}") is None
    ]
    if unwritten and not IN_CI:
        pytest.skip(f"integrations not written yet: {', '.join(unwritten)}")
    installed = [
        name for name, (_, library) in INTEGRATIONS.items() if importlib.util.find_spec(library)
    ]
    _, done = run_script(
        """
        import pynba
        from pynba.instrumentation import uninstrument

        print(pynba.instrument())
        print(pynba.instrument("all"))
        uninstrument()
        uninstrument()
        """,
        udp_listener,
        stderr=True,  # the OpenTelemetry bridge warns: no SDK provider is set
    )
    assert done.stdout == f"{tuple(installed)}\n" * 2


# -- the instrument option -------------------------------------------------------


def test_the_option_is_read_as_written():
    assert resolve("127.0.0.1").instrument == ()
    assert resolve("127.0.0.1", instrument=" db, redis,,").instrument == ("db", "redis")
    assert resolve("127.0.0.1", instrument=["all"]).instrument == ("all",)
    settings = {"PINBA_INSTRUMENT": ["cache", "otel"]}
    assert resolve("127.0.0.1", settings=settings).instrument == ("cache", "otel")
    assert "instrument" in resolve("127.0.0.1").options()


def test_the_option_from_the_environment_and_settings(monkeypatch):
    monkeypatch.setenv("PINBA_INSTRUMENT", "http,render")
    assert resolve("127.0.0.1").instrument == ("http", "render")
    settings = {"PINBA_INSTRUMENT": "otel"}
    assert resolve("127.0.0.1", settings=settings).instrument == ("otel",)
    assert resolve("127.0.0.1", instrument=[]).instrument == ()  # given: none at all
    monkeypatch.setenv("PINBA_INSTRUMENT", "")
    assert resolve("127.0.0.1").instrument == ()


def test_monitoring_off_turns_nothing_on(monkeypatch):
    for library in ("opentelemetry.sdk", "redis"):
        hide(monkeypatch, library)  # were they turned on, instrument() would refuse them
    assert resolve("127.0.0.1", enabled=False, instrument="redis").instrument_libraries() == ()
    ScriptMonitor(enabled=False, instrument="redis").close()
    PynbaMiddleware(hello, "127.0.0.1", enabled=False, instrument="opentelemetry")
    assert resolve("127.0.0.1").instrument_libraries() == ()


def make_wsgi(address, **options):
    return PynbaMiddleware(hello, address, **options)


def make_asgi(address, **options):
    async def app(scope, receive, send):
        pass

    return PynbaASGIMiddleware(app, address, **options)


def make_script(address, **options):
    ScriptMonitor(address, autostart=False, **options).close()


MAKERS = [make_wsgi, make_asgi, make_script]


@pytest.mark.parametrize("make", MAKERS)
@pytest.mark.parametrize(
    "value, error, message",
    [
        (["nope"], ValueError, "'nope'"),
        ("db, nope", ValueError, "'nope'"),
        ([5], TypeError, "instrument"),
        (5, TypeError, "instrument"),
        (b"db", TypeError, "instrument"),
        ({"db": True}, TypeError, "instrument"),
    ],
)
def test_a_bad_option_fails_at_construction_naming_it(udp_listener, make, value, error, message):
    with pytest.raises(error, match=message):
        make(udp_listener.address, instrument=value)


@pytest.mark.parametrize("make", MAKERS)
def test_a_bad_variable_fails_at_construction_naming_it(udp_listener, monkeypatch, make):
    monkeypatch.setenv("PINBA_INSTRUMENT", "redis,nope")
    with pytest.raises(ValueError, match="PINBA_INSTRUMENT: .*'nope'"):
        make(udp_listener.address)


@pytest.mark.parametrize("make", MAKERS)
def test_a_named_integration_whose_library_is_missing_fails_at_construction(
    udp_listener, monkeypatch, make
):
    hide(monkeypatch, "opentelemetry.sdk")
    with pytest.raises(ImportError, match="'opentelemetry' needs 'opentelemetry.sdk'"):
        make(udp_listener.address, instrument="opentelemetry")
    make(udp_listener.address, instrument="otel")  # a group: its missing libraries are skipped


def test_the_flask_and_pyramid_settings_are_checked(udp_listener):
    flask = pytest.importorskip("flask")
    from pynba.flask import Pynba

    app = flask.Flask(__name__)
    app.config["PINBA_INSTRUMENT"] = "nope"
    with pytest.raises(ValueError, match="PINBA_INSTRUMENT: .*'nope'"):
        Pynba(app, udp_listener.address)
    pyramid_config = pytest.importorskip("pyramid.config")
    from pynba.pyramid import monitor

    config = pyramid_config.Configurator(settings={"pinba.instrument": ["db", 5]})
    with pytest.raises(TypeError, match="names must be str"):
        monitor(config.make_wsgi_app(), udp_listener.address)


# Each turns the OpenTelemetry bridge on from its configuration, in an
# interpreter of its own (a global TracerProvider is set once per process),
# then serves one request whose application ends a span.
SPAN = """
import time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("tests")
ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "localhost",
           "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": __import__("io").BytesIO(),
           "SERVER_PROTOCOL": "HTTP/1.1"}


def work():
    with tracer.start_as_current_span("work"):
        time.sleep(0.01)


def serve(app):
    body = app(dict(ENVIRON), lambda status, headers, exc_info=None: None)
    b"".join(body)
    body.close()
"""

SWITCHES = {
    "wsgi argument": """
        from pynba import PynbaMiddleware

        def app(environ, start_response):
            work()
            start_response("204 No Content", [])
            return []

        serve(PynbaMiddleware(app, ADDRESS, instrument=["opentelemetry"]))
        """,
    "asgi argument": """
        import asyncio
        from pynba import PynbaASGIMiddleware

        async def app(scope, receive, send):
            work()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "scheme": "http"}
        asyncio.run(PynbaASGIMiddleware(app, ADDRESS, instrument="otel")(scope, receive, send))
        """,
    "script environment": """
        import os
        from pynba import ScriptMonitor

        os.environ["PINBA_INSTRUMENT"] = "otel"
        with ScriptMonitor(ADDRESS) as monitor:
            work()
        """,
    "flask config": """
        import flask
        from pynba.flask import Pynba

        app = flask.Flask(__name__)
        app.config["PINBA_INSTRUMENT"] = "opentelemetry"
        app.add_url_rule("/", "index", lambda: (work(), "")[1])
        Pynba(app, ADDRESS)
        app.test_client().get("/")
        """,
    "pyramid settings": """
        from pyramid.config import Configurator
        from pyramid.response import Response
        from pynba.pyramid import monitor

        def index(request):
            work()
            return Response(b"")

        config = Configurator(settings={"pinba.instrument": "otel, opentelemetry"})
        config.add_route("index", "/")
        config.add_view(index, route_name="index")
        serve(monitor(config.make_wsgi_app(), ADDRESS))
        """,
    "django settings": """
        import django
        from django.conf import settings
        from django.http import HttpResponse
        from django.urls import path

        def index(request):
            work()
            return HttpResponse(b"")

        urlpatterns = [path("", index)]
        settings.configure(
            ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="not secret",
            MIDDLEWARE=["pynba.django.PynbaMiddleware"], INSTALLED_APPS=[], DATABASES={},
            LOGGING_CONFIG=None, PINBA_SERVER="{}:{}".format(*ADDRESS),
            PINBA_INSTRUMENT=["opentelemetry"],
        )
        django.setup()
        from django.test import Client
        Client().get("/")
        """,
}


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_the_option_turns_the_bridge_on(udp_listener, switch):
    framework = switch.split()[0]
    if framework in ("flask", "pyramid", "django"):
        pytest.importorskip(framework)
    packets, _ = run_script(SPAN + textwrap.dedent(SWITCHES[switch]), udp_listener)
    [packet] = packets
    timer = packet.timer(group="otel", op="work")
    assert (timer.hit_count, timer.value >= 0.01) == (1, True)
