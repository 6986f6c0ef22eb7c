"""Build script: the compiled encoder is optional, pure Python is the fallback."""

import ast
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent


def _compiled_modules() -> tuple[str, ...]:
    """``COMPILED_MODULES`` of src/pynba/_implementation.py (read, not imported)."""
    tree = ast.parse((HERE / "src/pynba/_implementation.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED_MODULES":
            return ast.literal_eval(node.value)
    raise LookupError("COMPILED_MODULES is not in src/pynba/_implementation.py")


#: The compiled modules, in build order: a .pyx, or a Python source typed by its .pxd.
COMPILED_MODULES = _compiled_modules()
#: Compiled modules that cimport one another: each needs the others. The
#: encoder stands alone (it finds the Timer reader at run time).
LINKED = {f"pynba.{name}" for name in COMPILED_MODULES if name != "wire._encoder"}


#: Commands that run the compiler named after them (CC="ccache gcc").
COMPILER_LAUNCHERS = {"ccache", "sccache", "distcc"}

#: Set to 1 for a profile-guided build (GCC only): see OptionalBuildExt.
PGO_VARIABLE = "PYNBA_PGO"
#: The workload the profile is made of.
PGO_TRAINING = HERE / "benchmarks" / "pgo_training.py"


class OptionalBuildExt(build_ext):
    """Builds the compiled modules when it can; says so and goes on when it can't.

    The per-request modules cimport one another and ``_rusage``, so one that
    cannot be built leaves none of them: each would fail to import without
    the others. Their Python sources run instead.

    With ``PYNBA_PGO=1`` and GCC, the build is profile-guided: the modules are
    built instrumented, run on ``benchmarks/pgo_training.py``, and built
    again from the profile it leaves. A request then runs over fewer lines
    of code: under load, a worker spends about 5 µs less a request in them
    (docs/performance.md). Whatever fails on the way gives a plain build.
    """

    def run(self):
        self._linked_failed = False
        self._gcc_found = None  # asked once, by _gcc()
        try:
            self._set_flags([], link=False)
            if os.environ.get(PGO_VARIABLE) == "1":
                self._run_profile_guided()
            else:
                super().run()
        except Exception as error:  # no compiler, no Python headers, ...
            self._fall_back(error)
        if self._linked_failed:
            self._drop_per_request_modules()

    def _run_profile_guided(self):
        reason = self._cannot_profile()
        if reason is not None:
            self._say(f"{PGO_VARIABLE}=1: {reason}; building without a profile.")
            super().run()
            return
        compiler = self.compiler  # its name: each run makes the compiler of that name
        self.force = True  # every module, each time: built instrumented, then with its profile
        with tempfile.TemporaryDirectory(prefix="pynba-pgo-") as profile:
            self._set_flags([f"-fprofile-generate={profile}"], link=True)
            try:
                super().run()
                self.compiler = compiler
                failure = "a module did not build" if self._linked_failed else self._train()
            finally:
                # None of the instrumented modules may stay, even when the build is
                # interrupted: one would write its counts at the exit of every
                # process using it.
                self._remove_built()
            if failure is None:
                self._set_flags(
                    [f"-fprofile-use={profile}", "-fprofile-partial-training",
                     "-Wno-missing-profile"],
                    link=False,
                )  # fmt: skip
            else:
                self._say(f"{PGO_VARIABLE}=1: {failure}; building without a profile.")
                self._set_flags([], link=False)
            self._linked_failed = False
            super().run()

    def _cannot_profile(self):
        """Why this build cannot be profile-guided, or None."""
        if not PGO_TRAINING.exists():
            return f"{PGO_TRAINING.name} is missing"
        major, not_gcc = self._gcc()
        if not_gcc:
            return not_gcc
        if major < 10:  # -fprofile-partial-training
            return f"GCC {major} is older than 10"
        return None

    def _gcc(self):
        """``(major version, None)`` if the build's compiler is GCC, else ``(0, why not)``."""
        if self._gcc_found is None:
            self._gcc_found = self._find_gcc()
        return self._gcc_found

    @staticmethod
    def _find_gcc():
        # The compiler the build runs, as distutils picks it, past a launcher.
        words = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
        while len(words) > 1 and os.path.basename(words[0]) in COMPILER_LAUNCHERS:
            words = words[1:]
        if not words:
            return 0, "no compiler is named"

        def ask(option):
            done = subprocess.run([words[0], option], capture_output=True, timeout=60)
            return done.stdout.decode("utf-8", "replace")

        try:
            version, release = ask("--version"), ask("-dumpversion")
        except Exception as error:  # whatever it is, the build goes on without asking again
            return 0, f"the compiler does not run ({error})"
        if "Free Software Foundation" not in version or "clang" in version.lower():
            return 0, "the compiler is not GCC"
        major = release.strip().split(".")[0]
        if not major.isdigit():
            return 0, f"GCC's version is not known ({release.strip() or '?'})"
        return int(major), None

    def _remove_built(self):
        for ext in self.extensions:
            # In place, the module is built in the build directory and copied
            # into the sources: a copy left there would be copied again when
            # its next build fails, and installed by a later build.
            built = os.path.join(self.build_lib, self.get_ext_filename(ext.name))
            for path in {self.get_ext_fullpath(ext.name), built}:
                if os.path.exists(path):
                    os.remove(path)

    def _set_flags(self, flags, link):
        """Compile (and with ``link``, link) with ``flags``, and the flags of every build."""
        every_build = []
        asked_for_plt = "-fplt" in os.environ.get("CFLAGS", "").split()
        if (
            sys.platform == "linux"
            and platform.machine() == "x86_64"
            and not asked_for_plt
            and self._gcc()[0] >= 6
        ):
            # Calls into libpython through the GOT, not through a PLT stub: a
            # request in a busy worker runs over fewer lines of code, about
            # 1 µs cheaper (docs/performance.md).
            every_build.append("-fno-plt")
        for ext in self.extensions:
            ext.extra_compile_args = [*every_build, *flags]
            ext.extra_link_args = list(flags) if link else []

    def _train(self):
        """Run the training workload on the modules just built: None, or why it failed."""
        try:
            return self._run_training()
        except Exception as error:  # a copy that fails, a timeout, ...
            return f"the training did not run ({error!r})"

    def _run_training(self):
        built = [ext for ext in self.extensions if os.path.exists(self.get_ext_fullpath(ext.name))]
        if not built:
            return "no module was built"
        with tempfile.TemporaryDirectory(prefix="pynba-pgo-run-") as run_dir:
            # The package's sources with the modules just built in them, whether
            # they went in place or to the build directory.
            package = os.path.join(run_dir, "pynba")
            shutil.copytree(
                HERE / "src" / "pynba", package,
                ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"),
            )  # fmt: skip
            for ext in built:
                relative = self.get_ext_filename(ext.name)
                shutil.copy2(self.get_ext_fullpath(ext.name), os.path.join(run_dir, relative))
            names = [ext.name.split(".", 1)[1] for ext in built]
            # pynba's own settings of this environment (PINBA_ENABLED=0, PYNBA_STRICT,
            # a bad PINBA_NAME_LIMIT...) are for the application: the workload
            # is the same wherever it is built.
            environment = {
                name: value
                for name, value in os.environ.items()
                if not name.startswith(("PINBA_", "PYNBA_"))
            }
            environment.update(PYTHONPATH=run_dir, PYNBA_PURE_PYTHON="0")
            done = subprocess.run(
                [sys.executable, str(PGO_TRAINING), *names],
                cwd=run_dir,
                env=environment,
                capture_output=True,
                text=True,
                timeout=600,
            )
        if done.returncode:
            return f"the training failed: {done.stderr.strip()[-500:]}"
        return None

    def _say(self, message):
        print(f"pynba: {message}", file=sys.stderr)
        self.warn(message)

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
        self._say(
            f"building a compiled module failed ({error}); installing its pure Python instead."
        )


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
    modules = []
    for name in COMPILED_MODULES:
        source = HERE / "src" / "pynba" / (name.replace(".", "/") + ".pyx")
        if not source.exists():
            source = source.with_suffix(".py")
        modules.append(Extension(f"pynba.{name}", [str(source.relative_to(HERE))]))
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
    package_data={
        "pynba": [
            "py.typed",
            "*.pyx",
            "*.pxd",
            "*.pyi",
            "wire/*.pyx",
            "wire/*.pyi",
            "instrumentation/*.pxd",
            "instrumentation/*.pyx",
            "instrumentation/*.pyi",
        ]
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    extras_require={
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
            # The automatic timers' tests, each library against a real server
            # (PostgreSQL, Redis, memcached, HTTP on 127.0.0.1).
            "psycopg[binary]>=3.1",
            "psycopg2-binary>=2.9",
            "sqlalchemy>=2.0",
            "redis>=5",
            "pymemcache>=4",
            "requests>=2.31",
            "urllib3>=2",
            "jinja2>=3.1",
            "opentelemetry-sdk>=1.20",
            # The wrappers other instrumentations put around a library's
            # functions (OpenTelemetry's, ddtrace's), for the hooks over them.
            "wrapt>=1.14",
            # The task queues' tests run real workers on a private Redis.
            "celery>=5.3",
            "rq>=2.0",
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
