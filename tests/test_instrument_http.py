"""HTTP clients timed automatically (httpx, requests, urllib3), against a real local HTTP server."""

import asyncio
import gc
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import types

import pytest

from packets import make_collector, monitored_request, receive
from pynba import instrumentation
from pynba.context import activate, deactivate
from pynba.instrumentation import _http_client
from pynba.instrumentation._http_client import host_tag, method_op, origin_host, status_class
from pynba.rusage import thread_cpu

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")
urllib3 = pytest.importorskip("urllib3")

DELAY = 0.05


class Handler(http.server.BaseHTTPRequestHandler):
    """``/status/<code>``, ``/delay`` (DELAY seconds, then 200), ``/redirect`` (to a 200),
    ``/elsewhere`` (to a 200 at ``localhost``), ``/hold`` (waits for the test's ``release``);
    any method; a request in absolute form (as to a proxy) gets a 200."""

    protocol_version = "HTTP/1.1"

    def handle_any(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        if path == "/redirect":
            return self.reply(302, location="/status/200")
        if path == "/elsewhere":  # the same server under another host name
            port = self.server.server_address[1]
            return self.reply(302, location=f"http://localhost:{port}/status/200")
        if path == "/delay":
            time.sleep(DELAY)
        elif path == "/hold":
            self.server.arrived.set()
            self.server.release.wait(10)
        elif path.startswith("/status/"):
            return self.reply(int(path.rsplit("/", 1)[1]))
        return self.reply(200)

    def reply(self, status, location=None):
        body = b"" if self.command == "HEAD" else f"{status} {self.command}".encode()
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_PROPFIND = (
        handle_any
    )

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """A real HTTP server on 127.0.0.1 in a thread: its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.arrived = threading.Event()
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        thread.join()
        httpd.server_close()


@pytest.fixture
def base(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def host(server):
    return f"127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def instrumented():
    """Turns on the integrations a test names; all of them off again at its end."""
    instrumentation.uninstrument("http")  # whatever an earlier test left on
    yield instrumentation.instrument
    instrumentation.uninstrument("http")


@pytest.fixture
def refused_port():
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_timers(packet):
    """The packet's timers of group http: {tags without group: (seconds, hits)}, summed."""
    found = {}
    for timer in packet.timers:
        tags = dict(timer.tags)
        if tags.pop("group") != "http":
            continue
        key = tuple(sorted(tags.items()))
        seconds, hits = found.get(key, (0.0, 0))
        found[key] = (seconds + timer.value, hits + timer.hit_count)
    return found


def tags(op, host, status):
    return (("host", host), ("op", op), ("status", status))


# -- each client, sync and async ---------------------------------------------


def test_httpx_client_times_each_request(udp_listener, instrumented, base, host):
    instrumented("httpx")
    with monitored_request(udp_listener), httpx.Client() as client:
        assert client.get(f"{base}/delay?token=secret").text == "200 GET"
        assert client.get(f"{base}/status/404").status_code == 404
        assert client.post(f"{base}/status/500", content=b"x").status_code == 500
        assert client.head(f"{base}/status/204").status_code == 204
    packet = receive(udp_listener)
    timers = http_timers(packet)
    assert set(timers) == {
        tags("get", host, "2xx"),
        tags("get", host, "4xx"),
        tags("post", host, "5xx"),
        tags("head", host, "2xx"),
    }
    seconds, hits = timers[tags("get", host, "2xx")]
    assert hits == 1
    assert seconds >= DELAY
    assert b"secret" not in packet.datagram
    assert b"/delay" not in packet.datagram


def test_httpx_async_client_times_each_request(udp_listener, instrumented, base, host):
    instrumented("httpx")

    async def calls():
        async with httpx.AsyncClient() as client:
            first = client.get(f"{base}/delay")
            second = client.delete(f"{base}/status/404")
            return await asyncio.gather(first, second)

    with monitored_request(udp_listener):
        responses = asyncio.run(calls())
    assert [response.status_code for response in responses] == [200, 404]
    timers = http_timers(receive(udp_listener))
    assert set(timers) == {tags("get", host, "2xx"), tags("delete", host, "4xx")}
    assert timers[tags("get", host, "2xx")][0] >= DELAY
    assert timers[tags("delete", host, "4xx")][1] == 1


def test_httpx_send_keeps_its_own_keywords_and_defaults(udp_listener, instrumented, base, host):
    # The hook takes Client.send's keywords by name: one left out is httpx's
    # default, which for auth and follow_redirects is the client's own.
    instrumented("httpx")
    client = httpx.Client(auth=("user", "pw"), follow_redirects=True)
    with monitored_request(udp_listener), client:
        plain = client.send(client.build_request("GET", f"{base}/redirect"))
        streamed = client.send(
            client.build_request("GET", f"{base}/redirect"),
            stream=True,
            auth=None,
            follow_redirects=False,
        )
        check_send_keywords(plain, streamed)
        streamed.close()
        with pytest.raises(TypeError, match="unknown"):  # refused before a request: untimed
            client.send(client.build_request("GET", f"{base}/status/200"), unknown=1)
    check_one_redirect_and_one_followed(receive(udp_listener), host)


def test_httpx_async_send_keeps_its_own_keywords_and_defaults(
    udp_listener, instrumented, base, host
):
    instrumented("httpx")

    async def sends():
        client = httpx.AsyncClient(auth=("user", "pw"), follow_redirects=True)
        async with client:
            plain = await client.send(client.build_request("GET", f"{base}/redirect"))
            streamed = await client.send(
                client.build_request("GET", f"{base}/redirect"),
                stream=True,
                auth=None,
                follow_redirects=False,
            )
            check_send_keywords(plain, streamed)
            await streamed.aclose()
            with pytest.raises(TypeError, match="unknown"):  # untimed, as above
                await client.send(client.build_request("GET", f"{base}/status/200"), unknown=1)

    with monitored_request(udp_listener):
        asyncio.run(sends())
    check_one_redirect_and_one_followed(receive(udp_listener), host)


def check_send_keywords(plain, streamed):
    """What a client with auth and follow_redirects gave to ``send(request)`` (``plain``)
    and to ``send(request, stream=True, auth=None, follow_redirects=False)``."""
    assert plain.status_code == 200  # the redirect followed, as the client says
    assert plain.history[0].request.headers["Authorization"].startswith("Basic ")
    assert plain.is_closed  # stream=False, httpx's default: the body was read
    assert streamed.status_code == 302
    assert "Authorization" not in streamed.request.headers
    assert not streamed.is_closed


def check_one_redirect_and_one_followed(packet, host):
    timers = http_timers(packet)
    assert timers.keys() == {tags("get", host, "2xx"), tags("get", host, "3xx")}
    assert timers[tags("get", host, "2xx")][1] == timers[tags("get", host, "3xx")][1] == 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_httpx_send_of_other_keywords_passes_them_on_as_they_came(asynchronous, udp_listener):
    # An httpx whose Client.send takes other keywords gets the hook that
    # passes on any keywords (**kwargs).
    from pynba.instrumentation import httpx as hooks

    calls = []
    answer = httpx.Response(201)

    if asynchronous:

        async def send(self, request, *, stream=False, timeout=None):
            calls.append((self, request, stream, timeout))
            return answer

        hooked_async = hooks._async_hook(send)

        def call(*args, **kwargs):
            return asyncio.run(hooked_async(*args, **kwargs))

    else:

        def send(self, request, *, stream=False, timeout=None):
            calls.append((self, request, stream, timeout))
            return answer

        call = hooks._sync_hook(send)

    request = httpx.Request("PUT", "https://Example.COM:8443/x")
    with monitored_request(udp_listener):
        assert call("client", request, timeout=3) is answer
        assert call("client", request) is answer
        with pytest.raises(TypeError):
            call("client", request, follow_redirects=True)
    assert calls == [("client", request, False, 3), ("client", request, False, None)]
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {
        tags("put", "example.com:8443", "2xx"),
        tags("put", "example.com:8443", "error"),
    }
    assert timers[tags("put", "example.com:8443", "2xx")][1] == 2


def send_of_more_keywords(
    self, request, *, stream=False, auth=None, follow_redirects=False, **more
):
    return more


def send_of_three_arguments(
    self, request, extra=None, *, stream=False, auth=None, follow_redirects=False
):
    return extra


def send_of_a_required_keyword(
    self, request, *, stream=False, auth=None, follow_redirects=False, timeout
):
    return timeout


@pytest.mark.parametrize(
    ("send", "args", "keywords", "expected"),
    [
        (send_of_more_keywords, (), {"timeout": 3}, {"timeout": 3}),
        (send_of_three_arguments, (), {"extra": 7}, 7),
        (send_of_a_required_keyword, (), {"timeout": 3}, 3),
    ],
)
def test_an_httpx_send_of_httpx_keywords_and_more_gets_all_it_is_given(
    send, args, keywords, expected
):
    # Only a send of httpx's parameters and no others gets the hook of named
    # keywords; any other gets the one that passes on any keywords.
    from pynba.instrumentation import httpx as hooks

    request = httpx.Request("GET", "http://h.example/")
    assert hooks._sync_hook(send)("client", request, *args, **keywords) == expected


@pytest.mark.parametrize(
    ("url", "host_tag"),
    [
        ("http://127.0.0.1:8080/users/42?q=1", "127.0.0.1:8080"),
        ("https://Example.COM:443/", "example.com"),
        ("http://example.com:443/", "example.com:443"),
        ("http://[0:0::1]:8080/", "[::1]:8080"),
        ("https://xn--bcher-kva.example/", "bücher.example"),
        ("https://bücher.example:8443/", "bücher.example:8443"),
        ("http://user:secret@h.example/", "h.example"),
        # The name httpx connects to (IDNA 2008: xn--fa-hia.de), not fass.de.
        ("https://faß.de/", "faß.de"),
        ("https://xn--fa-hia.de/", "faß.de"),
    ],
)
@pytest.mark.parametrize("read_parts", [True, False], ids=["url-parts", "url-properties"])
def test_an_httpx_request_is_tagged_with_its_urls_host(
    url, host_tag, read_parts, udp_listener, instrumented, monkeypatch
):
    # A call that fails gets the same host tag as one that is answered.
    from pynba.instrumentation import httpx as hooks

    instrumented("httpx")
    # This httpx keeps its URL's parts as the hook reads them...
    assert hooks._read_parts
    # ... and one that does not is read through URL.raw_host and URL.port.
    monkeypatch.setattr(hooks, "_read_parts", read_parts)

    def answer(request):
        if request.method == "POST":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(204)

    transport = httpx.MockTransport(answer)
    with monitored_request(udp_listener), httpx.Client(transport=transport) as client:
        assert client.get(url).status_code == 204
        with pytest.raises(httpx.ConnectError):
            client.post(url)
    packet = receive(udp_listener)
    assert http_timers(packet).keys() == {
        tags("get", host_tag, "2xx"),
        tags("post", host_tag, "error"),
    }
    assert b"secret" not in packet.datagram


def test_an_httpx_whose_url_parts_are_not_as_its_url_gives_them_is_read_through_the_url():
    # httpx 0.23 kept them as rfc3986 did: the port a str.
    from pynba.instrumentation import httpx as hooks

    class Parts:
        host, port = "example.com", "8080"

    class URL:
        def __init__(self, text):
            self._uri_reference = Parts()
            self.raw_host, self.port = b"example.com", 8080

    assert hooks._parts_read_as_properties(httpx)
    assert not hooks._parts_read_as_properties(types.SimpleNamespace(URL=URL))


def test_requests_times_each_call(udp_listener, instrumented, base, host):
    instrumented("requests")
    with monitored_request(udp_listener):
        assert requests.get(f"{base}/delay").text == "200 GET"
        with requests.Session() as session:
            assert session.put(f"{base}/status/503").status_code == 503
            assert session.patch(f"{base}/status/201").status_code == 201
            assert session.options(f"{base}/status/200").status_code == 200
    timers = http_timers(receive(udp_listener))
    assert set(timers) == {
        tags("get", host, "2xx"),
        tags("put", host, "5xx"),
        tags("patch", host, "2xx"),
        tags("options", host, "2xx"),
    }
    assert timers[tags("get", host, "2xx")][0] >= DELAY


def test_urllib3_times_pool_manager_and_pool_calls(udp_listener, instrumented, base, host):
    instrumented("urllib3")
    port = int(host.rsplit(":", 1)[1])
    with monitored_request(udp_listener):
        assert urllib3.request("GET", f"{base}/delay").status == 200
        with urllib3.PoolManager() as manager:
            assert manager.request("POST", f"{base}/status/404").status == 404
        with urllib3.HTTPConnectionPool("127.0.0.1", port) as pool:
            assert pool.request("PROPFIND", "/status/207").status == 207
    timers = http_timers(receive(udp_listener))
    assert timers == {
        tags("get", host, "2xx"): timers[tags("get", host, "2xx")],
        tags("post", host, "4xx"): timers[tags("post", host, "4xx")],
        tags("other", host, "2xx"): timers[tags("other", host, "2xx")],
    }
    assert all(hits == 1 for _, hits in timers.values())
    assert timers[tags("get", host, "2xx")][0] >= DELAY


def test_each_urllib3_pool_is_tagged_with_its_own_host_as_pools_come_and_go(
    udp_listener, instrumented, server
):
    # A pool's host tag is kept by its id while it lives (urllib3._pool_tags);
    # freed pools make room for new ones, often at the same address.
    instrumented("urllib3")
    port = server.server_address[1]
    hosts = ["127.0.0.1", "localhost"] * 20
    with monitored_request(udp_listener):
        for name in hosts:
            pool = urllib3.HTTPConnectionPool(name, port)
            assert pool.request("GET", "/status/200").status == 200
            pool.close()
            del pool
    timers = http_timers(receive(udp_listener))
    assert {key: hits for key, (_, hits) in timers.items()} == {
        tags("get", f"127.0.0.1:{port}", "2xx"): 20,
        tags("get", f"localhost:{port}", "2xx"): 20,
    }


def test_the_host_tags_of_freed_urllib3_pools_are_not_kept(udp_listener, instrumented, base):
    from pynba.instrumentation import urllib3 as hooks

    instrumented("urllib3")
    gc.collect()
    before = hooks._pools_kept()
    port = int(base.rsplit(":", 1)[1])
    pools = [urllib3.HTTPConnectionPool("127.0.0.1", port) for _ in range(10)]
    with monitored_request(udp_listener):
        for pool in pools:
            assert pool.request("GET", "/status/200").status == 200
    assert hooks._pools_kept() == before + 10
    for pool in pools:
        pool.close()
    del pools, pool
    gc.collect()
    assert hooks._pools_kept() == before


class Url(str):
    """A URL type that is a str subclass (as some settings libraries give)."""

    def find(self, *args):
        raise AssertionError("a URL's own methods are not called")


def test_a_str_subclass_url_is_tagged_with_its_host(
    udp_listener, instrumented, base, host, refused_port
):
    instrumented("urllib3")
    with monitored_request(udp_listener):
        with urllib3.PoolManager() as manager:
            assert manager.urlopen("GET", Url(f"{base}/status/200")).status == 200
            with pytest.raises(urllib3.exceptions.HTTPError):
                manager.urlopen("GET", Url(f"http://127.0.0.1:{refused_port}/"), retries=False)
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {
        tags("get", host, "2xx"),
        tags("get", f"127.0.0.1:{refused_port}", "error"),
    }


# -- one timer per call --------------------------------------------------------


def test_requests_over_urllib3_make_one_timer_per_call(udp_listener, instrumented, base, host):
    instrumented("requests", "urllib3")
    with monitored_request(udp_listener):
        requests.get(f"{base}/delay")
        requests.get(f"{base}/redirect")  # two requests on the wire, one call
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {tags("get", host, "2xx")}
    seconds, hits = timers[tags("get", host, "2xx")]
    assert hits == 2
    assert seconds >= DELAY


def call(client, url):
    """A GET of ``url`` with ``client`` (redirects followed); its status code."""
    if client == "httpx":
        return httpx.get(url, follow_redirects=True).status_code
    if client == "requests":
        return requests.get(url).status_code
    return urllib3.request("GET", url).status


CLIENTS = ["httpx", "requests", "urllib3"]


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_a_call_following_a_redirect_is_one_timer(client, udp_listener, instrumented, base, host):
    instrumented(client)
    with monitored_request(udp_listener):
        assert call(client, f"{base}/redirect") == 200
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {tags("get", host, "2xx")}
    assert timers[tags("get", host, "2xx")][1] == 1


def test_a_pool_managers_redirect_is_a_timer_per_request_each_of_its_host(
    udp_listener, instrumented, base, host
):
    # A PoolManager follows a redirect with a new pool call: each request
    # is timed under the host it went to. A pool following a redirect
    # itself makes one call of it.
    instrumented("urllib3")
    port = int(host.rsplit(":", 1)[1])
    with monitored_request(udp_listener):
        assert urllib3.request("GET", f"{base}/elsewhere").status == 200
        with urllib3.HTTPConnectionPool("127.0.0.1", port) as pool:
            assert pool.request("HEAD", "/redirect").status == 200
    timers = http_timers(receive(udp_listener))
    assert {name: hits for name, (_, hits) in timers.items()} == {
        tags("get", host, "3xx"): 1,
        tags("get", f"localhost:{port}", "2xx"): 1,
        tags("head", host, "2xx"): 1,
    }


def test_a_urllib3_pool_call_keeps_its_own_parameters_and_defaults(
    udp_listener, instrumented, host
):
    instrumented("urllib3")
    port = int(host.rsplit(":", 1)[1])
    with monitored_request(udp_listener):
        with urllib3.HTTPConnectionPool("127.0.0.1", port) as pool:
            followed = pool.urlopen("GET", "/redirect")  # redirect=True: urllib3's default
            assert (followed.status, followed.data) == (200, b"200 GET")
            kept = pool.urlopen("GET", "/redirect", None, None, False, False)  # positional
            assert kept.status == 302
            streamed = pool.urlopen(
                method="PUT",
                url="/status/201",
                body=b"data",
                headers={"X-Test": "1"},
                preload_content=False,
                decode_content=False,
                retries=False,
            )
            assert (streamed.status, streamed.read()) == (201, b"201 PUT")
            streamed.release_conn()
            with pytest.raises(TypeError):
                pool.urlopen("GET")  # as without pynba: no URL (a call that raised)
    timers = http_timers(receive(udp_listener))
    assert {name: hits for name, (_, hits) in timers.items()} == {
        tags("get", host, "2xx"): 1,
        tags("get", host, "3xx"): 1,
        tags("put", host, "2xx"): 1,
        tags("get", host, "error"): 1,
    }


class Answer:
    """A urlopen's response: its status, and what the urlopen was given."""

    status = 200

    def __init__(self, *given):
        self.given = given


class Pool:
    """What the hook reads of a pool."""

    host, port, scheme = "h.example", 8080, "http"


def urlopen_of_more(
    self, method, url, body=None, headers=None, retries=None, redirect=True,
    assert_same_host=True, timeout=None, pool_timeout=None, release_conn=None, chunked=False,
    body_pos=None, preload_content=True, decode_content=True, extra=None, **response_kw,
):  # fmt: skip
    return Answer(method, url, extra, response_kw)


def urlopen_of_urllib3_1_26(
    self, method, url, body=None, headers=None, retries=None, redirect=True,
    assert_same_host=True, timeout=None, pool_timeout=None, release_conn=None, chunked=False,
    body_pos=None, **response_kw,
):  # fmt: skip
    return Answer(method, url, body_pos, response_kw)


def urlopen_of_another_hook(*args, **kwargs):
    return Answer(args[1:], kwargs)


@pytest.mark.parametrize(
    ("urlopen", "args", "keywords", "given"),
    [
        (urlopen_of_more, ("PUT", "/a"), {"extra": 7}, ("PUT", "/a", 7, {})),
        (urlopen_of_urllib3_1_26, ("PUT", "/a"), {"body_pos": 3, "x": 1}, ("PUT", "/a", 3, {"x": 1})),  # noqa: E501
        (urlopen_of_another_hook, ("PUT",), {"url": "/a", "x": 1}, (("PUT",), {"url": "/a", "x": 1})),  # noqa: E501
    ],
)  # fmt: skip
def test_a_urlopen_of_other_parameters_gets_all_it_is_given(
    urlopen, args, keywords, given, udp_listener
):
    # The hook hands on what it is given, whatever urlopen's parameters.
    from pynba.instrumentation import urllib3 as hooks

    hooked = hooks._pool_hook(urlopen)
    assert hooked(Pool(), *args, **keywords).given == given  # outside a request
    with monitored_request(udp_listener):
        assert hooked(Pool(), *args, **keywords).given == given
    timers = http_timers(receive(udp_listener))
    assert {name: hits for name, (_, hits) in timers.items()} == {
        tags("put", "h.example:8080", "2xx"): 1
    }


@pytest.mark.parametrize("url_type", [str, Url], ids=["str", "str-subclass"])
def test_a_request_through_a_proxy_is_tagged_with_the_host_it_asks_for(
    url_type, udp_listener, instrumented, base, refused_port
):
    # A plain-HTTP request through a proxy goes to the proxy's pool, its URL
    # in absolute form: the host is the URL's.
    instrumented("urllib3")
    with monitored_request(udp_listener):
        with urllib3.ProxyManager(base) as proxy:
            answered = proxy.request("GET", url_type("http://api.example.test:8080/x?q=1"))
            assert answered.status == 200
        with urllib3.ProxyManager(f"http://127.0.0.1:{refused_port}") as proxy:
            with pytest.raises(urllib3.exceptions.HTTPError):
                proxy.request("POST", url_type("http://Other.Example.test/"), retries=False)
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {
        tags("get", "api.example.test:8080", "2xx"),
        tags("post", "other.example.test", "error"),
    }


def test_a_urlopen_wrapped_first_with_wrapt_gets_the_call_as_it_came(
    udp_listener, instrumented, base, host
):
    # wrapt's wrappers (OpenTelemetry's, ddtrace's, New Relic's) show the
    # wrapped function's __code__ and __defaults__, but take (*args, **kw):
    # OpenTelemetry's sets kwargs["headers"], and a call of every parameter
    # given by position would get headers twice.
    wrapt = pytest.importorskip("wrapt")
    seen = []

    def add_a_header(wrapped, instance, args, kwargs):
        seen.append((args, sorted(kwargs)))
        headers = kwargs.get("headers")
        kwargs["headers"] = {**(headers or {}), "X-Trace": "1"}
        return wrapped(*args, **kwargs)

    instrumentation.uninstrument("http")
    own = vars(urllib3.HTTPConnectionPool)["urlopen"]
    wrapt.wrap_function_wrapper(urllib3.HTTPConnectionPool, "urlopen", add_a_header)
    try:
        instrumented("urllib3")
        port = int(host.rsplit(":", 1)[1])
        with monitored_request(udp_listener):
            with urllib3.HTTPConnectionPool("127.0.0.1", port) as pool:
                assert pool.urlopen("GET", "/status/200", retries=False).status == 200
            assert urllib3.request("GET", f"{base}/status/404").status == 404
    finally:
        instrumentation.uninstrument("http")
        urllib3.HTTPConnectionPool.urlopen = own
    assert seen[0] == (("GET", "/status/200"), ["retries"])
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {tags("get", host, "2xx"), tags("get", host, "4xx")}


def test_each_thread_times_its_own_calls(udp_listener, instrumented, base, host):
    instrumented("requests", "urllib3")
    errors = []

    def one_request():
        try:
            with monitored_request(udp_listener):
                requests.get(f"{base}/delay")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=one_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    for _ in threads:
        timers = http_timers(receive(udp_listener))
        assert timers.keys() == {tags("get", host, "2xx")}
        assert timers[tags("get", host, "2xx")][1] == 1
        assert timers[tags("get", host, "2xx")][0] >= DELAY


GREENLETS_CALLING = """
import sys
import types

from packets import monitored_request
from pynba import instrumentation

instrumentation.instrument("requests", "urllib3")
from gevent import monkey  # noqa: E402  (after pynba, as a server that preloads the app)

monkey.patch_all()
import gevent  # noqa: E402
import requests  # noqa: E402

listener = types.SimpleNamespace(address=("127.0.0.1", int(sys.argv[1])))


def one_request():
    with monitored_request(listener):
        requests.get(sys.argv[2])


gevent.joinall([gevent.spawn(one_request) for _ in range(3)], raise_error=True)
"""


def test_each_greenlet_times_its_own_calls_where_gevent_patched_after_pynba(
    udp_listener, base, host, tmp_path
):
    # Three greenlets of one thread in a call at once: each call is the
    # outermost of its greenlet, where gevent patched the thread's ident
    # (``_thread.get_ident``) after pynba was imported and instrumented.
    pytest.importorskip("gevent")
    script = tmp_path / "greenlets_calling.py"
    script.write_text(GREENLETS_CALLING)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    port = udp_listener.address[1]
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), str(port), f"{base}/delay"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for _ in range(3):
        timers = http_timers(receive(udp_listener))
        assert timers.keys() == {tags("get", host, "2xx")}
        assert timers[tags("get", host, "2xx")][1] == 1
        assert timers[tags("get", host, "2xx")][0] >= DELAY


