# Types of the compiled encoder (_encoder.pyx): the signature of its pure
# twin, fallback.encode (tests check both give the same bytes).
from .fallback import encode as encode
