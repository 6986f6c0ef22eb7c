"""Build script: the compiled encoder is optional, pure Python is the fallback."""

import os
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
#: Per-request modules compiled from their Python sources (see src/pynba/_implementation.py).
COMPILED_SOURCES = ("tags", "timer", "collector", "context", "wsgi", "reporter")


#: Compiled-only modules between timers and the rest (see their docstrings).
TIMER_GLUE = ("_timer_call", "_timer_fields")

#: Compiled modules that cimport one another (and ``_rusage``): each needs the others.
LINKED = {f"pynba.{name}" for name in ("_rusage", *COMPILED_SOURCES, *TIMER_GLUE)}


class OptionalBuildExt(build_ext):
    """Builds the compiled modules when it can; says so and goes on when it can't.

    The per-request modules cimport one another and ``_rusage``, so one that
    cannot be built leaves none of them: each would fail to import without
    the others. Their Python sources run instead.
    """

    def run(self):
        self._linked_failed = False
        try:
            super().run()
        except Exception as error:  # no compiler, no Python headers, ...
            self._fall_back(error)
        if self._linked_failed:
            self._drop_per_request_modules()

    def build_extension(self, ext):
        if ext.name in LINKED and self._linked_failed:
            return
        try:
            super().build_extension(ext)
        except Exception as error:
            if ext.name in LINKED:
                self._linked_failed = True
            self._fall_back(error)

    def _drop_per_request_modules(self):
        # Also those built earlier: a stale one would import, and fail, first.
        for name in LINKED:
            path = self.get_ext_fullpath(name)
            if os.path.exists(path):
                os.remove(path)

    def _fall_back(self, error):
        message = (
            f"pynba: building a compiled module failed ({error}); "
            "installing its pure Python instead."
        )
        print(message, file=sys.stderr)
        self.warn(message)


def extensions():
    if os.environ.get("PYNBA_NO_EXTENSION") == "1":
        return []
    if sys.implementation.name != "cpython":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("pynba: Cython is not installed; using pure Python.", file=sys.stderr)
        return []
    # The encoder and getrusage have pure-Python twins; the per-request modules are compiled
    # from their own Python sources (typed by the .pxd files beside them).
    modules = [
        Extension("pynba._encoder", ["src/pynba/_encoder.pyx"]),
        Extension("pynba._rusage", ["src/pynba/_rusage.pyx"]),
    ]
    modules += [Extension(f"pynba.{name}", [f"src/pynba/{name}.py"]) for name in COMPILED_SOURCES]
    modules += [Extension(f"pynba.{name}", [f"src/pynba/{name}.pyx"]) for name in TIMER_GLUE]
    return cythonize(
        modules,
        compiler_directives={
            "language_level": "3",
            "annotation_typing": False,
            "binding": True,
            # A typed attribute set to None (middleware.settings.reporter = None)
            # raises AttributeError, as in pure Python, instead of crashing.
            "nonecheck": True,
        },
        quiet=True,
    )


setup(
    name="pynba",
    version="0.6.0.dev0",
    description="Pinba client for Python: WSGI/ASGI middleware, timers, script monitoring",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src", exclude=["examples", "examples.*"]),
    package_data={"pynba": ["py.typed", "*.pyx", "*.pxd"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    extras_require={
        "tools": ["protobuf>=4.21"],
        "lz4": ["lz4>=4"],
        # The framework integrations (pynba.asgi needs nothing but an ASGI server).
        "asgi": [],
        "django": ["django>=4.2"],
        "flask": ["flask>=2.3"],
        "pyramid": ["pyramid>=2.0"],
        # Building the documentation site (mkdocs.yml, docs/).
        "docs": ["mkdocs>=1.6"],
        "test": [
            "protobuf>=4.21",
            "pytest>=7",
            "hypothesis>=6",
            "webob>=1.8",
            "lz4>=4",
            # The build's own tests (a module that fails to build) run setup.py.
            "Cython>=3.1",
            # The integrations' tests, each with a real server.
            "uvicorn>=0.23",
            "starlette>=0.35",
            "fastapi>=0.100",
            "httpx>=0.24",
            "django>=4.2",
            "flask>=2.3",
            "pyramid>=2.0",
            "webtest>=3",
            "gevent>=23",
            # The fault, load and soak tests run a real pre-forking server.
            "gunicorn>=21",
        ],
    },
    entry_points={
        "console_scripts": ["pynba = pynba.cli:main"],
        "pytest11": ["pynba = pynba.pytest_plugin"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Cython",
        "Topic :: System :: Monitoring",
    ],
    zip_safe=False,
)