def test_each_request_times_its_own_calls(udp_listener, instrumented, base, host):
    # Each request's calls are counted in its own packet, never in the one before.
    instrumented("requests", "urllib3")
    port = int(host.rsplit(":", 1)[1])
    with requests.Session() as session, urllib3.HTTPConnectionPool("127.0.0.1", port) as pool:
        for calls in (2, 3):
            with monitored_request(udp_listener):
                for _ in range(calls):
                    session.get(f"{base}/status/200")
                    urllib3.request("GET", f"{base}/status/200")
                    pool.request("GET", "/status/200")
            timers = http_timers(receive(udp_listener))
            assert timers.keys() == {tags("get", host, "2xx")}
            assert timers[tags("get", host, "2xx")][1] == 3 * calls


@pytest.mark.parametrize("client", CLIENTS)
def test_a_request_dropped_unfinished_after_a_call_is_freed(
    client, udp_listener, instrumented, base
):
    # A hook keeping the request's timer would keep the request, still
    # sharing its thread's CPU with the requests after it.
    instrumented(client)
    running = thread_cpu().running
    collector = make_collector(udp_listener)
    token = activate(collector)
    call(client, f"{base}/status/200")
    deactivate(token)
    del collector
    gc.collect()
    assert thread_cpu().running == running


