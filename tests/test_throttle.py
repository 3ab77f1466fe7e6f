"""FailureThrottle: the registrar's defence against password guessing."""

from __future__ import annotations

import pytest

from sdpbx.sip.throttle import FailureThrottle

IP = "192.0.2.7"


def test_blocks_on_the_limit_th_failure_once() -> None:
    throttle = FailureThrottle(limit=3, window=60.0, block_for=300.0)
    assert throttle.record_failure(IP, "u", 0.0) is False
    assert throttle.record_failure(IP, "u", 1.0) is False
    assert not throttle.is_blocked(IP, "u", 1.0)
    assert throttle.record_failure(IP, "u", 2.0) is True
    assert throttle.is_blocked(IP, "u", 2.0)
    assert throttle.blocked_count(2.0) == 1
    # Further failures while blocked neither re-trigger nor extend the block.
    assert throttle.record_failure(IP, "u", 3.0) is False
    assert throttle.is_blocked(IP, "u", 301.9)
    assert not throttle.is_blocked(IP, "u", 302.0)
    assert throttle.blocked_count(302.0) == 0
    # After the block the history starts afresh.
    assert throttle.record_failure(IP, "u", 303.0) is False
    assert throttle.record_failure(IP, "u", 304.0) is False
    assert throttle.record_failure(IP, "u", 305.0) is True


def test_window_slides() -> None:
    throttle = FailureThrottle(limit=3, window=10.0)
    for t in (0.0, 6.0, 12.0, 18.0, 24.0):
        assert throttle.record_failure(IP, "u", t) is False
    assert not throttle.is_blocked(IP, "u", 24.0)
    assert throttle.record_failure(IP, "u", 25.0) is True


def test_success_clears_history_but_not_a_block() -> None:
    throttle = FailureThrottle(limit=2)
    throttle.record_failure(IP, "u", 0.0)
    throttle.record_success(IP, "u", 1.0)
    assert throttle.record_failure(IP, "u", 2.0) is False
    assert throttle.record_failure(IP, "u", 3.0) is True
    throttle.record_success(IP, "u", 4.0)
    assert throttle.is_blocked(IP, "u", 4.0)


def test_sources_are_independent() -> None:
    throttle = FailureThrottle(limit=2)
    throttle.record_failure("a", "u", 0.0)
    throttle.record_failure("b", "u", 0.0)
    assert throttle.record_failure("a", "u", 1.0) is True
    assert not throttle.is_blocked("b", "u", 1.0)
    assert throttle.blocked_count(1.0) == 1


def test_failures_for_one_user_do_not_block_others_at_that_source() -> None:
    """Probe: 10 failures for a non-existent user blocked alice and bob at that address."""
    throttle = FailureThrottle(limit=10, source_limit=50)
    for i in range(10):
        throttle.record_failure(IP, "nobody", float(i))
    assert throttle.is_blocked(IP, "nobody", 10.0)
    assert not throttle.is_blocked(IP, "alice", 10.0)
    assert not throttle.is_blocked(IP, "bob", 10.0)
    assert not throttle.is_blocked(IP, None, 10.0)


def test_spraying_user_names_blocks_the_source_but_not_its_trusted_users() -> None:
    throttle = FailureThrottle(limit=5, source_limit=20)
    throttle.record_success(IP, "alice", 0.0)
    results = [throttle.record_failure(IP, f"u{i}", 1.0 + i / 100) for i in range(20)]
    assert results == [False] * 19 + [True]
    assert throttle.is_source_blocked(IP, 2.0)
    assert throttle.is_blocked(IP, "bob", 2.0)  # never proved itself here
    assert throttle.is_blocked(IP, None, 2.0)
    assert not throttle.is_blocked(IP, "alice", 2.0)
    assert not throttle.is_blocked("192.0.2.8", "bob", 2.0)


def test_memory_is_bounded_and_expires() -> None:
    throttle = FailureThrottle(limit=2, source_limit=2, max_entries=10)
    for i in range(100):
        throttle.record_failure(f"10.0.0.{i}", "u", float(i))
    assert len(throttle._pairs) <= 10
    assert len(throttle._blocked_sources) == 0
    for i in range(100):
        throttle.record_failure(f"b{i}", "x", 200.0)
        throttle.record_failure(f"b{i}", "y", 200.0)
    assert len(throttle._blocked_sources) == 10
    assert throttle.is_source_blocked("b99", 200.0)
    assert not throttle.is_source_blocked("b0", 200.0)
    assert len(throttle) <= 50
    throttle.expire(200.0 + 300.0 + 60.0)
    assert len(throttle) == 0


def test_arguments_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        FailureThrottle(limit=0)
    with pytest.raises(ValueError, match="source_limit"):
        FailureThrottle(limit=5, source_limit=4)
