"""Build script: the compiled encoder is optional, pure Python is the fallback."""

import os
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent


class OptionalBuildExt(build_ext):
    """Builds the encoder when it can; says so and goes on when it can't."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # no compiler, no Python headers, ...
            self._fall_back(error)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            self._fall_back(error)

    def _fall_back(self, error):
        message = (
            f"pynba: building the compiled encoder failed ({error}); "
            "installing the pure-Python encoder instead."
        )
        print(message, file=sys.stderr)
        self.warn(message)


def extensions():
    if os.environ.get("PYNBA_NO_EXTENSION") == "1":
        return []
    if sys.implementation.name != "cpython":
        return []
    source = "src/pynba/_encoder.pyx"
    try:
        from Cython.Build import cythonize
    except ImportError:
        generated = "src/pynba/_encoder.c"
        if not (HERE / generated).exists():
            print("pynba: Cython is not installed; using the pure-Python encoder.", file=sys.stderr)
            return []
        return [Extension("pynba._encoder", [generated])]
    return cythonize(
        [Extension("pynba._encoder", [source])],
        compiler_directives={"language_level": "3"},
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
    package_data={"pynba": ["py.typed", "*.pyx"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    extras_require={
        "tools": ["protobuf>=4.21"],
        "lz4": ["lz4>=4"],
        "test": [
            "protobuf>=4.21",
            "pytest>=7",
            "hypothesis>=6",
            "webob>=1.8",
        ],
    },
    entry_points={"console_scripts": ["pynba = pynba.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Cython",
        "Topic :: System :: Monitoring",
    ],
    zip_safe=False,
)
