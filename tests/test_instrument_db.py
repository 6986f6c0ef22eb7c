"""Database timers: DB-API drivers, SQLAlchemy and Django's ORM, against a real PostgreSQL.

Every query runs on a private PostgreSQL (``pg_server.postgres``) or sqlite3
in memory; the packets are decoded and checked: tags, hit counts, and
values at least as long as the query took.
"""

import copy
import enum
import json
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import pynba
from conftest import UDPListener
from cpu import burn_cpu, check_timer_cpu
from packets import Packet, make_collector, monitored_request, receive
from pynba.context import activate, deactivate
from pynba.instrumentation import dbapi

psycopg = pytest.importorskip("psycopg")
psycopg2 = pytest.importorskip("psycopg2")
sqlalchemy = pytest.importorskip("sqlalchemy")

from pynba.instrumentation import sqlalchemy as sqlalchemy_timers  # noqa: E402

# The postgres fixture: one private PostgreSQL for the session.
pytest_plugins = ["pg_server"]

TESTS = Path(__file__).resolve().parent
SLEEP = 0.05


def db_timers(packet, **tags):
    return [timer for timer in packet.timers if ("group", "db") in timer.tags]


@pytest.fixture
def instrumented():
    """The drivers' connect functions wrapped for the test, restored after."""
    dbapi.instrument()
    yield
    dbapi.uninstrument()