@pytest.mark.parametrize("client", CLIENTS)
def test_instrumenting_twice_still_times_once(client, udp_listener, instrumented, base, host):
    instrumented(client)
    instrumented(client)
    with monitored_request(udp_listener):
        call(client, f"{base}/status/200")
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {tags("get", host, "2xx")}
    assert timers[tags("get", host, "2xx")][1] == 1


# -- failures, and what is never done ---------------------------------------------


def refused(client, url):
    """The exception ``client`` raises for a GET of ``url``, run with the library as it is."""
    with pytest.raises(Exception) as raised:
        if client == "urllib3":
            urllib3.request("GET", url, retries=False)
        else:
            call(client, url)
    return raised.value


@pytest.mark.parametrize("client", CLIENTS)
def test_a_refused_connection_raises_as_without_pynba_and_is_timed_as_error(
    client, udp_listener, instrumented, refused_port, base, host
):
    url = f"http://127.0.0.1:{refused_port}/status/200"
    bare = refused(client, url)
    instrumented(client)
    with monitored_request(udp_listener):
        timed = refused(client, url)
        # The thread's calls are timed after it (a hook that marks a call
        # unmarks it when the call raises).
        assert call(client, f"{base}/status/200") == 200
    assert type(timed) is type(bare)
    assert str(timed) == str(bare)
    timers = http_timers(receive(udp_listener))
    assert timers.keys() == {
        tags("get", f"127.0.0.1:{refused_port}", "error"),
        tags("get", host, "2xx"),
    }
    assert timers[tags("get", f"127.0.0.1:{refused_port}", "error")][1] == 1


