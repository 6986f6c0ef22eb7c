"""Templates timed automatically: Jinja2 and Django's template language, rendered for real."""

import asyncio
import time

import pytest

from packets import monitored_request, receive
from pynba import instrumentation
from pynba.instrumentation import _templates

jinja2 = pytest.importorskip("jinja2")
pytest.importorskip("django")

from django.template import Context, Engine, Template, engines  # noqa: E402
from django.template.loader import render_to_string  # noqa: E402
from django.test import override_settings  # noqa: E402

import test_django  # noqa: E402, F401 - configures Django's settings as the whole suite has them

DELAY = 0.05

SOURCES = {
    "page.html": "<h1>{{ title }}</h1>{% include 'part.html' %}",
    "part.html": "<p>{{ wait }}</p>",
    "child.html": "{% extends 'page.html' %}",
    "broken.html": "{% include 'missing.html' %}",
}
JINJA_SOURCES = {
    **SOURCES,
    "part.html": "<p>{{ wait() }}</p>",
    "nested.html": "<div>{{ render('part.html') }}</div>",
    "broken.html": "{{ missing.attribute }}",
}


def wait():
    time.sleep(DELAY)
    return ""


@pytest.fixture
def instrumented():
    """Turns on the integrations a test names; all of them off again at its end."""
    instrumentation.uninstrument("render")  # whatever an earlier test left on
    yield instrumentation.instrument
    instrumentation.uninstrument("render")


def render_timers(packet):
    """The packet's timers of group render: {template: (seconds, hits)}, summed."""
    found = {}
    for timer in packet.timers:
        tags = dict(timer.tags)
        if tags.pop("group") != "render":
            continue
        assert list(tags) == ["template"]
        seconds, hits = found.get(tags["template"], (0.0, 0))
        found[tags["template"]] = (seconds + timer.value, hits + timer.hit_count)
    return found


def jinja_environment(**options):
    environment = jinja2.Environment(loader=jinja2.DictLoader(JINJA_SOURCES), **options)
    environment.globals["wait"] = wait
    environment.globals["render"] = lambda name: environment.get_template(name).render()
    return environment


def django_engine():
    return Engine(loaders=[("django.template.loaders.locmem.Loader", SOURCES)])


# -- Jinja2 -------------------------------------------------------------------------


def test_jinja2_times_each_render_under_its_template_name(udp_listener, instrumented):
    instrumented("jinja2")
    environment = jinja_environment()
    with monitored_request(udp_listener):
        assert environment.get_template("page.html").render(title="Hi") == "<h1>Hi</h1><p></p>"
        assert environment.get_template("child.html").render(title="Child").startswith("<h1>")
        assert environment.from_string("{{ 1 + 1 }}").render() == "2"
        assert environment.get_template("nested.html").render() == "<div><p></p></div>"
    timers = render_timers(receive(udp_listener))
    # The included, extended and nested templates are part of the outer render.
    assert timers.keys() == {"page.html", "child.html", "<string>", "nested.html"}
    assert all(hits == 1 for _, hits in timers.values())
    assert all(timers[name][0] >= DELAY for name in ("page.html", "child.html", "nested.html"))


def test_jinja2_async_renders_are_timed_once(udp_listener, instrumented):
    instrumented("jinja2")
    environment = jinja_environment(enable_async=True)
    template = environment.get_template("page.html")

    async def render_twice():
        return await asyncio.gather(template.render_async(title="A"), template.render_async())

    with monitored_request(udp_listener):
        assert asyncio.run(render_twice()) == ["<h1>A</h1><p></p>", "<h1></h1><p></p>"]
        assert template.render(title="B") == "<h1>B</h1><p></p>"  # runs render_async itself
    seconds, hits = render_timers(receive(udp_listener))["page.html"]
    assert hits == 3
    assert seconds >= 3 * DELAY


def test_jinja2_a_failing_render_raises_as_without_pynba_and_is_timed(udp_listener, instrumented):
    environment = jinja_environment(undefined=jinja2.StrictUndefined)
    with pytest.raises(jinja2.UndefinedError) as bare:
        environment.get_template("broken.html").render()
    instrumented("jinja2")
    with monitored_request(udp_listener), pytest.raises(jinja2.UndefinedError) as timed:
        environment.get_template("broken.html").render()
    assert str(timed.value) == str(bare.value)
    assert render_timers(receive(udp_listener)).keys() == {"broken.html"}


def test_a_render_called_without_its_template_raises_as_without_pynba_untimed(
    udp_listener, instrumented
):
    with pytest.raises(TypeError) as bare:
        jinja2.Template.render()
    instrumented("jinja2", "django_templates")
    with monitored_request(udp_listener):
        with pytest.raises(TypeError) as timed:
            jinja2.Template.render()
        with pytest.raises(TypeError):
            Template.render()
        jinja_environment().from_string("{{ x }}").render(x=1)  # so that a packet goes
    assert str(timed.value) == str(bare.value)
    assert render_timers(receive(udp_listener)).keys() == {"<string>"}