@pytest.fixture
def table(postgres):
    """An empty table ``numbers`` (n integer) in the test database."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS numbers")
        connection.execute("CREATE TABLE numbers (id serial PRIMARY KEY, n integer)")
    return "numbers"


# -- a statement's verb -------------------------------------------------------


class Unprintable:
    def __str__(self):
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    ("statement", "verb"),
    [
        ("SELECT 1", "select"),
        ("  /* a comment */ -- another\n\tinsert INTO t VALUES (1)", "insert"),
        ("(SELECT 1) UNION (SELECT 2)", "select"),
        (b"UPDATE t SET n = 1", "update"),
        ("START TRANSACTION", "begin"),
        ("END", "commit"),
        ("rollback", "rollback"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "other"),
        ("SELECTED", "other"),
        ("", "other"),
        (Unprintable(), "other"),
    ],
)
def test_sql_verb(statement, verb):
    from pynba.instrumentation._hooks import SQL_VERBS, sql_verb

    found = sql_verb(statement)
    assert found == verb
    # The set's own string: the timers' tags then compare by identity.
    assert found == "other" or found is next(known for known in SQL_VERBS if known == verb)


# -- DB-API: psycopg, psycopg2, sqlite3 ----------------------------------------


def connect_psycopg(postgres):
    return psycopg.connect(postgres.dsn())


def connect_psycopg2(postgres):
    return psycopg2.connect(postgres.dsn())


DRIVERS = {
    # name: (connect, placeholder, the db= tag instrument() gives)
    "psycopg": (connect_psycopg, "%s", "pynba_test"),
    "psycopg2": (connect_psycopg2, "%s", "pynba_test"),
}


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_a_query_is_timed_as_long_as_it_took(driver, postgres, instrumented, udp_listener):
    connect, _, db = DRIVERS[driver]
    connection = connect(postgres)
    try:
        with monitored_request(udp_listener):
            cursor = connection.cursor()
            cursor.execute(f"SELECT pg_sleep({SLEEP})")
            assert cursor.fetchone() is not None
    finally:
        connection.close()
    packet = receive(udp_listener)
    timer = packet.timer(group="db", op="select", db=db)
    assert timer.hit_count == 1
    assert timer.value >= SLEEP
    assert len(db_timers(packet)) == 1


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_wrap_connect_names_the_database(driver, postgres, udp_listener):
    connect = {"psycopg": psycopg.connect, "psycopg2": psycopg2.connect}[driver]
    timed_connect = dbapi.wrap_connect(connect, name="main")
    assert connect is {"psycopg": psycopg.connect, "psycopg2": psycopg2.connect}[driver]
    connection = timed_connect(postgres.dsn())
    try:
        with monitored_request(udp_listener):
            cursor = connection.cursor()
            cursor.execute("SELECT pg_sleep(%s)", (SLEEP,))
            cursor.execute("SELECT 1")
            connection.commit()
    finally:
        connection.close()
    packet = receive(udp_listener)
    select = packet.timer(group="db", op="select", db="main")
    assert (select.hit_count, select.value >= SLEEP) == (2, True)
    assert packet.timer(group="db", op="commit", db="main").hit_count == 1


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_executemany_counts_its_rows(driver, postgres, table, instrumented, udp_listener):
    connect, placeholder, db = DRIVERS[driver]
    connection = connect(postgres)
    try:
        with monitored_request(udp_listener):
            cursor = connection.cursor()
            cursor.executemany(
                f"INSERT INTO numbers (n) VALUES ({placeholder})", [(n,) for n in range(7)]
            )
            cursor.executemany(  # an iterator: the driver alone knows its length
                f"INSERT INTO numbers (n) VALUES ({placeholder})", iter([(7,), (8,)])
            )
            connection.commit()
    finally:
        connection.close()
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="insert", db=db).hit_count == 7 + 1
    with psycopg.connect(postgres.dsn()) as check:
        assert check.execute("SELECT count(*) FROM numbers").fetchone()[0] == 9


def test_commit_rollback_and_the_with_block_of_psycopg2(
    postgres, table, instrumented, udp_listener
):
    connection = psycopg2.connect(postgres.dsn())
    try:
        with monitored_request(udp_listener):
            cursor = connection.cursor()
            cursor.execute("INSERT INTO numbers (n) VALUES (1)")
            connection.rollback()
            cursor.execute("INSERT INTO numbers (n) VALUES (2)")
            connection.commit()
            with connection:  # commits at the end
                connection.cursor().execute("INSERT INTO numbers (n) VALUES (3)")
            with pytest.raises(ZeroDivisionError), connection:  # rolls back
                connection.cursor().execute("INSERT INTO numbers (n) VALUES (4)")
                1 / 0  # noqa: B018
    finally:
        connection.close()
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="insert", db="pynba_test").hit_count == 4
    assert packet.timer(group="db", op="commit", db="pynba_test").hit_count == 2
    assert packet.timer(group="db", op="rollback", db="pynba_test").hit_count == 2
    with psycopg.connect(postgres.dsn()) as check:
        assert check.execute("SELECT n FROM numbers ORDER BY n").fetchall() == [(2,), (3,)]


def test_psycopg_shortcuts_and_the_with_blocks(postgres, table, instrumented, udp_listener):
    with monitored_request(udp_listener):
        with psycopg.connect(postgres.dsn()) as connection:  # commits (and closes) at the end
            assert connection.execute("SELECT %s::int", (5,)).fetchone() == (5,)
            with connection.cursor() as cursor:
                assert cursor.execute("INSERT INTO numbers (n) VALUES (1)") is cursor
                cursor.executemany("INSERT INTO numbers (n) VALUES (%s)", [(2,), (3,)])
                cursor.execute("SELECT n FROM numbers ORDER BY n")
                assert [row[0] for row in cursor] == [1, 2, 3]
            with connection.transaction():
                connection.execute("UPDATE numbers SET n = n + 1")
            connection.execute("DELETE FROM numbers WHERE n = 4")
        assert connection.closed
    packet = receive(udp_listener)
    tags = {"group": "db", "db": "pynba_test"}
    assert packet.timer(op="select", **tags).hit_count == 2
    assert packet.timer(op="insert", **tags).hit_count == 3
    assert packet.timer(op="update", **tags).hit_count == 1
    assert packet.timer(op="delete", **tags).hit_count == 1
    assert packet.timer(op="commit", **tags).hit_count == 1
    with psycopg.connect(postgres.dsn()) as check:
        assert check.execute("SELECT n FROM numbers ORDER BY n").fetchall() == [(2,), (3,)]


def test_the_wrappers_pass_for_the_drivers_objects(postgres, instrumented):
    connection = psycopg.connect(postgres.dsn())
    try:
        assert isinstance(connection, psycopg.Connection)
        assert connection.info.dbname == "pynba_test"
        connection.autocommit = True
        assert connection.autocommit is True
        cursor = connection.cursor()
        assert isinstance(cursor, psycopg.Cursor)
        cursor.arraysize = 3
        assert cursor.arraysize == 3
        cursor.execute("SELECT generate_series(1, 5)")
        assert cursor.description[0].name == "generate_series"
        assert cursor.rowcount == 5
        assert cursor.fetchone() == (1,)
        assert cursor.fetchmany() == [(2,), (3,), (4,)]
        assert cursor.fetchall() == [(5,)]
        assert repr(connection).startswith("<psycopg.Connection")
        assert dbapi.wrap_connection(connection) is connection
    finally:
        connection.close()
    assert connection.closed

    old_style = psycopg2.connect(postgres.dsn())
    try:
        assert isinstance(old_style, psycopg2.extensions.connection)
        assert old_style.info.dbname == "pynba_test"
        with old_style.cursor() as cursor:
            assert cursor.execute("SELECT 1") is None  # as psycopg2 returns
            assert cursor.fetchone() == (1,)
            assert cursor.mogrify("SELECT %s", (1,)) == b"SELECT 1"
    finally:
        old_style.close()


def test_sqlite3(instrumented, udp_listener):
    connection = sqlite3.connect(":memory:")
    assert isinstance(connection, sqlite3.Connection)
    connection.row_factory = sqlite3.Row
    with monitored_request(udp_listener):
        connection.execute("CREATE TABLE numbers (n integer)")
        connection.executemany("INSERT INTO numbers VALUES (?)", [(n,) for n in range(5)])
        with connection:  # commits
            connection.execute("INSERT INTO numbers VALUES (5)")
        cursor = connection.cursor()
        cursor.execute("SELECT n FROM numbers WHERE n > ?", (2,))
        assert [row["n"] for row in cursor] == [3, 4, 5]
        assert next(connection.execute("SELECT max(n) FROM numbers"))[0] == 5
        with pytest.raises(TypeError, match="context manager"):
            with cursor:  # as with sqlite3's own cursors
                pass
    connection.close()
    packet = receive(udp_listener)
    tags = {"group": "db", "db": "sqlite3"}
    assert packet.timer(op="other", **tags).hit_count == 1
    assert packet.timer(op="insert", **tags).hit_count == 5 + 1
    assert packet.timer(op="select", **tags).hit_count == 2
    assert packet.timer(op="commit", **tags).hit_count == 1


@pytest.mark.parametrize("timer_rusage", [True, False])
def test_statements_carry_their_cpu_time_where_timers_measure_it(udp_listener, timer_rusage):
    # A query calling a function that burns CPU: its timer carries that CPU
    # time when the request measures it (timer_rusage), as a hand-written
    # timer does; without, each timer is made when its statement has
    # returned. Through the cursor's execute() and the connection's.
    connection = dbapi.wrap_connection(sqlite3.connect(":memory:"))
    connection.create_function("burn", 0, lambda: burn_cpu(0.03))
    collector = make_collector(udp_listener, timer_rusage=timer_rusage)
    token = activate(collector)
    try:
        cursor = connection.cursor()
        assert cursor.execute("SELECT burn()").fetchone()[0] >= 0.03
        assert connection.execute("SELECT burn()").fetchone()[0] >= 0.03
    finally:
        deactivate(token)
    collector.finish()
    timer = receive(udp_listener).timer(group="db", op="select", db="sqlite3")
    assert timer.hit_count == 2 and timer.value >= 0.06
    check_timer_cpu(timer, timer_rusage, 0.05)
    # After the request: not timed, and no error (the test suite's strict mode).
    token = activate(collector)
    try:
        assert cursor.execute("SELECT 1").fetchone() == (1,)
        assert connection.execute("SELECT 2").fetchone() == (2,)
        connection.commit()
    finally:
        deactivate(token)
    connection.close()
    assert collector.timers == ()
    assert udp_listener.pending() == []


def test_statements_are_not_timed_while_the_request_is_not_sent(udp_listener):
    connection = dbapi.wrap_connection(sqlite3.connect(":memory:"), name="main")
    collector = make_collector(udp_listener)
    token = activate(collector)
    try:
        connection.execute("SELECT 1")
        collector.enabled = False
        connection.execute("SELECT 1")
        connection.cursor().execute("SELECT 1")
        connection.commit()
        collector.enabled = True
        connection.cursor().execute("SELECT 1")
    finally:
        deactivate(token)
    collector.finish()
    connection.close()
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="select", db="main").hit_count == 2
    assert [timer for timer in packet.timers if ("op", "commit") in timer.tags] == []


@pytest.mark.parametrize("name", [5, b"main", ["main"]])
def test_a_database_name_that_is_not_a_str_is_refused_by_name(name):
    connection = sqlite3.connect(":memory:")
    with pytest.raises(TypeError, match="^name must be a str or None"):
        dbapi.wrap_connection(connection, name)
    with pytest.raises(TypeError, match="^name must be a str or None"):
        dbapi.wrap_connect(sqlite3.connect, name)
    connection.close()


def test_a_database_name_of_a_str_enum_is_its_value(udp_listener):
    class Database(str, enum.Enum):
        MAIN = "main"

    connection = dbapi.wrap_connection(sqlite3.connect(":memory:"), Database.MAIN)
    with monitored_request(udp_listener):
        connection.execute("SELECT 1")
    connection.close()
    assert receive(udp_listener).timer(group="db", op="select", db="main").hit_count == 1


@pytest.mark.parametrize("connection", [None, object(), "dbname=main"])
def test_what_is_not_a_connection_is_refused_by_name(connection):
    with pytest.raises(TypeError, match="^connection must be a DB-API connection"):
        dbapi.wrap_connection(connection)


def test_a_connect_that_cannot_be_called_is_refused_by_name():
    with pytest.raises(TypeError, match="^connect must be callable"):
        dbapi.wrap_connect(None)


def test_the_wrappers_are_copied_and_pickled_as_the_drivers_objects_are():
    # sqlite3's refuse: so do their wrappers, with the driver's own error.
    connection = sqlite3.connect(":memory:")
    wrapped = dbapi.wrap_connection(connection)
    for own, wrapper in ((connection, wrapped), (connection.cursor(), wrapped.cursor())):
        for refused in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError) as driver_error:
                refused(own)
            with pytest.raises(TypeError) as wrapper_error:
                refused(wrapper)
            assert str(wrapper_error.value) == str(driver_error.value)
    connection.close()


class Copied:
    """A driver's connection of its own copying: ``__copy__`` refuses, ``__deepcopy__`` counts."""

    def __init__(self):
        self.deep_copies = 0

    def cursor(self):
        return None

    def __copy__(self):
        raise TypeError("this connection cannot be copied")

    def __deepcopy__(self, memo):
        self.deep_copies += 1
        return self