def test_the_timer_of_a_call_still_running_when_its_request_ends_is_dropped(
    udp_listener, instrumented, server, base
):
    instrumented("httpx")
    collector = make_collector(udp_listener)
    outcome = []

    def late_call():
        activate(collector)
        outcome.append(httpx.get(f"{base}/hold", timeout=10).status_code)

    server.arrived.clear()
    server.release.clear()
    thread = threading.Thread(target=late_call)
    thread.start()
    try:
        assert server.arrived.wait(10)
        collector.finish()
    finally:
        server.release.set()
        thread.join(10)
    assert outcome == [200]
    assert http_timers(receive(udp_listener)) == {}
    assert udp_listener.pending(0.1) == []


@pytest.mark.parametrize("client", CLIENTS)
def test_outside_a_request_calls_go_through_and_send_nothing(
    client, udp_listener, instrumented, base
):
    instrumented(client)
    assert call(client, f"{base}/status/200") == 200
    assert udp_listener.pending(0.1) == []


@pytest.mark.parametrize("client", CLIENTS)
def test_a_disabled_request_records_nothing(client, udp_listener, instrumented, base):
    instrumented(client)
    with monitored_request(udp_listener) as collector:
        collector.enabled = False
        assert call(client, f"{base}/status/200") == 200
    assert udp_listener.pending(0.1) == []


