"""``split_files.load_ahead``: cases come back in order while the next ones load in threads."""

from __future__ import annotations

import threading
import time

import pytest

from datamodules.split_files import load_ahead


def test_order_kept_when_later_cases_finish_first() -> None:
    def load(spec: int) -> int:
        time.sleep(0.02 * (5 - spec))  # case 0 slowest: completion order is reversed
        return spec * 10

    assert list(load_ahead(load, range(6), depth=3)) == [(i, i * 10) for i in range(6)]


def test_next_cases_load_while_the_caller_holds_one() -> None:
    """The caller waits, holding case 0, for case 1 and 2 to be loaded: only a loader that
    reads ahead in other threads lets it through; never more than ``depth`` loads at once."""
    loaded = {i: threading.Event() for i in range(5)}
    running, most, lock = [0], [0], threading.Lock()

    def load(spec: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        loaded[spec].set()
        with lock:
            running[0] -= 1
        return spec

    seen = []
    for spec, case in load_ahead(load, range(5), depth=2):
        if spec == 0:
            assert loaded[1].wait(5) and loaded[2].wait(5)
            time.sleep(0.05)
            assert not loaded[3].is_set()  # depth 2: case 3 waits until case 0 is handed out
        seen.append(case)
    assert seen == list(range(5))
    assert most[0] == 2


def test_depth_zero_loads_in_the_callers_thread() -> None:
    threads = []

    def load(spec: int) -> int:
        threads.append(threading.current_thread())
        return spec

    assert [c for _, c in load_ahead(load, range(3), depth=0)] == [0, 1, 2]
    assert threads == [threading.current_thread()] * 3


@pytest.mark.parametrize("error", [ValueError("case 2 is bad"), KeyboardInterrupt()])
def test_an_error_is_raised_at_its_case_and_the_rest_is_not_loaded(error) -> None:
    calls = []

    def load(spec: int) -> int:
        calls.append(spec)
        if spec == 2:
            raise error
        return spec

    seen = []
    with pytest.raises(type(error)):
        for spec, _ in load_ahead(load, range(10), depth=2):
            seen.append(spec)
    assert seen == [0, 1]
    assert sorted(calls) == list(range(len(calls))) and len(calls) <= 5  # 2 + depth + 1


def test_a_caller_that_stops_early_cancels_the_loads_not_started() -> None:
    calls = []

    def load(spec: int) -> int:
        calls.append(spec)
        time.sleep(0.01)
        return spec

    for spec, _ in load_ahead(load, range(100), depth=2):
        if spec == 1:
            break
    assert len(calls) <= 4