def test_a_wrapper_is_copied_as_the_drivers_object_is_by_its_own_methods():
    own = Copied()
    wrapped = dbapi.wrap_connection(own)
    with pytest.raises(TypeError, match="this connection cannot be copied"):
        copy.copy(wrapped)
    assert copy.deepcopy(wrapped) is own and own.deep_copies == 1


def test_an_asyncio_drivers_connection_is_not_wrapped():
    class AsyncConnection:
        def cursor(self):
            return None

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc_info):
            return None

    with pytest.raises(TypeError, match="^connection must be a DB-API connection"):
        dbapi.wrap_connection(AsyncConnection())
    opened = AsyncConnection()
    assert dbapi.wrap_connect(lambda: opened)() is opened  # handed back as it is


@pytest.mark.parametrize(
    ("proxy", "methods"),
    [
        (dbapi._Connection, ("cursor", "commit", "rollback", "execute")),
        (dbapi._Cursor, ("execute", "fetchone", "fetchall", "callproc")),
    ],
)
def test_a_wrapper_made_without_its_object_fails_with_attribute_error(proxy, methods, udp_listener):
    # As copy.copy could make one (__new__ alone): no endless recursion, and
    # compiled, no crash (its fields hold None).
    empty = proxy.__new__(proxy)
    assert not hasattr(empty, "isolation_level")
    statement = ("SELECT 1",)
    for method in methods:
        with pytest.raises(AttributeError):
            getattr(empty, method)(*statement[: method in ("execute", "callproc")])
    with monitored_request(udp_listener):
        for method in methods:
            with pytest.raises(AttributeError):
                getattr(empty, method)(*statement[: method in ("execute", "callproc")])


class DriverObject:
    """A driver's connection with attributes of its own (as PyMySQL's has)."""

    def cursor(self):
        return sqlite3.connect(":memory:").cursor()


