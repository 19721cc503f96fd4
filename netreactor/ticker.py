"""``on_tick``: calling it and reading what it returned, for engines and clients alike.

What ``on_tick()`` may return, and what happens:

==========================  ==============================================
``None``                    tick again after :data:`DEFAULT_TICK` seconds
``seconds`` (> 0)           tick again after that long
``(seconds, Action)``       the same, then the action (``SHUTDOWN`` stops;
                            ``CLOSE`` has no connection to close: ignored)
``(anything, SHUTDOWN)``    stop; the delay does not matter
anything else, 0, < 0,      logged as an error; tick again after
NaN, infinity               :data:`DEFAULT_TICK` (a zero delay would call
                            ``on_tick`` again at once, forever)
raises                      logged with its traceback; the same
==========================  ==============================================
"""

from __future__ import annotations

import math
from typing import Any, Tuple

from .callbacks import Failed, call
from .handler import Action, EventHandler

__all__ = ["DEFAULT_TICK", "run_tick", "parse_tick"]

#: Delay between ticks when ``on_tick`` returns None or something unusable.
DEFAULT_TICK = 1.0


def run_tick(handler: EventHandler, logger: Any) -> Tuple[float, Action]:
    """Call ``handler.on_tick()`` once: the delay until the next tick, and the action."""
    result = call(logger, handler, "on_tick", None, handler.on_tick)
    if result.__class__ is Failed:
        return DEFAULT_TICK, Action.NONE
    try:
        return parse_tick(result)
    except ValueError as exc:
        logger.error("on_tick returned %r: %s; ticking again in %ss", result, exc, DEFAULT_TICK)
        return DEFAULT_TICK, Action.NONE


def parse_tick(result: Any) -> Tuple[float, Action]:
    """``on_tick``'s result as ``(delay, action)``; ``ValueError`` when unusable."""
    if result is None:
        return DEFAULT_TICK, Action.NONE
    action = Action.NONE
    if isinstance(result, tuple):
        if len(result) != 2:
            raise ValueError("expected seconds or (seconds, Action)")
        result, action = result
        if action is None:
            action = Action.NONE
        elif not isinstance(action, Action):
            raise ValueError(f"expected an Action, got {action!r}")
    if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
        raise ValueError("the delay must be a finite number of seconds > 0")
    if result <= 0 and action is not Action.SHUTDOWN:
        raise ValueError("the delay must be a number of seconds > 0")
    return max(0.0, float(result)), action
