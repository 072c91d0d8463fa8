"""Unit tests of the reconnect policy."""

from palisade_client import CloseInfo, Retry, Stop, advice_for_code, decide, full_jitter


def test_full_jitter_is_bounded_by_the_capped_exponential() -> None:
    assert full_jitter(0, 0.1, 1.0, lambda: 0.0) == 0.0
    assert abs(full_jitter(3, 0.1, 1.0, lambda: 0.5) - 0.4) < 1e-9
    assert full_jitter(60, 0.1, 1.0, lambda: 0.5) == 0.5
    for _ in range(1000):
        assert 0 <= full_jitter(2, 0.1, 1.0) < 0.4


def test_decisions_follow_advice_code_and_retry_after() -> None:
    half = lambda: 0.5  # noqa: E731
    assert decide(CloseInfo(1008, "never"), 0, random=half) == Stop()
    assert decide(CloseInfo(1001, "now"), 0, random=half) == Retry(0.0, False)
    assert decide(CloseInfo(1008, "after_refresh"), 0, random=half) == Retry(0.0, True)
    assert decide(CloseInfo(1008, "backoff", 750), 0, 0.1, 10, half) == Retry(0.75, False)
    assert decide(CloseInfo(1008, "backoff"), 1, 0.1, 10, half) == Retry(0.1, False)
    assert decide(CloseInfo(1006), 0, random=half).__class__ is Retry
    assert decide(CloseInfo(1008), 0) == Stop()
    assert [advice_for_code(c) for c in (1001, 1006, 1011, 1012, 1013)] == ["backoff"] * 5
    assert [advice_for_code(c) for c in (1000, 1002, 1007, 1008, 1009)] == ["never"] * 5