def test_uninstrument_puts_every_library_back(udp_listener, base):
    methods = [
        (httpx.Client, "send"),
        (httpx.AsyncClient, "send"),
        (requests.Session, "send"),
        (urllib3.PoolManager, "urlopen"),
        (urllib3.HTTPConnectionPool, "urlopen"),
        (urllib3.HTTPSConnectionPool, "urlopen"),
    ]
    instrumentation.uninstrument("http")  # whatever an earlier test left on
    before = [(owner, name, vars(owner).get(name)) for owner, name in methods]
    assert instrumentation.instrument("http") == ("httpx", "requests", "urllib3")
    try:
        assert httpx.Client.send is not before[0][2]
        assert httpx.Client.send.__wrapped__ is before[0][2]
    finally:
        instrumentation.uninstrument("http")
    instrumentation.uninstrument("http")  # twice: harmless
    assert [(owner, name, vars(owner).get(name)) for owner, name in methods] == before
    with monitored_request(udp_listener):
        for client in CLIENTS:
            call(client, f"{base}/status/200")
    assert http_timers(receive(udp_listener)) == {}


# -- the tags -----------------------------------------------------------------------


def test_the_host_tag_is_the_remote_host_normalised_without_its_default_port():
    assert origin_host("http://User:password@EXAMPLE.com.:80/path?query=1") == "example.com"
    assert origin_host("https://example.com:443") == "example.com"
    assert origin_host("https://example.com:80/") == "example.com:80"
    assert origin_host("http://example.com:8080?query") == "example.com:8080"
    assert origin_host("http://[0:0::1]:8000/") == "[::1]:8000"
    assert origin_host("http://xn--bcher-kva.example/") == "bücher.example"
    assert origin_host("http://Bücher.example/") == "bücher.example"
    # The name the client connects to (IDNA 2008: xn--fa-hia.de), not fass.de.
    assert origin_host("http://faß.de/") == "faß.de"
    assert host_tag("FAß.de", 8080) == "faß.de:8080"
    assert origin_host("http://example.com:99999/") == "<invalid-host>"
    assert origin_host("http://exa mple.com/") == "<invalid-host>"
    assert origin_host("/relative") == "<invalid-host>"
    assert origin_host(None) == "<invalid-host>"
    assert host_tag(b"xn--bcher-kva.example", None) == "bücher.example"
    assert host_tag("::1", 8000) == "[::1]:8000"
    assert host_tag("localhost", None) == "localhost"
    assert host_tag("", None) == "<invalid-host>"
    assert host_tag(["not", "a", "host"], None) == "<invalid-host>"


