"""pynba.instrument(): the names it takes, and what it does with integrations it cannot turn on."""

import pytest

import pynba
from pynba.instrumentation import GROUPS, INTEGRATIONS, parse_names


def test_groups_all_and_comma_lists_name_integrations_once_in_order():
    assert parse_names("db, http") == GROUPS["db"] + GROUPS["http"]
    assert parse_names(["dbapi", "db"]) == GROUPS["db"]
    assert parse_names("all") == tuple(INTEGRATIONS)
    assert parse_names(None) == ()


def test_an_unknown_name_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'dbs'"):
        parse_names("dbs")
    with pytest.raises(TypeError, match="int"):
        parse_names([5])


def test_an_integration_named_alone_that_cannot_be_turned_on_is_an_import_error(monkeypatch):
    monkeypatch.setitem(INTEGRATIONS, "dbapi", ("db", "no_such_library_here"))
    with pytest.raises(ImportError, match="'dbapi' needs 'no_such_library_here' installed"):
        pynba.instrument("dbapi")
    assert "dbapi" not in pynba.instrument("db")  # through its group: skipped
