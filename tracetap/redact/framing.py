"""Walking length-framed messages through one stream direction, whatever the events cut: the stream
offset of the next message start is remembered between events, so a secret is found in the message that
holds it even when its header came in an earlier read (MySQL servers read the 4-byte header first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tracetap.redact.base import Window
from tracetap.redact.http import starts_a_message

NEED_MORE = -1  # the step needs bytes beyond the window: retry from the same start with the next event
LOST = -2  # not this protocol here: start again at the next event's first byte


@dataclass(slots=True)
class Walk:
    boundary: int | None = None  # stream offset of the next message start; None: unknown
    done: bool = False  # the stream turned into something unreadable (TLS after an SSLRequest)


# A step reads the message starting at `pos` of the window, masks its secrets, and returns the window
# position after it, NEED_MORE or LOST.
Step = Callable[[Window, int, Walk], int]

MAX_STEPS = 4096  # per window; a 4-byte message is the smallest, so this bounds a window of 16 KiB


def walk(w: Window, name: str, new: Callable[[], Walk], step: Step) -> None:
    state: Walk | None = w.state.get(name)
    if state is None:
        state = w.state[name] = new()
    if state.done:
        return
    if w.stream_at == 0 and w.new_at == 0 and starts_a_message(w.data):
        state.done = True  # an HTTP stream: no length-framed binary protocol here
        return
    pos = w.new_at if state.boundary is None else state.boundary - w.stream_at
    if pos < 0:  # the boundary fell in bytes the capture did not keep
        pos = w.new_at
    size = len(w.data)
    steps = 0
    while pos < size and steps < MAX_STEPS and not state.done:
        steps += 1
        after = step(w, pos, state)
        if after == NEED_MORE:
            w.keep(pos)
            break
        if after == LOST:
            state.boundary = None
            return
        pos = after
    state.boundary = w.stream_at + pos