def test_a_unicode_host_is_tagged_as_the_name_urllib3_connects_to():
    # urllib3 lowers each label on its own: a label's last Σ is a final ς,
    # a Σ alone a σ, whatever the labels around it.
    for url in ("http://ΣΊΣΥΦΟΣ.gr/", "http://user@ΣΊΣΥΦΟΣ.gr:8080/", "http://ı.Σ/"):
        connected = urllib3.util.parse_url(url)
        assert origin_host(url) == host_tag(connected.host, connected.port)
    assert origin_host("http://ΣΊΣΥΦΟΣ.gr/") == "σίσυφος.gr"
    assert host_tag("ΣΊΣΥΦΟΣ.gr", 8080) == "σίσυφος.gr:8080"


def test_a_huge_host_is_invalid_and_tagged_at_once():
    # Python's punycode encoder is quadratic: a 100 KB label of distinct
    # characters took minutes to encode.
    huge = "".join(chr(0x4E00 + n % 20_000) for n in range(100_000))
    assert host_tag(huge, None) == "<invalid-host>"
    assert origin_host(f"http://{huge}/") == "<invalid-host>"


def test_past_the_limit_hosts_are_reported_as_other(monkeypatch):
    monkeypatch.setattr(_http_client, "HOST_LIMIT", 2)
    monkeypatch.setattr(_http_client, "_seen_hosts", set())
    assert [origin_host(f"http://host{n}.example/") for n in range(4)] == [
        "host0.example",
        "host1.example",
        "<other>",
        "<other>",
    ]
    assert origin_host("http://HOST1.example/x") == "host1.example"
    assert origin_host("http://host0.example:8080/") == "<other>"


