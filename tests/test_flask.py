"""The Flask integration: with Flask's test client, and served by a real server (werkzeug)."""

import gc
import http.client
import threading

import pytest

flask = pytest.importorskip("flask")

from conftest import UDPListener  # noqa: E402
from packets import receive  # noqa: E402
from pynba import pynba  # noqa: E402
from pynba.flask import Pynba, init_app  # noqa: E402
from pynba.wsgi import PynbaMiddleware  # noqa: E402


def make_app(**config):
    app = flask.Flask(__name__)
    app.config.update(config)
    users = flask.Blueprint("users", __name__, url_prefix="/users")

    @users.route("/<int:user_id>")
    def detail(user_id):
        with pynba.timer(group="db", op="select"):
            pass
        return f"user{user_id}"

    @app.route("/stream")
    def stream():
        @flask.stream_with_context
        def chunks():
            for number in range(3):
                with pynba.timer(group="stream"):
                    pass
                yield f"chunk{number}\n"

        return flask.Response(chunks())

    @app.route("/boom")
    def boom():
        raise RuntimeError("the view failed")

    @app.route("/named")
    def named():
        pynba.script_name = "chosen by the view"
        return "", 204

    app.register_blueprint(users)
    return app


def fetch(app, path, **kwargs):
    """A test-client response, closed (as a server closes it) once read."""
    with app.test_client().get(path, **kwargs) as response:
        response.get_data()
        return response


def address_of(listener):
    return f"{listener.host}:{listener.port}"


def test_rule_status_size_and_timers(udp_listener):
    app = make_app()
    middleware = init_app(app, udp_listener.address, tags={"app": "flask-test"})
    assert isinstance(middleware, PynbaMiddleware) and app.extensions["pynba"] is middleware
    assert fetch(app, "/users/42", headers={"Host": "shop.test:5000"}).data == b"user42"
    packet = receive(udp_listener)
    assert packet.script_name == "/users/<int:user_id>"
    assert (packet.status, packet.document_size) == (200, len(b"user42"))
    assert packet.server_name == "shop.test"
    assert packet.tags == [("app", "flask-test")]
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert udp_listener.pending() == []


def test_streaming_errors_404_and_names(udp_listener):
    app = make_app()
    Pynba(app, udp_listener.address)
    assert fetch(app, "/stream").data == b"chunk0\nchunk1\nchunk2\n"
    packet = receive(udp_listener)
    assert (packet.script_name, packet.document_size) == ("/stream", 21)
    assert packet.timer(group="stream").hit_count == 3
    assert fetch(app, "/boom").status_code == 500
    assert (lambda p: (p.script_name, p.status))(receive(udp_listener)) == ("/boom", 500)
    assert fetch(app, "/no/such/page").status_code == 404
    assert (lambda p: (p.script_name, p.status))(receive(udp_listener)) == ("<unmatched>", 404)
    assert fetch(app, "/named").status_code == 204
    packet = receive(udp_listener)
    assert (packet.script_name, packet.status) == ("chosen by the view", 204)


@pytest.mark.parametrize("path", ["/users/3", "/stream"])
def test_a_test_client_response_never_closed_is_reported_once_dropped(udp_listener, path):
    app = make_app()
    middleware = init_app(app, udp_listener.address)
    client = app.test_client()
    gc.collect()
    gc.disable()  # no reference cycle: the packet goes as soon as the response is dropped
    try:
        response = client.get(path)
        assert response.status_code == 200
        response.get_data()
        assert udp_listener.pending(0.1) == []
        del response
        packet = receive(udp_listener, timeout=1.0)
    finally:
        gc.enable()
    assert packet.script_name == ("/users/<int:user_id>" if path == "/users/3" else "/stream")
    assert packet.status == 200
    assert middleware.reporter.stats["unclosed"] == 1
    fetch(app, path)  # closed: reported, and not counted as unclosed
    assert receive(udp_listener).script_name == packet.script_name
    assert udp_listener.pending(0.1) == []
    assert middleware.reporter.stats["unclosed"] == 1


def test_endpoint_names_and_config_from_the_app(udp_listener, monkeypatch):
    monkeypatch.setenv("PINBA_SERVER", "192.0.2.1:1")  # app.config wins over the environment
    app = make_app(PINBA_SERVER=address_of(udp_listener), PINBA_PREFIX="shop:")
    extension = Pynba(script_name="endpoint")
    extension.init_app(app)
    fetch(app, "/users/1")
    assert receive(udp_listener).script_name == "shop:users.detail"


def test_disabled(udp_listener):
    app = make_app(PINBA_ENABLED="off")
    init_app(app, udp_listener.address)
    assert fetch(app, "/stream").data.count(b"chunk") == 3
    assert udp_listener.pending() == []


def test_bad_arguments(udp_listener):
    with pytest.raises(ValueError, match="script_name"):
        Pynba(script_name="path")
    with pytest.raises(TypeError, match="app"):
        init_app(object(), udp_listener.address)


@pytest.fixture(scope="module")
def served():
    serving = pytest.importorskip("werkzeug.serving")
    listener = UDPListener()
    app = make_app()
    init_app(app, listener.address)
    server = serving.make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server.server_port, listener
    finally:
        server.shutdown()
        thread.join()
        listener.close()


def http_get(port, path, host=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_real_server(served):
    port, listener = served
    assert http_get(port, "/users/7") == (200, b"user7")
    packet = receive(listener)
    assert (packet.script_name, packet.status) == ("/users/<int:user_id>", 200)
    assert packet.timer_tags() == [(("group", "db"), ("op", "select"))]
    assert http_get(port, "/stream") == (200, b"chunk0\nchunk1\nchunk2\n")
    packet = receive(listener)
    assert (packet.script_name, packet.document_size) == ("/stream", 21)
    assert packet.timer(group="stream").hit_count == 3
    assert listener.pending(0.05) == []


def test_real_server_404s_are_unmatched_and_host_normalised(served):
    port, listener = served
    for path in ("/reset/secret-token", "/users/x;jsessionid=secret", "/.git/config"):
        assert http_get(port, path, "Shop.Example.COM.:5000")[0] == 404
        packet = receive(listener)
        assert (packet.script_name, packet.status) == ("<unmatched>", 404)
        assert packet.server_name == "shop.example.com"
    # Werkzeug refuses the request (its Host is not one), and pynba reports it.
    assert http_get(port, "/users/7", "a" * 8000)[0] == 400
    packet = receive(listener)
    assert (packet.server_name, packet.script_name, packet.status) == (
        "<invalid-host>",
        "<unmatched>",
        400,
    )


def test_name_options_from_the_app_config(udp_listener):
    app = make_app(
        PINBA_SERVER=address_of(udp_listener),
        PINBA_UNMATCHED_NAME="not-found",
        PINBA_SERVER_NAMES="shop.test,Bücher.example",
        PINBA_NAME_LIMIT=10,
    )
    middleware = init_app(app, script_name="endpoint")
    assert middleware.monitoring.host_names.limit == 10
    fetch(app, "/no/such/page", headers={"Host": "shop.test:5000"})
    fetch(app, "/users/1", headers={"Host": "scanner.test"})
    fetch(app, "/users/1", headers={"Host": "xn--bcher-kva.example"})
    packets = [receive(udp_listener) for _ in range(3)]
    assert [(p.script_name, p.server_name) for p in packets] == [
        ("not-found", "shop.test"),
        ("users.detail", "<other>"),
        ("users.detail", "bücher.example"),
    ]
    assert middleware.reporter.stats["server_name_overflow"] == 1
