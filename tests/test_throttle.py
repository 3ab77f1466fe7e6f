"""FailureThrottle: the registrar's defence against password guessing."""

from __future__ import annotations

import pytest

from sdpbx.sip.throttle import FailureThrottle

IP = "192.0.2.7"


def test_blocks_on_the_limit_th_failure_once() -> None:
    throttle = FailureThrottle(limit=3, window=60.0, block_for=300.0)
    assert throttle.record_failure(IP, 0.0) is False
    assert throttle.record_failure(IP, 1.0) is False
    assert not throttle.is_blocked(IP, 1.0)
    assert throttle.record_failure(IP, 2.0) is True
    assert throttle.is_blocked(IP, 2.0)
    assert throttle.blocked_count(2.0) == 1
    # Further failures while blocked neither re-trigger nor extend the block.
    assert throttle.record_failure(IP, 3.0) is False
    assert throttle.is_blocked(IP, 301.9)
    assert not throttle.is_blocked(IP, 302.0)
    assert throttle.blocked_count(302.0) == 0
    # After the block the history starts afresh.
    assert throttle.record_failure(IP, 303.0) is False
    assert throttle.record_failure(IP, 304.0) is False
    assert throttle.record_failure(IP, 305.0) is True


def test_window_slides() -> None:
    throttle = FailureThrottle(limit=3, window=10.0)
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):
        assert throttle.record_failure(IP, t) is False
    assert not throttle.is_blocked(IP, 24.0)
    assert throttle.record_failure(IP, 25.0) is True


def test_success_clears_history_but_not_a_block() -> None:
    throttle = FailureThrottle(limit=2)
    throttle.record_failure(IP, 0.0)
    throttle.record_success(IP, 1.0)
    assert throttle.record_failure(IP, 2.0) is False
    assert throttle.record_failure(IP, 3.0) is True
    throttle.record_success(IP, 4.0)
    assert throttle.is_blocked(IP, 4.0)


def test_sources_are_independent() -> None:
    throttle = FailureThrottle(limit=2)
    throttle.record_failure("a", 0.0)
    throttle.record_failure("b", 0.0)
    assert throttle.record_failure("a", 1.0) is True
    assert not throttle.is_blocked("b", 1.0)
    assert throttle.blocked_count(1.0) == 1


def test_memory_is_bounded() -> None:
    throttle = FailureThrottle(limit=2, max_sources=10)
    for i in range(100):
        throttle.record_failure(f"10.0.0.{i}", float(i))
    assert len(throttle._failures) == 10
    # The least recently failing source was forgotten, the latest kept.
    assert throttle.record_failure("10.0.0.0", 100.0) is False
    assert throttle.record_failure("10.0.0.99", 100.0) is True
    for i in range(100):
        throttle.record_failure(f"b{i}", 200.0)
        throttle.record_failure(f"b{i}", 200.0)
    assert throttle.blocked_count(200.0) == 10
    assert throttle.is_blocked("b99", 200.0)
    assert not throttle.is_blocked("b0", 200.0)


def test_arguments_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        FailureThrottle(limit=0)