def test_the_op_and_status_tags_come_from_small_fixed_sets():
    assert [method_op(m) for m in ("GET", "head", "Post", "PROPFIND", b"GET", None)] == [
        "get",
        "head",
        "post",
        "other",
        "other",
        "other",
    ]
    assert [status_class(s) for s in (100, 204, 302, 404, 599, 600, 99, None, "x")] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
        "other",
        "other",
        "other",
    ]


@pytest.mark.parametrize("bad", [object(), ["a list"], 1.5j])
def test_a_calls_tags_are_checked_once_made_and_a_bad_one_never_timed(bad, udp_listener):
    # A key's tags are checked when made, not on every call: tags that are
    # not tags are refused (raised here, in strict mode; logged in
    # production), never cached, and no timer is made of them.
    made = []

    def values_of(key):
        made.append(key)
        return ("http", "get", bad, "2xx") if key == "bad" else ("http", "get", "h", "2xx")

    timers = _http_client.CallTimers(values_of)
    with monitored_request(udp_listener) as collector:
        for _ in range(2):
            with pytest.raises(TypeError, match="host"):
                timers.add(collector, 0.001, "bad")
        timers.add(collector, 0.002, "good")
        timers.add(collector, 0.003, "good")
    assert made == ["bad", "bad", "good"]  # refused tags are made again; good ones once
    assert http_timers(receive(udp_listener)) == {
        tags("get", "h", "2xx"): (pytest.approx(0.005), 2)
    }


