"""Configuration: explicit arguments, then framework settings, then the environment.

Every middleware and ``ScriptMonitor`` resolves its options here when it is
constructed (never at import). An option given as an argument wins; an
option left unset (``None``) is looked up in the framework's settings when
there are any (Django ``settings``, Flask ``app.config``, Pyramid's
``pinba.*`` settings), then in the environment, then takes its default:

====================  ==========================  ===========================================
option                environment variable        default
====================  ==========================  ===========================================
``address``           ``PINBA_SERVER``            none: monitoring is off (one warning)
``enabled``           ``PINBA_ENABLED``           ``True``
``prefix``            ``PINBA_PREFIX``            ``""``
``hostname``          ``PINBA_HOSTNAME``          this machine's host name
``server_name``       ``PINBA_SERVER_NAME``       the request's ``Host`` (scripts: host name)
``raise_on_fail``     ``PINBA_RAISE_ON_FAIL``     ``False``
``timer_rusage``      ``PINBA_TIMER_RUSAGE``      ``False``
``memory_footprint``  ``PINBA_MEMORY_FOOTPRINT``  ``False``
``pinboard``          ``PINBA_PINBOARD``          ``False``
``unmatched_name``    ``PINBA_UNMATCHED_NAME``    ``"<unmatched>"``
``name_limit``        ``PINBA_NAME_LIMIT``        ``2000``
``server_names``      ``PINBA_SERVER_NAMES``      none: any ``Host`` (within ``name_limit``)
``instrument``        ``PINBA_INSTRUMENT``        none: no library is timed automatically
====================  ==========================  ===========================================

``PINBA_SERVER`` names one server or several separated by commas
(``"pinba1:30002,pinba2:30002"``), ``PINBA_SERVER_NAMES`` a comma-separated
list of host names, ``PINBA_INSTRUMENT`` the integrations to turn on when
the middleware or monitor is made (``all``, or a comma-separated list of
integrations and groups: see ``pynba.instrumentation``). Flags accept
``1/0``, ``true/false``, ``yes/no`` and ``on/off`` (any case).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import instrumentation
from .collector import CollectorSettings
from .names import DEFAULT_NAME_LIMIT, UNMATCHED_NAME, parse_names
from .reporter import Reporter

__all__ = ["ENVIRONMENT", "Config", "Settings", "parse_flag", "resolve"]

logger = logging.getLogger("pynba")


class Settings(Protocol):
    """Framework settings, looked up by environment variable name (``PINBA_SERVER``...)."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


#: Each option and the environment variable (and settings key) that sets it.
ENVIRONMENT: dict[str, str] = {
    "address": "PINBA_SERVER",
    "enabled": "PINBA_ENABLED",
    "prefix": "PINBA_PREFIX",
    "hostname": "PINBA_HOSTNAME",
    "server_name": "PINBA_SERVER_NAME",
    "raise_on_fail": "PINBA_RAISE_ON_FAIL",
    "timer_rusage": "PINBA_TIMER_RUSAGE",
    "memory_footprint": "PINBA_MEMORY_FOOTPRINT",
    "pinboard": "PINBA_PINBOARD",
    "unmatched_name": "PINBA_UNMATCHED_NAME",
    "name_limit": "PINBA_NAME_LIMIT",
    "server_names": "PINBA_SERVER_NAMES",
    "instrument": "PINBA_INSTRUMENT",
}

_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off", ""))


