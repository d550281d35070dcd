"""The compose trainer's timeline (tests/deploy/stack.timeline) from its log's events."""

from tests.deploy.stack import _seconds, timeline

START = "2026-11-29T10:00:00.000000000Z"


def at(seconds: int) -> str:
    return f"2026-11-29T10:{seconds // 60:02d}:{seconds % 60:02d}.000000000Z"


def test_restored_stages_are_their_own_kind_not_the_stage_before_them() -> None:
    events = [
        (at(10), True, "prepare@titanic"),
        (at(20), False, "prepare@churn"),  # restores: 20 s to 80 s
        (at(50), False, "train@churn"),
        (at(80), True, "train@titanic"),
        (at(95), True, "register@titanic"),
    ]
    said = timeline(events, _seconds(START), _seconds(at(120)), 300)
    assert said.startswith("trainer 120 s of the 300 s up (3 stages run, 2 restored")
    # prepare is its own 10 s, not the 70 s up to the next stage run; register runs to the exit
    assert "by kind, s: restored 60, register 25, train 15, prepare 10;" in said
    assert "slowest: register@titanic 25, train@titanic 15, prepare@titanic 10)" in said
    assert said.endswith("before it 10 s")


def test_a_trainer_that_ran_nothing_says_so() -> None:
    events = [(at(5), False, "prepare@titanic")]
    assert timeline(events, _seconds(START), _seconds(at(30)), 60) == (
        "trainer: 30 s, no stage ran"
    )