def test_jinja2_outside_a_request_renders_and_sends_nothing(udp_listener, instrumented):
    instrumented("jinja2")
    assert jinja_environment().from_string("{{ x }}").render(x=1) == "1"
    assert udp_listener.pending(0.1) == []


# -- Django ---------------------------------------------------------------------------


def test_django_times_each_render_under_its_template_name(udp_listener, instrumented):
    instrumented("django_templates")
    engine = django_engine()
    with monitored_request(udp_listener):
        page = engine.get_template("page.html").render(Context({"title": "Hi", "wait": wait}))
        assert page == "<h1>Hi</h1><p></p>"
        child = engine.get_template("child.html").render(Context({"wait": wait}))
        assert child == "<h1></h1><p></p>"
        assert engine.from_string("{{ x }}").render(Context({"x": 2})) == "2"
    timers = render_timers(receive(udp_listener))
    # {% include %} renders part.html inside page.html's timer; {% extends %} too.
    assert timers.keys() == {"page.html", "child.html", "<string>"}
    assert all(hits == 1 for _, hits in timers.values())
    assert timers["page.html"][0] >= DELAY
    assert timers["child.html"][0] >= DELAY


def test_django_renders_through_the_configured_engines_are_timed_once(udp_listener, instrumented):
    instrumented("django_templates")
    backend = "django.template.backends.django.DjangoTemplates"
    loaders = [("django.template.loaders.locmem.Loader", SOURCES)]
    with override_settings(TEMPLATES=[{"BACKEND": backend, "OPTIONS": {"loaders": loaders}}]):
        with monitored_request(udp_listener):
            assert render_to_string("page.html", {"title": "Hi", "wait": wait}).startswith("<h1>")
            assert engines["django"].from_string("{{ x }}").render({"x": 1}) == "1"
            assert Template("{{ x }}").render(Context({"x": 3})) == "3"
    timers = render_timers(receive(udp_listener))
    assert timers.keys() == {"page.html", "<string>"}
    assert timers["page.html"][1] == 1
    assert timers["<string>"][1] == 2


def test_django_a_failing_render_raises_as_without_pynba_and_is_timed(udp_listener, instrumented):
    from django.template import TemplateDoesNotExist

    engine = django_engine()
    with pytest.raises(TemplateDoesNotExist) as bare:
        engine.get_template("broken.html").render(Context())
    instrumented("django_templates")
    with monitored_request(udp_listener), pytest.raises(TemplateDoesNotExist) as timed:
        engine.get_template("broken.html").render(Context())
    assert str(timed.value) == str(bare.value)
    assert render_timers(receive(udp_listener)).keys() == {"broken.html"}


def test_django_outside_a_request_renders_and_sends_nothing(udp_listener, instrumented):
    instrumented("django_templates")
    assert django_engine().from_string("{{ x }}").render(Context({"x": 1})) == "1"
    assert udp_listener.pending(0.1) == []


# -- both -------------------------------------------------------------------------------


def test_a_disabled_request_records_nothing(udp_listener, instrumented):
    instrumented("render")
    with monitored_request(udp_listener) as collector:
        collector.enabled = False
        jinja_environment().from_string("{{ x }}").render(x=1)
        django_engine().from_string("{{ x }}").render(Context({"x": 1}))
    assert udp_listener.pending(0.1) == []


def test_past_the_limit_template_names_are_reported_as_other(
    udp_listener, instrumented, monkeypatch
):
    monkeypatch.setattr(_templates, "TEMPLATE_LIMIT", 1)
    monkeypatch.setattr(_templates, "_values_of", {})
    instrumented("jinja2")
    environment = jinja_environment()
    with monitored_request(udp_listener):
        environment.get_template("page.html").render()
        environment.get_template("child.html").render()
        environment.get_template("page.html").render()
    timers = render_timers(receive(udp_listener))
    assert {name: hits for name, (_, hits) in timers.items()} == {"page.html": 2, "<other>": 1}


def test_uninstrument_puts_both_libraries_back(udp_listener):
    from django.template import base

    methods = [(jinja2.Template, "render"), (jinja2.Template, "render_async")]
    methods.append((base.Template, "render"))
    instrumentation.uninstrument("render")  # whatever an earlier test left on
    before = [(owner, name, vars(owner).get(name)) for owner, name in methods]
    assert instrumentation.instrument("render") == ("jinja2", "django_templates")
    assert instrumentation.instrument("render") == ("jinja2", "django_templates")
    try:
        assert base.Template.render.__wrapped__ is before[2][2]
    finally:
        instrumentation.uninstrument("render")
    instrumentation.uninstrument("render")
    assert [(owner, name, vars(owner).get(name)) for owner, name in methods] == before
    with monitored_request(udp_listener):
        jinja_environment().from_string("{{ x }}").render(x=1)
        django_engine().from_string("{{ x }}").render(Context({"x": 1}))
    assert render_timers(receive(udp_listener)) == {}
