"""pynba: a Pinba client for Python applications."""

from .encoder import IMPLEMENTATION as ENCODER
from .encoder import encode

__all__ = ["ENCODER", "encode"]
__version__ = "0.6.0.dev0"