def test_attributes_set_on_a_wrapper_are_the_driver_objects_even_of_pynbas_names(udp_listener):
    driver = DriverObject()
    wrapped = dbapi.wrap_connection(driver, "shop")
    for name in ("_wrapped", "_tags", "_commits_on_exit", "anything"):
        setattr(wrapped, name, [name])
        assert vars(driver)[name] == [name]
    with monitored_request(udp_listener):
        wrapped.cursor().execute("SELECT 1")  # the wrapper's own fields unchanged
    assert receive(udp_listener).timer(group="db", op="select", db="shop").hit_count == 1
    del wrapped.anything
    assert "anything" not in vars(driver)


def test_a_wrapper_is_not_wrapped_again():
    # A chain of wrappers would recurse in C on each attribute, and when freed.
    cursor = dbapi.wrap_connection(sqlite3.connect(":memory:")).cursor()
    tags = dbapi._Tags("sqlite3")
    with pytest.raises(TypeError, match="a pynba wrapper already"):
        dbapi._Cursor(cursor, tags)
    with pytest.raises(TypeError, match="a pynba wrapper already"):
        cursor.__init__(cursor, tags)
    assert cursor.execute("SELECT 2").fetchone() == (2,)


def foreign_proxy_of_its_own_wrapper(port):
    """Each way a cursor hands on to a wrapt proxy that wraps that cursor, on a small stack."""
    import threading

    import wrapt

    from pynba import PynbaMiddleware
    from pynba._implementation import runs_compiled
    from scripts import recursion_stack_size

    calls = {
        "a method": lambda cursor: cursor.fetchone(),
        "execute": lambda cursor: cursor.execute("SELECT 1"),
        "executemany": lambda cursor: cursor.executemany("SELECT ?", [(1,)]),
        "__enter__": lambda cursor: cursor.__enter__(),
        "an attribute": lambda cursor: cursor.rowcount,
        "setattr": lambda cursor: setattr(cursor, "arraysize", 3),
        "delattr": lambda cursor: delattr(cursor, "arraysize"),
        "iter": iter,
    }

    def call_each():
        for name, call in calls.items():
            foreign = wrapt.ObjectProxy(sqlite3.connect(":memory:").cursor())
            cursor = dbapi.wrap_connection(_ConnectionOf(foreign)).cursor()
            try:
                foreign.__wrapped__ = cursor  # each now hands on to the other
            except RecursionError:  # wrapt 2.5 reads an attribute of it, once set
                pass
            try:
                call(cursor)
            except RecursionError:
                print(name, "RecursionError")

    def app(environ, start_response):
        call_each()
        start_response("200 OK", [])
        return [b"ok"]

    def in_a_request():
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "localhost"}
        environ.update({"SERVER_PORT": "80", "wsgi.url_scheme": "http"})
        list(PynbaMiddleware(app, ("127.0.0.1", port))(environ, lambda *args: None))

    threading.stack_size(recursion_stack_size(runs_compiled(dbapi.__file__)))
    for target in (call_each, in_a_request):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    print("done")


class _ConnectionOf:
    """A driver's connection whose cursor() gives the one object it was made with."""

    def __init__(self, cursor):
        self._cursor = cursor

    def cursor(self):
        return self._cursor


def test_a_foreign_proxy_wrapping_its_own_wrapper_is_a_recursion_error(udp_listener):
    # Compiled, a wrapper and a wrapt.ObjectProxy that each wrap the other
    # recurse from C to C: counted against the recursion limit, not a crash
    # (on a small thread stack: see recursion_stack_size).
    pytest.importorskip("wrapt")
    from scripts import isolated

    output = isolated(foreign_proxy_of_its_own_wrapper, udp_listener.port).splitlines()
    expected = ["a method", "execute", "executemany", "__enter__", "an attribute"]
    expected += ["setattr", "delattr", "iter"]
    assert output == [f"{name} RecursionError" for name in expected * 2] + ["done"]
    assert receive(udp_listener).request_count == 1


def test_a_driver_object_over_a_wrapped_connection_gives_its_cursors_as_they_are(
    udp_listener,
):
    class Adapter:
        """An application's object over a connection pynba wraps already."""

        def __init__(self):
            self.connection = dbapi.wrap_connection(sqlite3.connect(":memory:"), "inner")

        def cursor(self):
            return self.connection.cursor()

        def execute(self, statement):
            return self.connection.execute(statement)

    outer = dbapi.wrap_connection(Adapter(), "outer")
    assert dbapi.wrap_connection(outer) is outer
    with monitored_request(udp_listener):
        cursor = outer.cursor()
        assert cursor.execute("SELECT 1").fetchone() == (1,)
        assert outer.execute("SELECT 2").fetchone() == (2,)
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="select", db="inner").hit_count == 2
    # The connection's execute() is timed by both: each is the application's own.
    assert packet.timer(group="db", op="select", db="outer").hit_count == 1


@pytest.mark.parametrize("context", [{}, None, {"connection": object()}])
def test_a_django_query_of_a_context_not_as_django_makes_it_goes_on_untimed(
    context, udp_listener, monkeypatch
):
    pytest.importorskip("django")
    from pynba.instrumentation import django_db

    def execute(sql, params, many, context):
        return [sql, params, many]

    def failing(sql, params, many, context):
        raise ValueError("the database's error")

    monkeypatch.setenv("PYNBA_STRICT", "0")  # as in production: logged, not raised
    instrumented_before = django_db.instrumented()
    django_db.instrument()
    try:
        with monitored_request(udp_listener):
            assert django_db._timed_query(execute, "SELECT 1", (1,), False, context) == [
                "SELECT 1",
                (1,),
                False,
            ]
        with monitored_request(udp_listener), pytest.raises(ValueError) as raised:
            django_db._timed_query(failing, "SELECT 1", None, False, context)
        assert raised.value.__context__ is None  # pynba's own error is not in its traceback
    finally:
        if not instrumented_before:
            django_db.uninstrument()
    assert receive(udp_listener).timers == []
    assert receive(udp_listener).timers == []


