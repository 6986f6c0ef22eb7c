"""Configuration from arguments, framework settings and the environment; Pinboard tags."""

import pytest

from packets import receive
from pynba import PynbaMiddleware, ScriptMonitor, pynba
from pynba.config import ENVIRONMENT, parse_flag, resolve


def hello(environ, start_response):
    with pynba.timer(group="render"):
        pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def call(app, path="/hello"):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "HTTP_HOST": "shop.test",
        "wsgi.url_scheme": "http",
    }
    result = app(environ, lambda status, headers, exc_info=None: None)
    body = b"".join(result)
    if hasattr(result, "close"):  # a disabled middleware returns the app's own list
        result.close()
    return body


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)


def test_defaults():
    config = resolve("127.0.0.1:30002")
    assert (config.enabled, config.prefix, config.hostname, config.server_name) == (
        True,
        "",
        None,
        None,
    )
    assert not (config.raise_on_fail or config.timer_rusage or config.pinboard)


def test_no_server_anywhere_turns_monitoring_off_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr("pynba.config._warned_no_server", False)
    with caplog.at_level("WARNING", logger="pynba"):
        config = resolve()
        assert not config.enabled
        middleware = PynbaMiddleware(hello)
        assert not middleware.enabled
        assert call(middleware) == b"hello"
        monitor = ScriptMonitor()
        with pynba.timer(group="db"):
            pass
        monitor.send()
        monitor.close()
    warnings = [r.getMessage() for r in caplog.records if "no Pinba server" in r.getMessage()]
    assert len(warnings) == 1 and "PINBA_SERVER" in warnings[0] and "off" in warnings[0]


def test_a_malformed_address_still_fails_at_startup_naming_it():
    with pytest.raises(ValueError, match="nope:port"):
        PynbaMiddleware(hello, "nope:port")


def test_environment_is_read_when_resolving(monkeypatch):
    monkeypatch.setenv("PINBA_SERVER", "a:1, b:2")
    monkeypatch.setenv("PINBA_PREFIX", "web:")
    monkeypatch.setenv("PINBA_TIMER_RUSAGE", "On")
    monkeypatch.setenv("PINBA_PINBOARD", "1")
    monkeypatch.setenv("PINBA_HOSTNAME", "web7")
    config = resolve()
    assert (config.address, config.prefix, config.hostname) == ("a:1, b:2", "web:", "web7")
    assert config.timer_rusage and config.pinboard
    monkeypatch.setenv("PINBA_PREFIX", "other:")
    assert resolve().prefix == "other:"


def test_explicit_arguments_then_settings_then_environment(monkeypatch):
    monkeypatch.setenv("PINBA_SERVER", "env:1")
    monkeypatch.setenv("PINBA_PREFIX", "env:")
    monkeypatch.setenv("PINBA_ENABLED", "no")
    settings = {"PINBA_PREFIX": "settings:", "PINBA_SERVER": None}
    config = resolve(settings=settings)
    assert (config.address, config.prefix, config.enabled) == ("env:1", "settings:", False)
    config = resolve("arg:1", settings=settings, prefix="", enabled=True)
    assert (config.address, config.prefix, config.enabled) == ("arg:1", "", True)


def test_disabled_needs_no_server(monkeypatch):
    monkeypatch.setenv("PINBA_ENABLED", "false")
    assert resolve().enabled is False
    app = PynbaMiddleware(hello)
    assert call(app) == b"hello"


@pytest.mark.parametrize("value", ["maybe", "2x"])
def test_bad_flags_name_the_variable(monkeypatch, value):
    monkeypatch.setenv("PINBA_ENABLED", value)
    with pytest.raises(ValueError, match="PINBA_ENABLED"):
        resolve("127.0.0.1")
    with pytest.raises(TypeError, match="PINBA_PINBOARD"):
        parse_flag(1.5, "PINBA_PINBOARD")
    with pytest.raises(TypeError, match="unknown option 'colour'"):
        resolve("127.0.0.1", colour="blue")


def test_wsgi_middleware_from_the_environment(udp_listener_factory, monkeypatch):
    first, second = udp_listener_factory(), udp_listener_factory()
    monkeypatch.setenv("PINBA_SERVER", f"127.0.0.1:{first.port},127.0.0.1:{second.port}")
    monkeypatch.setenv("PINBA_PREFIX", "env:")
    monkeypatch.setenv("PINBA_SERVER_NAME", "configured.test")
    app = PynbaMiddleware(hello)
    monkeypatch.setenv("PINBA_PREFIX", "read-too-late:")  # read at construction only
    assert call(app) == b"hello"
    for listener in (first, second):
        packet = receive(listener)
        assert (packet.script_name, packet.server_name) == ("env:/hello", "configured.test")
    explicit = PynbaMiddleware(hello, first.address, prefix="arg:", server_name="arg.test")
    call(explicit)
    packet = receive(first)
    assert (packet.script_name, packet.server_name) == ("arg:/hello", "arg.test")
    assert second.pending() == []


def test_pinboard_tags_on_every_timer(udp_listener):
    app = PynbaMiddleware(hello, udp_listener.address, pinboard=True, hostname="web3")
    call(app)
    packet = receive(udp_listener)
    assert packet.timer_tags() == [
        (("__hostname", "web3"), ("__server_name", "shop.test"), ("group", "render"))
    ]


