"""Names a visitor controls: the Host header normalised, client-chosen names bounded.

Through real servers (wsgiref for WSGI, uvicorn for ASGI), reporting over real UDP.
Django, Flask and Pyramid have theirs in their own test files.
"""

import contextlib
import http.client
import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from packets import receive
from pynba import PynbaMiddleware, Reporter
from pynba.config import ENVIRONMENT
from pynba.names import (
    DEFAULT_NAME_LIMIT,
    INVALID_HOST,
    OTHER_NAME,
    UNMATCHED_NAME,
    ClientNames,
    a_labels,
    normalize_host,
    parse_names,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)


# -- normalize_host: one spelling per host, or INVALID_HOST ------------------

LONG_LABEL = "a" * 63
LONGEST_HOST = ".".join([LONG_LABEL] * 3 + ["a" * 61])  # 253 characters


@pytest.mark.parametrize(
    "host, expected",
    [
        ("example.com", "example.com"),
        ("Shop.Example.COM", "shop.example.com"),
        ("example.com:8080", "example.com"),
        ("example.com:", "example.com"),  # an empty port (RFC 3986)
        ("example.com.", "example.com"),
        ("EXAMPLE.com.:443", "example.com"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("localhost", "localhost"),
        ("my_service:80", "my_service"),
        ("[::1]", "[::1]"),
        ("[::1]:8000", "[::1]"),
        ("[0:0:0:0:0:0:0:1]:80", "[::1]"),
        ("[2001:DB8::A]", "[2001:db8::a]"),
        # IDNA: xn-- labels in Unicode, in whatever case they came.
        ("xn--bcher-kva.example", "bücher.example"),
        ("XN--BCHER-KVA.Example:8080", "bücher.example"),
        ("xn--strae-oqa.de", "straße.de"),  # IDNA 2008 (IDNA 2003 maps ß to ss)
        ("www.xn--80ak6aa92e.com", "www.аррӏе.com"),
        # ... an xn-- label that is not valid IDNA stays as sent.
        ("xn--zzzzzzzzzzzz.example", "xn--zzzzzzzzzzzz.example"),  # not Punycode
        ("xn--abc-.example", "xn--abc-.example"),  # all ASCII
        ("xn--ls8h.la", "xn--ls8h.la"),  # an emoji: not a letter
        ("xn--a.example", "xn--a.example"),  # decodes to a control character
        ("xn--.example", "xn--.example"),  # empty
        # Length: 253 characters at most, 63 per label.
        (LONGEST_HOST, LONGEST_HOST),
        (LONGEST_HOST + ".:65535", LONGEST_HOST),
        (LONGEST_HOST + "a", INVALID_HOST),
        ("a" * 64 + ".example", INVALID_HOST),
        ("a" * 8000, INVALID_HOST),
        # Anything else is not a host.
        ("", INVALID_HOST),
        (":8000", INVALID_HOST),
        ("example.com:http", INVALID_HOST),
        ("example.com:123456", INVALID_HOST),
        ("example.com:80:80", INVALID_HOST),
        ("example..com", INVALID_HOST),
        ("example.com..", INVALID_HOST),
        (".example.com", INVALID_HOST),
        ("exa mple.com", INVALID_HOST),
        (" example.com", INVALID_HOST),
        ("example.com/evil", INVALID_HOST),
        ("user@example.com", INVALID_HOST),
        ("exa%41mple.com", INVALID_HOST),
        ("bücher.example", INVALID_HOST),  # raw non-ASCII: clients send xn-- labels
        ("example\x00.com", INVALID_HOST),
        ("::1", INVALID_HOST),  # IPv6 without brackets
        ("[::1", INVALID_HOST),
        ("[::1]x", INVALID_HOST),
        ("[::1]:port", INVALID_HOST),
        ("[fe80::1%25eth0]", INVALID_HOST),
        ("[not an address]", INVALID_HOST),
        ("[v1.future]", INVALID_HOST),
    ],
)
def test_normalize_host(host, expected):
    assert normalize_host(host) == expected


@pytest.mark.parametrize("host", [None, b"example.com", 5])
def test_a_host_that_is_not_text_is_a_type_error(host):
    with pytest.raises(TypeError, match="host must be a str"):
        normalize_host(host)


def test_a_labels_encodes_each_unicode_label_and_leaves_what_cannot_be_a_name():
    assert a_labels("Bücher.Example") == "xn--bcher-kva.example"
    assert a_labels("faß.de:8080") == "xn--fa-hia.de:8080"
    # Punycode takes time quadratic in a label's length: a label or a name
    # too long to be one is not encoded, and is as invalid as it was.
    long_label = "".join(chr(0x4E00 + n) for n in range(64))
    long_name = ".".join(["é" * 20] * 13)
    assert a_labels(long_label) == long_label
    assert a_labels(f"{long_label}.de") == f"{long_label}.de"
    assert a_labels(long_name) == long_name
    for name in (long_label, long_name, "é" * 100_000):
        assert normalize_host(a_labels(name)) == INVALID_HOST
        with pytest.raises(ValueError):
            parse_names([name], "server_names")


def test_fixed_names_are_told_apart_from_host_names():
    # None of them can be a normalised host, nor a path.
    for name in (INVALID_HOST, OTHER_NAME, UNMATCHED_NAME):
        assert normalize_host(name) == INVALID_HOST
        assert not name.startswith("/")


# -- ClientNames: at most `limit` names, the rest counted ----------------------


def test_client_names_admit_up_to_the_limit_then_count_the_overflow():
    reporter = Reporter(("127.0.0.1", 9))
    names = ClientNames(reporter, "script_name", 3)
    assert [names.name(f"/{n}") for n in "abcde"] == ["/a", "/b", "/c", OTHER_NAME, OTHER_NAME]
    assert [names.name(f"/{n}") for n in "abcde"] == ["/a", "/b", "/c", OTHER_NAME, OTHER_NAME]
    assert reporter.stats["script_name_overflow"] == 4
    assert names.admitted == {"/a", "/b", "/c"}
    assert len(names.known) == 3


def test_host_names_cache_their_spellings_within_the_limit():
    reporter = Reporter(("127.0.0.1", 9))
    names = ClientNames(reporter, "server_name", 2, normalize_host)
    spellings = ["a.test", "A.test", "a.test:80", "a.test.", "B.test", "c.test", "bad host"]
    reported = [names.name(spelling) for spelling in spellings]
    assert reported == ["a.test"] * 4 + ["b.test", OTHER_NAME, INVALID_HOST]
    assert names.admitted == {"a.test", "b.test"}
    assert len(names.known) <= 2  # the cache of raw values is bounded too
    assert reporter.stats["server_name_overflow"] == 1
    assert reporter.stats["server_name_invalid"] == 1
    # Spellings past the cache's bound are normalised each time, and still admitted.
    assert names.name("A.TEST") == "a.test"
    assert reporter.stats["server_name_overflow"] == 1


def test_allow_list_reports_any_other_name_as_other():
    reporter = Reporter(("127.0.0.1", 9))
    names = ClientNames(reporter, "server_name", 1, normalize_host, ["a.test", "b.test"])
    assert [names.name(h) for h in ("A.test:80", "b.test", "c.test", "b.test.")] == [
        "a.test",
        "b.test",
        OTHER_NAME,
        "b.test",
    ]
    assert reporter.stats["server_name_overflow"] == 1
    assert names.admitted == {"a.test", "b.test"}


def test_limit_zero_reports_every_name_as_other():
    reporter = Reporter(("127.0.0.1", 9))
    names = ClientNames(reporter, "script_name", 0)
    assert names.name("/a") == OTHER_NAME and len(names.known) == 0


def test_bad_limits():
    reporter = Reporter(("127.0.0.1", 9))
    with pytest.raises(ValueError, match="name_limit"):
        ClientNames(reporter, "script_name", -1)
    with pytest.raises(TypeError, match="name_limit"):
        ClientNames(reporter, "script_name", "10")


def test_concurrent_threads_never_admit_more_than_the_limit():
    reporter = Reporter(("127.0.0.1", 9))
    names = ClientNames(reporter, "server_name", 50, normalize_host)
    barrier = threading.Barrier(8)
    results = []

    def work(thread):
        barrier.wait()
        results.extend(names.name(f"host{thread}-{n}.test") for n in range(100))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [name for name in results if name != OTHER_NAME]
    assert len(admitted) == len(set(admitted)) == 50 == len(names.admitted) == len(names.known)
    assert reporter.stats["server_name_overflow"] == 800 - 50


# -- through a real WSGI server ----------------------------------------------


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def wsgiref_server(app):
    server = make_server("127.0.0.1", 0, app, WSGIServer, QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def get(port, path="/", host=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


SENT_HOSTS = [
    ("Shop.Example.COM.:8080", "shop.example.com"),
    ("[::1]:8000", "[::1]"),
    ("xn--bcher-kva.example", "bücher.example"),
    ("a" * 8000, INVALID_HOST),
    ("evil.test/../x", INVALID_HOST),
]


def test_wsgi_host_is_normalised(udp_listener):
    app = PynbaMiddleware(hello, udp_listener.address)
    with wsgiref_server(app) as port:
        for sent, _ in SENT_HOSTS:
            assert get(port, "/", host=sent)[0] == 200
    assert [receive(udp_listener).server_name for _ in SENT_HOSTS] == [e for _, e in SENT_HOSTS]
    assert app.reporter.stats["server_name_invalid"] == 2


def test_wsgi_hosts_and_paths_past_the_limit_are_reported_as_other(udp_listener):
    app = PynbaMiddleware(hello, udp_listener.address, name_limit=3, prefix="app:")
    sent = [(f"/page/{n}", f"h{n}.test") for n in range(6)]
    with wsgiref_server(app) as port:
        for path, host in sent + sent[:2]:
            assert get(port, path, host=host)[0] == 200
    packets = [receive(udp_listener) for _ in range(8)]
    expected = ["/page/0", "/page/1", "/page/2", OTHER_NAME, OTHER_NAME, OTHER_NAME]
    assert [p.script_name for p in packets] == [f"app:{n}" for n in expected + expected[:2]]
    hosts = ["h0.test", "h1.test", "h2.test", OTHER_NAME, OTHER_NAME, OTHER_NAME]
    assert [p.server_name for p in packets] == hosts + hosts[:2]
    assert app.reporter.stats["script_name_overflow"] == 3
    assert app.reporter.stats["server_name_overflow"] == 3
    assert len(app.monitoring.path_names.admitted) == len(app.monitoring.host_names.admitted) == 3


def test_wsgi_default_limit_and_script_name_callable_is_not_limited(udp_listener):
    def named(environ):
        return environ["PATH_INFO"].upper()

    app = PynbaMiddleware(hello, udp_listener.address, script_name=named, name_limit=1)
    assert app.monitoring.path_names.limit == 1
    assert (
        PynbaMiddleware(hello, udp_listener.address).monitoring.host_names.limit
        == DEFAULT_NAME_LIMIT
    )
    with wsgiref_server(app) as port:
        for path in ("/a", "/b"):
            get(port, path)
    assert [receive(udp_listener).script_name for _ in range(2)] == ["/A", "/B"]
    assert "script_name_overflow" not in app.reporter.stats


def test_wsgi_script_name_callable_returning_none_is_unmatched(udp_listener):
    app = PynbaMiddleware(
        hello, udp_listener.address, script_name=lambda environ: None, unmatched_name="404"
    )
    with wsgiref_server(app) as port:
        get(port, "/reset/secret-token")
    assert receive(udp_listener).script_name == "404"


def test_wsgi_allow_list_from_the_environment(udp_listener, monkeypatch):
    monkeypatch.setenv("PINBA_SERVER_NAMES", "shop.example.com, API.example.com.")
    app = PynbaMiddleware(hello, udp_listener.address)
    with wsgiref_server(app) as port:
        for host in ("shop.example.com:443", "api.example.com", "scanner.test", "[::1]"):
            get(port, host=host)
    assert [receive(udp_listener).server_name for _ in range(4)] == [
        "shop.example.com",
        "api.example.com",
        OTHER_NAME,
        OTHER_NAME,
    ]
    assert app.reporter.stats["server_name_overflow"] == 2


def test_wsgi_fixed_server_name_and_server_name_fallback_are_not_client_names(udp_listener):
    fixed = PynbaMiddleware(hello, udp_listener.address, server_name="Fixed.Name", name_limit=0)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    for app, extra in ((fixed, {"HTTP_HOST": "any.test"}), (fixed, {})):
        app(dict(environ, **extra), lambda *a: None).close()
    unfixed = PynbaMiddleware(hello, udp_listener.address, name_limit=0)
    unfixed(dict(environ, SERVER_NAME="Server.Own"), lambda *a: None).close()
    assert [receive(udp_listener).server_name for _ in range(3)] == [
        "Fixed.Name",
        "Fixed.Name",
        "Server.Own",
    ]


# -- through a real ASGI server ----------------------------------------------


@contextlib.contextmanager
def uvicorn_server(app):
    uvicorn = pytest.importorskip("uvicorn")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="critical", lifespan="off", loop="asyncio", http="h11")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


async def plain_asgi(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_asgi_host_is_normalised_and_paths_limited(udp_listener):
    from pynba.asgi import PynbaASGIMiddleware

    app = PynbaASGIMiddleware(plain_asgi, udp_listener.address, name_limit=2)
    with uvicorn_server(app) as port:
        for sent, _ in SENT_HOSTS[:2]:
            assert get(port, "/same", host=sent)[0] == 200
        for path in ("/a", "/b"):
            assert get(port, path, host="x.test")[0] == 200
    packets = [receive(udp_listener) for _ in range(4)]
    assert [p.server_name for p in packets] == ["shop.example.com", "[::1]", OTHER_NAME, OTHER_NAME]
    assert [p.script_name for p in packets] == ["/same", "/same", "/a", OTHER_NAME]
    assert app.reporter.stats["server_name_overflow"] == 2
    assert app.reporter.stats["script_name_overflow"] == 1


def test_asgi_invalid_hosts(udp_listener):
    from pynba.asgi import PynbaASGIMiddleware

    app = PynbaASGIMiddleware(plain_asgi, udp_listener.address)
    with uvicorn_server(app) as port:
        for sent, _ in SENT_HOSTS[2:]:
            assert get(port, "/", host=sent)[0] == 200
    assert [receive(udp_listener).server_name for _ in SENT_HOSTS[2:]] == [
        e for _, e in SENT_HOSTS[2:]
    ]


def test_starlette_unmatched_name_is_configurable(udp_listener):
    pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from pynba.asgi import PynbaASGIMiddleware

    async def reset(request):
        return PlainTextResponse("reset")

    starlette_app = Starlette(routes=[Route("/reset/{token}", reset)])
    app = PynbaASGIMiddleware(starlette_app, udp_listener.address, unmatched_name="not-found")
    with uvicorn_server(app) as port:
        assert get(port, "/reset/abc")[0] == 200
        assert get(port, "/reset;jsessionid=secret")[0] == 404
        assert get(port, "/wp-login.php")[0] == 404
    packets = [receive(udp_listener) for _ in range(3)]
    assert [p.script_name for p in packets] == ["/reset/{token}", "not-found", "not-found"]
    assert [p.status for p in packets] == [200, 404, 404]