class RowsWithoutLength:
    """Rows a driver can iterate, whose ``len()`` fails."""

    def __init__(self, rows, error):
        self.rows = rows
        self.error = error

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("no length"), OverflowError("too long")])
def test_executemany_of_rows_whose_len_fails_runs_as_without_pynba(
    error, instrumented, udp_listener
):
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE numbers (n integer)")
    rows = RowsWithoutLength([(1,), (2,)], error)
    connection.executemany("INSERT INTO numbers VALUES (?)", rows)  # outside a request
    with monitored_request(udp_listener):
        connection.executemany("INSERT INTO numbers VALUES (?)", rows)
    assert next(connection.execute("SELECT count(*) FROM numbers"))[0] == 4
    connection.close()
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="insert", db="sqlite3").hit_count == 1


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_a_failing_query_raises_as_it_would_and_is_timed(
    driver, postgres, instrumented, udp_listener
):
    connect, _, db = DRIVERS[driver]
    connection = connect(postgres)
    try:
        with monitored_request(udp_listener):
            cursor = connection.cursor()
            with pytest.raises(Exception) as raised:
                cursor.execute("SELECT * FROM no_such_table")
            connection.rollback()
    finally:
        connection.close()
    assert type(raised.value).__name__ == "UndefinedTable"
    assert 'relation "no_such_table" does not exist' in str(raised.value)
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="select", db=db).hit_count == 1
    assert packet.timer(group="db", op="rollback", db=db).hit_count == 1


def test_outside_a_request_nothing_is_recorded(postgres, instrumented, udp_listener):
    connection = psycopg.connect(postgres.dsn())
    try:
        assert connection.execute("SELECT 41 + 1").fetchone() == (42,)
        connection.commit()
        with monitored_request(udp_listener):
            pass
    finally:
        connection.close()
    lite = sqlite3.connect(":memory:")
    assert lite.execute("SELECT 1").fetchone() == (1,)
    assert receive(udp_listener).timers == []
    assert udp_listener.pending() == []


def test_uninstrument_restores_each_connect():
    pymysql = pytest.importorskip("pymysql")
    originals = {
        "sqlite3.connect": sqlite3.connect,
        "sqlite3.dbapi2.connect": sqlite3.dbapi2.connect,
        "psycopg.connect": psycopg.connect,
        "psycopg.Connection.connect": vars(psycopg.Connection)["connect"],
        "psycopg2.connect": psycopg2.connect,
        "pymysql.connect": pymysql.connect,
        "pymysql.Connect": pymysql.Connect,
    }

    def current():
        return {
            "sqlite3.connect": sqlite3.connect,
            "sqlite3.dbapi2.connect": sqlite3.dbapi2.connect,
            "psycopg.connect": psycopg.connect,
            "psycopg.Connection.connect": vars(psycopg.Connection)["connect"],
            "psycopg2.connect": psycopg2.connect,
            "pymysql.connect": pymysql.connect,
            "pymysql.Connect": pymysql.Connect,
        }

    dbapi.instrument()
    try:
        dbapi.instrument()  # twice: the same
        patched = current()
        assert all(patched[name] is not originals[name] for name in originals)
        assert psycopg.connect == psycopg.Connection.connect  # the module's is the class's
    finally:
        dbapi.uninstrument()
    dbapi.uninstrument()  # twice: harmless
    assert all(current()[name] is originals[name] for name in originals), current()
    assert type(sqlite3.connect(":memory:")) is sqlite3.Connection


def test_pynba_instrument_turns_on_the_databases(postgres, udp_listener):
    assert pynba.instrument("dbapi") == ("dbapi",)
    try:
        connection = psycopg.connect(postgres.dsn())
    finally:
        pynba.instrumentation.uninstrument("dbapi")
    try:
        with monitored_request(udp_listener):
            connection.execute("SELECT 1")
    finally:
        connection.close()
    assert receive(udp_listener).timer(group="db", op="select", db="pynba_test").hit_count == 1


# -- SQLAlchemy ------------------------------------------------------------------


@pytest.fixture
def sqlalchemy_on():
    sqlalchemy_timers.instrument()
    yield
    sqlalchemy_timers.uninstrument()


@pytest.fixture
def pg_engine(postgres):
    engine = sqlalchemy.create_engine(postgres.url("psycopg"))
    with engine.connect() as connection:  # the dialect's first queries, before the test
        connection.exec_driver_sql("SELECT 1")
    yield engine
    engine.dispose()


def test_sqlalchemy_on_postgresql(pg_engine, table, sqlalchemy_on, udp_listener):
    text = sqlalchemy.text
    numbers = sqlalchemy.Table(
        "numbers",
        sqlalchemy.MetaData(),
        sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True),
        sqlalchemy.Column("n", sqlalchemy.Integer),
    )
    with monitored_request(udp_listener):
        with pg_engine.begin() as connection:
            connection.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": SLEEP})
            # executemany: a parameter set per row
            connection.execute(
                text("UPDATE numbers SET n = :n WHERE id = :id"),
                [{"n": n, "id": n} for n in range(6)],
            )
            # "insertmanyvalues": one INSERT ... VALUES (...), (...) RETURNING for 7 rows
            inserted = connection.execute(
                numbers.insert().returning(numbers.c.id), [{"n": n} for n in range(7)]
            ).all()
            assert len(inserted) == 7
    packet = receive(udp_listener)
    tags = {"group": "db", "db": "pynba_test"}
    select = packet.timer(op="select", **tags)
    assert (select.hit_count, select.value >= SLEEP) == (1, True)
    assert packet.timer(op="update", **tags).hit_count == 6
    assert packet.timer(op="insert", **tags).hit_count == 7
    assert len(db_timers(packet)) == 3


