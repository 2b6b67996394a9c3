"""Transactional calls with a deadline (journal_worker/deadline.py): one helper thread for every
call that returns in time, a new one after a call that does not."""

from __future__ import annotations

import threading

import pytest

from journal_worker.deadline import DeadlineThread, Stuck

DEADLINE = 10.0


def test_calls_share_one_thread_and_keep_their_results_and_errors() -> None:
    calls = DeadlineThread("t")
    idents = {calls.call(threading.get_ident, (), DEADLINE) for _ in range(100)}
    assert len(idents) == 1 and threading.get_ident() not in idents
    assert calls.call(divmod, (7, 2), DEADLINE) == (3, 1)
    with pytest.raises(ZeroDivisionError):
        calls.call(divmod, (1, 0), DEADLINE)
    assert calls.call(threading.get_ident, (), DEADLINE) in idents  # an error keeps the thread
    assert calls.threads_started == 1
    calls.close()


def test_a_call_past_its_deadline_is_left_behind_and_the_next_gets_a_new_thread() -> None:
    calls = DeadlineThread("t")
    release, inside = threading.Event(), threading.Event()
    stuck_thread: list[threading.Thread] = []

    def blocked() -> None:
        stuck_thread.append(threading.current_thread())
        inside.set()
        release.wait(DEADLINE)

    first = calls.call(threading.get_ident, (), DEADLINE)
    with pytest.raises(Stuck):
        calls.call(blocked, (), 0.05)
    assert inside.is_set()
    # the stuck thread is still inside its call; the next call does not wait behind it
    second = calls.call(threading.get_ident, (), DEADLINE)
    assert second != first and calls.threads_started == 2
    release.set()
    stuck_thread[0].join(DEADLINE)
    assert not stuck_thread[0].is_alive()  # it ends once its call returns
    calls.close()
