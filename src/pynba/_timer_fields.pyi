# The compiled encoder's reader of compiled Timers (_timer_fields.pyx): a capsule.
from typing import Any

READ_TIMER_FIELDS: Any