def test_sqlalchemy_async_engine(postgres, udp_listener):
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def run():
        engine = create_async_engine(postgres.url("psycopg"))
        sqlalchemy_timers.instrument_engine(engine, name="async")
        try:
            async with engine.connect() as connection:
                await connection.execute(sqlalchemy.text("SELECT 1"))  # the dialect's first
                with monitored_request(udp_listener):
                    statement = sqlalchemy.text("SELECT pg_sleep(:seconds)")
                    await connection.execute(statement, {"seconds": SLEEP})
        finally:
            sqlalchemy_timers.uninstrument_engine(engine)
            await engine.dispose()

    asyncio.run(run())
    packet = receive(udp_listener)
    timer = packet.timer(group="db", op="select", db="async")
    assert (timer.hit_count, timer.value >= SLEEP) == (1, True)


def test_sqlalchemy_failing_statement(pg_engine, sqlalchemy_on, udp_listener):
    with monitored_request(udp_listener):
        with pg_engine.connect() as connection:
            with pytest.raises(sqlalchemy.exc.ProgrammingError) as raised:
                connection.execute(sqlalchemy.text("SELECT * FROM no_such_table"))
            connection.rollback()
            assert connection.execute(sqlalchemy.text("SELECT 2")).scalar() == 2
    assert type(raised.value.orig).__name__ == "UndefinedTable"
    packet = receive(udp_listener)
    assert packet.timer(group="db", op="select", db="pynba_test").hit_count == 2


def test_sqlalchemy_sqlite_in_memory_and_one_engine(udp_listener):
    engine = sqlalchemy.create_engine("sqlite://")
    named = sqlalchemy.create_engine("sqlite://")
    sqlalchemy_timers.instrument_engine(named, name="cache")
    try:
        with monitored_request(udp_listener):
            with engine.connect() as connection:  # not instrumented
                connection.execute(sqlalchemy.text("SELECT 1"))
            with named.connect() as connection:
                connection.execute(sqlalchemy.text("CREATE TABLE t (n integer)"))
                connection.execute(
                    sqlalchemy.text("INSERT INTO t VALUES (:n)"), [{"n": n} for n in range(4)]
                )
                option_engine = connection.execution_options(stream_results=False)
                option_engine.execute(sqlalchemy.text("SELECT n FROM t"))
        packet = receive(udp_listener)
        assert packet.timer_tags() == [
            (("db", "cache"), ("group", "db"), ("op", "insert")),
            (("db", "cache"), ("group", "db"), ("op", "other")),
            (("db", "cache"), ("group", "db"), ("op", "select")),
        ]
        assert packet.timer(group="db", op="insert", db="cache").hit_count == 4
        sqlalchemy_timers.instrument()
        sqlalchemy_timers.instrument_engine(named, name="cache")  # listening twice: one timer
        try:
            with monitored_request(udp_listener):
                with engine.connect() as connection:
                    connection.execute(sqlalchemy.text("SELECT 1"))
                with named.connect() as connection:
                    connection.execute(sqlalchemy.text("SELECT 1"))
        finally:
            sqlalchemy_timers.uninstrument()
        packet = receive(udp_listener)
        assert packet.timer(group="db", op="select", db="sqlite").hit_count == 1
        assert packet.timer(group="db", op="select", db="cache").hit_count == 1
    finally:
        sqlalchemy_timers.uninstrument_engine(named)
    with monitored_request(udp_listener):
        with named.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    assert receive(udp_listener).timers == []


def test_sqlalchemy_no_parameters_and_other_listeners(udp_listener):
    engine = sqlalchemy.create_engine("sqlite://")
    theirs_engine = sqlalchemy.create_engine("sqlite://")
    making_engine = sqlalchemy.create_engine("sqlite://")
    seen = []

    def theirs(cursor, statement, parameters, context):
        seen.append(statement)
        return False  # SQLAlchemy makes the call: the dialect's, timed

    def making(cursor, statement, parameters, context):
        cursor.execute(statement, parameters)
        return True  # made here: the dialect's method is not called, untimed

    sqlalchemy.event.listen(theirs_engine, "do_execute", theirs)
    sqlalchemy.event.listen(making_engine, "do_execute", making)
    engines = {"lite": engine, "theirs": theirs_engine, "making": making_engine}
    for name, each in engines.items():
        sqlalchemy_timers.instrument_engine(each, name=name)
    try:
        with monitored_request(udp_listener):
            with engine.connect() as connection:
                connection.execution_options(no_parameters=True)  # this connection's
                assert connection.exec_driver_sql("SELECT 1").scalar() == 1
            with theirs_engine.connect() as connection:
                assert connection.execute(sqlalchemy.text("SELECT 2")).scalar() == 2
                connection.execution_options(no_parameters=True)
                assert connection.exec_driver_sql("SELECT 3").scalar() == 3
            with making_engine.connect() as connection:
                assert connection.execute(sqlalchemy.text("SELECT 4")).scalar() == 4
    finally:
        for each in engines.values():
            sqlalchemy_timers.uninstrument_engine(each)
    assert seen == ["SELECT 2"]
    packet = receive(udp_listener)
    assert packet.timer_tags() == [
        (("db", "lite"), ("group", "db"), ("op", "select")),
        (("db", "theirs"), ("group", "db"), ("op", "select")),
    ]
    assert packet.timer(group="db", op="select", db="lite").hit_count == 1
    assert packet.timer(group="db", op="select", db="theirs").hit_count == 2  # SELECT 2 and 3


def sqlalchemy_own_methods():
    """The dialect methods pynba hooks, as each loaded dialect class defines them."""
    from sqlalchemy.engine.default import DefaultDialect

    found = {}
    pending = [DefaultDialect]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        for name in ("do_execute", "do_executemany", "do_execute_no_params", "__init_subclass__"):
            if name in vars(cls):
                found[cls, name] = vars(cls)[name]
    return found