@pytest.mark.parametrize("asynchronous", [False, True], ids=["Client", "AsyncClient"])
def test_mock_autospec_of_an_instrumented_httpx_send_binds_the_client(asynchronous, instrumented):
    # An application's tests patch send with autospec: the hook must look
    # like the function it replaces (a FunctionType), or mock binds no self.
    from unittest import mock

    instrumented("httpx")
    owner = httpx.AsyncClient if asynchronous else httpx.Client

    def answer(client, request, **kwargs):
        return httpx.Response(200, request=request)

    async def answer_later(client, request, **kwargs):
        return answer(client, request)

    with mock.patch.object(
        owner, "send", autospec=True, side_effect=answer_later if asynchronous else answer
    ) as send:
        client = owner()
        if asynchronous:
            response = asyncio.run(client.get("http://127.0.0.1:1/x"))
        else:
            response = client.get("http://127.0.0.1:1/x")
        assert response.status_code == 200
        send.assert_called_once_with(client, mock.ANY, auth=mock.ANY, follow_redirects=mock.ANY)


def test_an_httpx_send_wrapped_with_wrapt_gets_the_hook_of_any_keywords(udp_listener):
    # A wrapt wrapper shows httpx's __code__ and __kwdefaults__ but takes
    # (*args, **kwargs): it gets the hook that passes on what it is given.
    wrapt = pytest.importorskip("wrapt")
    from pynba.instrumentation import httpx as hooks

    seen = []

    def record(wrapped, instance, args, kwargs):
        seen.append(sorted(kwargs))
        return httpx.Response(200)

    wrapped = wrapt.FunctionWrapper(httpx.Client.send, record)
    assert wrapped.__code__ is httpx.Client.send.__code__  # what a check of __code__ would see
    assert hooks._known_defaults(wrapped) is None
    request = httpx.Request("GET", "http://h.example/")
    with monitored_request(udp_listener):
        assert hooks._sync_hook(wrapped)("client", request, stream=True).status_code == 200
    assert seen == [["stream"]]  # as it came: no defaults added
    assert http_timers(receive(udp_listener)).keys() == {tags("get", "h.example", "2xx")}