def parse_flag(value: Any, name: str) -> bool:
    """A boolean option from a bool, an int or a string such as ``"on"``/``"0"``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"{name} must be a flag (1/0, true/false, yes/no, on/off), got {value!r}")
    raise TypeError(f"{name} must be a bool, not {type(value).__name__}")


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    return _text(value, name) or None


def _name(value: Any, name: str) -> str:
    if not _text(value, name):
        raise ValueError(f"{name} must not be empty")
    return value


def _count(value: Any, name: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _server_names(value: Any, name: str) -> tuple[str, ...] | None:
    # An empty string (an unset variable, say) is no allow-list; an empty
    # list given as such allows no name.
    if isinstance(value, str) and not value.strip():
        return None
    return parse_names(value, name)


def _address(value: Any, name: str) -> Any:
    # Strings are parsed by the Reporter (which accepts comma-separated
    # lists); settings may also hold a list or a (host, port) tuple.
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _integrations(value: Any, name: str) -> tuple[str, ...]:
    # Kept as written, not expanded: instrument() skips the integrations of a
    # group (or of "all") whose library is missing, and refuses one named alone.
    if isinstance(value, str):
        names = tuple(word.strip() for word in value.split(",") if word.strip())
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        names = tuple(value)
    else:
        raise TypeError(f"{name} must be a str or a list of str, not {type(value).__name__}")
    try:
        instrumentation.parse_names(names)
    except (TypeError, ValueError) as error:
        if name == "instrument":
            raise
        raise type(error)(f"{name}: {error}") from None
    return names


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "address": _address,
    "enabled": parse_flag,
    "prefix": _text,
    "hostname": _optional_text,
    "server_name": _optional_text,
    "raise_on_fail": parse_flag,
    "timer_rusage": parse_flag,
    "memory_footprint": parse_flag,
    "pinboard": parse_flag,
    "unmatched_name": _name,
    "name_limit": _count,
    "server_names": _server_names,
    "instrument": _integrations,
}

_TEXT_OPTIONS = frozenset(("prefix", "hostname", "server_name"))
#: Options parsed also when given as arguments (into the form the middlewares use).
_PARSED_OPTIONS = frozenset(("unmatched_name", "name_limit", "server_names", "instrument"))

_DEFAULTS: dict[str, Any] = {
    "address": None,
    "enabled": True,
    "prefix": "",
    "hostname": None,
    "server_name": None,
    "raise_on_fail": False,
    "timer_rusage": False,
    "memory_footprint": False,
    "pinboard": False,
    "unmatched_name": UNMATCHED_NAME,
    "name_limit": DEFAULT_NAME_LIMIT,
    "server_names": None,
    "instrument": (),
}


@dataclass(frozen=True)
class Config:
    """The resolved options of one middleware or monitor."""

    address: Any
    enabled: bool
    prefix: str
    hostname: str | None
    server_name: str | None
    raise_on_fail: bool
    timer_rusage: bool
    memory_footprint: bool
    pinboard: bool
    unmatched_name: str
    name_limit: int
    server_names: tuple[str, ...] | None
    instrument: tuple[str, ...]

    def options(self) -> dict[str, Any]:
        """Every option but ``address``, as keyword arguments of a middleware."""
        return {name: getattr(self, name) for name in ENVIRONMENT if name != "address"}

    def instrument_libraries(self) -> tuple[str, ...]:
        """Turn on the integrations ``instrument`` names, when monitoring is; returns them.

        See ``pynba.instrumentation.instrument``: harmless when they are on
        already. A middleware or monitor that reports nothing times nothing.
        """
        if not self.instrument or not self.enabled:
            return ()
        return instrumentation.instrument(*self.instrument)

    def collector_settings(self, tags: Mapping[str, Any] | None = None) -> CollectorSettings:
        """What the requests of a middleware or monitor so configured share.

        ``address`` names the servers of a reporter of its own, or is a
        ``Reporter`` to share; ``raise_on_fail`` switches that reporter's on.
        """
        reporter = self.address if isinstance(self.address, Reporter) else Reporter(self.address)
        if self.raise_on_fail:
            reporter.raise_on_fail = True
        return CollectorSettings(
            reporter,
            hostname=self.hostname,
            tags=tags,
            timer_rusage=self.timer_rusage,
            memory_footprint=self.memory_footprint,
            pinboard=self.pinboard,
        )


def resolve(
    address: Any = None,
    *,
    settings: Settings | None = None,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> Config:
    """Every option: the argument unless it is None, else ``settings``, else the environment.

    ``settings`` (anything with ``get()``) is looked up by environment
    variable name (``PINBA_SERVER``, ...). ``environ`` defaults to ``os.environ``, read now.
    When monitoring is enabled and no server is given anywhere, monitoring is
    turned off, with a warning (once per process): as an error tracker without
    its DSN, an application must start and run without a Pinba server.
    """
    unknown = set(options) - set(_PARSERS)
    if unknown:
        raise TypeError(f"unknown option {sorted(unknown)[0]!r}")
    if environ is None:
        environ = os.environ
    given = dict(options, address=address)
    values: dict[str, Any] = {}
    for option, parse in _PARSERS.items():
        key = ENVIRONMENT[option]
        value = given.get(option)
        if value is not None:
            if option in _TEXT_OPTIONS:
                _text(value, option)
            elif option in _PARSED_OPTIONS:
                value = parse(value, option)
            values[option] = value  # explicit: others are checked where they are used
            continue
        setting = None if settings is None else settings.get(key)
        if setting is not None:
            value = parse(setting, key)
        elif environ.get(key) is not None:
            value = parse(environ[key], key)
        values[option] = _DEFAULTS[option] if value is None else value
    if values["address"] is None:
        if values["enabled"]:
            _warn_no_server()
        # Disabled: nothing is ever sent, but a Reporter still needs a target.
        values.update(address="127.0.0.1", enabled=False)
    return Config(**values)


_warned_no_server = False


def _warn_no_server() -> None:
    global _warned_no_server
    if not _warned_no_server:
        _warned_no_server = True
        logger.warning(
            "pynba: no Pinba server configured (pass an address or set PINBA_SERVER, "
            'e.g. "127.0.0.1:30002"); monitoring is off'
        )