def test_sqlalchemy_uninstrument_and_outside_a_request(pg_engine, udp_listener):
    before = sqlalchemy_own_methods()
    sqlalchemy_timers.instrument()
    sqlalchemy_timers.instrument()
    try:
        assert sqlalchemy_own_methods() != before
        with pg_engine.connect() as connection:  # outside: nothing recorded, the query runs
            assert connection.execute(sqlalchemy.text("SELECT 3")).scalar() == 3
    finally:
        sqlalchemy_timers.uninstrument()
    sqlalchemy_timers.uninstrument()
    assert sqlalchemy_own_methods() == before
    with monitored_request(udp_listener):
        with pg_engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 4"))
    assert receive(udp_listener).timers == []
    assert udp_listener.pending() == []


def register_dialect(monkeypatch, cls):
    """The URL of an engine of the dialect class ``cls`` (sqlite underneath)."""
    import types

    from sqlalchemy.dialects import registry

    module = types.ModuleType(f"pynba_test_dialect_{cls.__name__.lower()}")
    setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    registry.register(f"sqlite.pynba{cls.__name__.lower()}", module.__name__, cls.__name__)
    return f"sqlite+pynba{cls.__name__.lower()}://"


def dialect_layouts():
    """Dialect classes whose do_execute is not a plain method of their own."""
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    class Mixin:
        def do_execute(self, cursor, statement, parameters, context=None):
            super().do_execute(cursor, statement, parameters, context)

    class WithMixin(Mixin, SQLiteDialect_pysqlite):
        supports_statement_cache = True

    class Static(SQLiteDialect_pysqlite):
        supports_statement_cache = True

        @staticmethod
        def do_execute(cursor, statement, parameters, context=None):
            cursor.execute(statement, parameters)

    class Classy(SQLiteDialect_pysqlite):
        supports_statement_cache = True

        @classmethod
        def do_execute(cls, cursor, statement, parameters, context=None):
            assert cls is Classy
            cursor.execute(statement, parameters)

    class Wrapping(SQLiteDialect_pysqlite):
        supports_statement_cache = True

        def do_execute(self, cursor, statement, parameters, context=None):
            super().do_execute(CursorProxy(cursor), statement, parameters, context)

    return [WithMixin, Static, Classy, Wrapping]


class CursorProxy:
    """A cursor passed on wrapped, as a dialect might."""

    def __init__(self, cursor):
        self.cursor = cursor

    def __getattr__(self, name):
        return getattr(self.cursor, name)


@pytest.mark.parametrize(
    "layout", range(4), ids=["mixin", "staticmethod", "classmethod", "cursor-wrapped"]
)
@pytest.mark.parametrize("turned_on", ["instrument", "instrument_engine", "both"])
def test_sqlalchemy_dialect_layouts(layout, turned_on, udp_listener, monkeypatch):
    """A mixin's method calling its base, a staticmethod...: one timer a statement."""
    cls = dialect_layouts()[layout]
    engine = sqlalchemy.create_engine(register_dialect(monkeypatch, cls))
    if turned_on != "instrument_engine":
        sqlalchemy_timers.instrument()
    if turned_on != "instrument":
        sqlalchemy_timers.instrument_engine(engine, name="layout")
    try:
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1  # outside
            with monitored_request(udp_listener):
                assert connection.execute(sqlalchemy.text("SELECT 2")).scalar() == 2
                assert connection.execute(sqlalchemy.text("SELECT 3")).scalar() == 3
    finally:
        sqlalchemy_timers.uninstrument_engine(engine)
        sqlalchemy_timers.uninstrument()
    db = "sqlite" if turned_on == "instrument" else "layout"
    packet = receive(udp_listener)
    assert len(db_timers(packet)) == 1
    assert packet.timer(group="db", op="select", db=db).hit_count == 2


def test_sqlalchemy_dialect_copying_a_hooked_method(udp_listener, monkeypatch):
    """A class defined while instrumented, copying its base's method: plain once uninstrumented."""
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    sqlalchemy_timers.instrument()
    try:

        class Copying(SQLiteDialect_pysqlite):
            supports_statement_cache = True
            do_execute = SQLiteDialect_pysqlite.do_execute

    finally:
        sqlalchemy_timers.uninstrument()
    assert vars(Copying)["do_execute"] is SQLiteDialect_pysqlite.do_execute
    engine = sqlalchemy.create_engine(register_dialect(monkeypatch, Copying))
    with monitored_request(udp_listener):
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    assert receive(udp_listener).timers == []


def test_sqlalchemy_with_an_init_subclass_of_sqlalchemy(udp_listener, monkeypatch):
    """DefaultDialect's own __init_subclass__, should it have one, still runs."""
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
    from sqlalchemy.engine.default import DefaultDialect

    seen = []

    def own(cls, **kwargs):
        seen.append(cls.__name__)
        super(DefaultDialect, cls).__init_subclass__(**kwargs)

    monkeypatch.setattr(DefaultDialect, "__init_subclass__", classmethod(own), raising=False)
    sqlalchemy_timers.instrument()
    try:

        class Own(SQLiteDialect_pysqlite):
            supports_statement_cache = True

            def do_execute(self, cursor, statement, parameters, context=None):
                cursor.execute(statement, parameters)

        engine = sqlalchemy.create_engine(register_dialect(monkeypatch, Own))
        with monitored_request(udp_listener):
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
    finally:
        sqlalchemy_timers.uninstrument()
    assert seen == ["Own"]
    assert vars(DefaultDialect)["__init_subclass__"].__func__ is own
    assert receive(udp_listener).timer(group="db", op="select", db="sqlite").hit_count == 1


