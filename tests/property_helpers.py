"""Helpers of the property-based tests: a hard time limit per example, the typed-error outcome, and
Hypothesis strategies for random JSON and damaged files."""

from __future__ import annotations

import contextlib
import copy
import signal

from hypothesis import strategies as st

LIMIT_S = 20  # no single example may take longer (a hang fails the test instead of blocking CI)


@contextlib.contextmanager
def time_limit(seconds: float = LIMIT_S):
    """Fail (TimeoutError) when the body runs longer than ``seconds``: a reader that hangs is a failure."""
    def expire(*_):
        raise TimeoutError(f"a reader ran longer than {seconds} s on one file")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(read, typed: type[Exception]):
    """``read()`` under the time limit: its value, or the typed error; anything else fails the test."""
    with time_limit():
        try:
            return read()
        except typed as error:
            assert str(error), "a typed error must say what is wrong"
            return error


SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)
HUGE = st.sampled_from([0, 1, 7, 2**31, 2**40, 2**62, 10**30, -1])


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def mutated(draw, value):
    """``value`` (decoded JSON) with one field somewhere replaced by random JSON, or removed."""
    value = copy.deepcopy(value)
    if not isinstance(value, (dict, list)) or not value:
        return draw(JSON)
    node = value
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and draw(st.booleans()):
            node = child
            continue
        choice = draw(st.integers(0, 3))
        if choice == 0 and isinstance(node, dict):
            del node[key]
        elif choice == 1:
            node[key] = draw(HUGE)
        else:
            node[key] = draw(JSON)
        return value


@st.composite
def damaged_bytes(draw, data: bytes):
    """``data`` truncated, with bytes overwritten, or replaced by random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "random", "empty"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "random":
        return draw(st.binary(max_size=256))
    return b""