def test_pinboard_keeps_a_timer_s_own_tags(udp_listener):
    def app(environ, start_response):
        pynba.server_name = "set.by.app"
        with pynba.timer(group="db", __hostname="db-host"):
            pass
        start_response("200 OK", [])
        return [b""]

    call(PynbaMiddleware(app, udp_listener.address, pinboard=True, hostname="web3"))
    packet = receive(udp_listener)
    assert packet.timer_tags() == [
        (("__hostname", "db-host"), ("__server_name", "set.by.app"), ("group", "db"))
    ]


def test_script_monitor_from_the_environment(udp_listener, monkeypatch):
    monkeypatch.setenv("PINBA_SERVER", f"{udp_listener.host}:{udp_listener.port}")
    monkeypatch.setenv("PINBA_HOSTNAME", "worker-host")
    monkeypatch.setenv("PINBA_SERVER_NAME", "workers")
    monkeypatch.setenv("PINBA_PINBOARD", "true")
    monitor = ScriptMonitor(scriptname="job", autostart=False)
    with monitor.job():
        with pynba.timer(group="step"):
            pass
    monitor.close()
    packet = receive(udp_listener)
    assert (packet.hostname, packet.server_name, packet.script_name) == (
        "worker-host",
        "workers",
        "job",
    )
    assert packet.timer_tags() == [
        (("__hostname", "worker-host"), ("__server_name", "workers"), ("group", "step"))
    ]


def test_script_monitor_disabled_from_the_environment(monkeypatch):
    monkeypatch.setenv("PINBA_ENABLED", "0")
    monitor = ScriptMonitor()
    with pynba.timer(group="ignored"):
        pass
    monitor.send()
    monitor.close()


# -- names a visitor controls (see pynba.names) ------------------------------


def test_name_options_defaults():
    config = resolve("127.0.0.1")
    assert (config.unmatched_name, config.name_limit, config.server_names) == (
        "<unmatched>",
        2000,
        None,
    )
    assert {"unmatched_name", "name_limit", "server_names"} <= set(config.options())


def test_name_options_from_the_environment_and_settings(monkeypatch):
    monkeypatch.setenv("PINBA_UNMATCHED_NAME", "404")
    monkeypatch.setenv("PINBA_NAME_LIMIT", " 50 ")
    monkeypatch.setenv("PINBA_SERVER_NAMES", "Shop.Example.COM., api.example.com:443,,")
    config = resolve("127.0.0.1")
    assert (config.unmatched_name, config.name_limit) == ("404", 50)
    assert config.server_names == ("shop.example.com", "api.example.com")
    settings = {"PINBA_SERVER_NAMES": ["xn--bcher-kva.example"], "PINBA_NAME_LIMIT": 0}
    config = resolve("127.0.0.1", settings=settings)
    assert (config.server_names, config.name_limit) == (("bücher.example",), 0)
    monkeypatch.setenv("PINBA_SERVER_NAMES", " ")
    assert resolve("127.0.0.1").server_names is None  # set but empty: no allow-list


def test_name_options_as_arguments_are_parsed_too(udp_listener):
    config = resolve("127.0.0.1", server_names=["A.test"], name_limit=7, unmatched_name="none")
    assert (config.server_names, config.name_limit, config.unmatched_name) == (
        ("a.test",),
        7,
        "none",
    )
    app = PynbaMiddleware(hello, udp_listener.address, server_names="a.test,b.test", name_limit=3)
    assert (app.monitoring.host_names.admitted, app.monitoring.path_names.limit) == (
        {"a.test", "b.test"},
        3,
    )
    assert resolve("127.0.0.1", server_names=[]).server_names == ()  # allows no name


def test_server_names_may_be_written_in_unicode_and_resolve_again_to_themselves():
    written = ["Bücher.example", "xn--strae-oqa.de", "[0::1]:80", "xn--ls8h.la"]
    names = resolve("127.0.0.1", server_names=written).server_names
    assert names == ("bücher.example", "straße.de", "[::1]", "xn--ls8h.la")
    # Framework integrations resolve their options, then the middleware does again.
    assert resolve("127.0.0.1", server_names=names).server_names == names


@pytest.mark.parametrize(
    "variable, value, error",
    [
        ("PINBA_NAME_LIMIT", "ten", ValueError),
        ("PINBA_NAME_LIMIT", "-1", ValueError),
        ("PINBA_NAME_LIMIT", "1.5", ValueError),
        ("PINBA_SERVER_NAMES", "shop.test, not a host", ValueError),
        ("PINBA_UNMATCHED_NAME", "", ValueError),
    ],
)
def test_bad_name_options_name_the_variable(monkeypatch, variable, value, error):
    monkeypatch.setenv(variable, value)
    with pytest.raises(error, match=variable):
        resolve("127.0.0.1")


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("name_limit", True, TypeError),
        ("name_limit", 2.0, TypeError),
        ("name_limit", -5, ValueError),
        ("server_names", 42, TypeError),
        ("server_names", [b"shop.test"], TypeError),
        ("server_names", ["shop.test/x"], ValueError),
        ("unmatched_name", 404, TypeError),
        ("unmatched_name", "", ValueError),
    ],
)
def test_bad_name_arguments_name_the_option(udp_listener, option, value, error):
    with pytest.raises(error, match=option):
        PynbaMiddleware(hello, udp_listener.address, **{option: value})