def test_sqlalchemy_dialect_defined_later_and_calling_its_base(udp_listener, monkeypatch):
    """A dialect class defined after instrument() is timed; calling its base adds no timer."""
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    calls = []
    sqlalchemy_timers.instrument()
    try:

        class Later(SQLiteDialect_pysqlite):
            supports_statement_cache = True

            def do_execute(self, cursor, statement, parameters, context=None):
                calls.append("execute")
                super().do_execute(cursor, statement, parameters, context)

            def do_executemany(self, cursor, statement, parameters, context=None):
                calls.append("executemany")
                super().do_executemany(cursor, statement, parameters, context)

        engine = sqlalchemy.create_engine(register_dialect(monkeypatch, Later))
        assert type(engine.dialect) is Later
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("CREATE TABLE t (n integer)"))
            with monitored_request(udp_listener):
                assert connection.execute(sqlalchemy.text("SELECT 5")).scalar() == 5
                connection.execute(
                    sqlalchemy.text("INSERT INTO t VALUES (:n)"), [{"n": n} for n in range(4)]
                )
    finally:
        sqlalchemy_timers.uninstrument()
    assert calls == ["execute", "execute", "executemany"]
    packet = receive(udp_listener)
    assert len(db_timers(packet)) == 2
    assert packet.timer(group="db", op="select", db="sqlite").hit_count == 1
    assert packet.timer(group="db", op="insert", db="sqlite").hit_count == 4
    # Put back as it was defined.
    assert vars(Later)["do_execute"].__qualname__.endswith("Later.do_execute")
    assert not hasattr(vars(Later)["do_execute"], "__wrapped__")


def test_sqlalchemy_connections_are_not_timed_twice(postgres, udp_listener):
    pynba.instrument("dbapi", "sqlalchemy")
    try:
        engine = sqlalchemy.create_engine(postgres.url("psycopg"))
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
            raw = connection.connection.dbapi_connection
            assert type(raw) is psycopg.Connection  # left to SQLAlchemy's timers
            with monitored_request(udp_listener):
                connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    finally:
        pynba.instrumentation.uninstrument("dbapi", "sqlalchemy")
    packet = receive(udp_listener)
    assert packet.timer_tags() == [(("db", "pynba_test"), ("group", "db"), ("op", "select"))]
    assert packet.timer(group="db", op="select", db="pynba_test").hit_count == 1


# -- Django ----------------------------------------------------------------------

DJANGO_PATHS = [
    "/three/",
    "asgi:/async-three/",
    "asgi:/sync-under-asgi/",
    "/sleep/",
    "/rows/",
    "/failing/",
    "/other/",
    "/off-and-on/",
]


@pytest.fixture(scope="module")
def django_site(postgres):
    """Each of DJANGO_PATHS requested from tests/django_pg_app.py; their statuses and packets."""
    pytest.importorskip("django")
    listener = UDPListener()
    databases = {
        "default": postgres.django_database(),
        "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    }
    source = str(Path(pynba.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYNBA_TEST_DATABASES": json.dumps(databases),
        "PINBA_SERVER": f"{listener.host}:{listener.port}",
        "PINBA_INSTRUMENT": "db",
        "PYTHONPATH": os.pathsep.join([source, str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        completed = subprocess.run(
            [sys.executable, str(TESTS / "django_pg_app.py"), *DJANGO_PATHS],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr
        statuses = {url: (status, body) for url, status, body in json.loads(completed.stdout)}
        packets = {}
        while True:
            try:
                packet = Packet(listener.receive(timeout=1.0))
            except TimeoutError:
                break
            packets[packet.script_name] = packet
    finally:
        listener.close()
    return statuses, packets


def test_django_three_orm_queries_three_timers(django_site):
    statuses, packets = django_site
    assert statuses["/three/"][0] == 200
    packet = packets["/three/"]
    assert packet.timer_tags() == [
        (("db", "default"), ("group", "db"), ("op", "insert")),
        (("db", "default"), ("group", "db"), ("op", "select")),
    ]
    assert packet.timer(group="db", op="select", db="default").hit_count == 2
    assert packet.timer(group="db", op="insert", db="default").hit_count == 1


@pytest.mark.parametrize("url", ["/async-three/", "/sync-under-asgi/"])
def test_django_under_asgi(django_site, url):
    statuses, packets = django_site
    assert statuses[f"asgi:{url}"][0] == 200
    packet = packets[url]
    assert packet.timer(group="db", op="select", db="default").hit_count == 2
    assert packet.timer(group="db", op="insert", db="default").hit_count == 1
    assert len(packet.timers) == 2


def test_django_query_time_executemany_error_and_alias(django_site):
    statuses, packets = django_site
    assert statuses["/sleep/"][0] == 200
    assert packets["/sleep/"].timer(group="db", op="select", db="default").value >= SLEEP
    assert packets["/rows/"].timer(group="db", op="insert", db="default").hit_count == 7
    assert packets["/rows/"].timer(group="db", op="other", db="default").hit_count == 1
    assert statuses["/failing/"] == (500, "ProgrammingError")
    assert packets["/failing/"].timer(group="db", op="select", db="default").hit_count == 1
    assert packets["/other/"].timer_tags() == [(("db", "other"), ("group", "db"), ("op", "select"))]


def test_django_uninstrument_stops_the_timing_at_once(django_site):
    statuses, packets = django_site
    assert statuses["/off-and-on/"][0] == 200
    packet = packets["/off-and-on/"]
    assert packet.timer_tags() == [(("db", "default"), ("group", "db"), ("op", "select"))]
    assert packet.timer(group="db", op="select", db="default").hit_count == 1
