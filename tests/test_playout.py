import pytest

from telephony.core.playout import MARK_EVERY_MS, MARK_QUIET_S, PlayoutLedger


def test_echoed_marks_prove_what_was_heard():
    ledger = PlayoutLedger()
    m1 = ledger.sent("item1", 100, now=0.0)
    m2 = ledger.sent("item1", 100, now=0.0)
    assert ledger.heard_ms("item1", 0.0) == 0
    assert ledger.echoed(m1, now=0.1)
    assert ledger.heard_ms("item1", 0.1) == 100
    # Between echoes the chunk plays at real time…
    assert ledger.heard_ms("item1", 0.15) == pytest.approx(150)
    # …but never past a mark that has not come back.
    assert ledger.heard_ms("item1", 0.9) == 200
    assert ledger.echoed(m2, now=0.2)
    assert not ledger.unplayed
    assert ledger.heard_ms("item1", 5.0) == 200


def test_clear_forgets_pending_marks_so_their_echoes_do_not_count():
    ledger = PlayoutLedger()
    m1 = ledger.sent("a", 100, now=0.0)
    m2 = ledger.sent("a", 100, now=0.0)
    assert ledger.echoed(m1, now=0.1)
    ledger.clear()
    assert not ledger.echoed(m2, now=0.3)  # echoed because of the clear: not heard
    assert ledger.heard_ms("a", 0.3) == 100


def test_playback_starts_when_audio_arrives_after_an_idle_gap():
    ledger = PlayoutLedger()
    assert ledger.sent("a", 40, now=0.0) is None  # under MARK_EVERY_MS: no mark yet…
    m1 = ledger.seal()  # …until the item ends
    ledger.echoed(m1, now=0.04)
    ledger.sent("b", 200, now=1.0)  # buffer was empty: b starts playing at 1.0, not 0.04
    assert ledger.heard_ms("b", 1.05) == pytest.approx(50)
    assert ledger.playing_item == "b"


def test_unknown_mark_is_rejected_and_changes_nothing():
    ledger = PlayoutLedger()
    ledger.sent("a", 100, now=0.0)
    assert not ledger.echoed("nope", now=0.05)
    assert ledger.heard_ms("a", 0.05) == pytest.approx(50)


def test_one_mark_per_hundred_ms_of_streamed_audio_not_per_delta():
    ledger = PlayoutLedger()
    marks = [ledger.sent("a", 40, now=i * 0.04) for i in range(10)]  # 400 ms in 40 ms deltas
    assert [m is not None for m in marks] == [False, False, True] * 3 + [False]
    assert MARK_EVERY_MS == 100
    # The model pauses: the last 40 ms get their mark once it has been quiet for MARK_QUIET_S.
    assert ledger.due(0.36 + MARK_QUIET_S / 2) is None
    last = ledger.due(0.36 + MARK_QUIET_S)
    assert last is not None and ledger.due(1.0) is None  # once
    for name in [m for m in marks if m] + [last]:
        assert ledger.echoed(name, now=0.5)
    assert not ledger.unplayed and ledger.heard_ms("a", 0.5) == 400


def test_audio_without_its_mark_yet_still_counts_as_playing_at_real_time():
    ledger = PlayoutLedger()
    m1 = ledger.sent("a", 120, now=0.0)
    assert m1 is not None and ledger.sent("a", 60, now=0.0) is None  # open chunk: 120-180 ms
    assert ledger.echoed(m1, now=0.12)
    assert ledger.unplayed and ledger.playing_item == "a"
    assert ledger.heard_ms("a", 0.15) == pytest.approx(150)  # interpolated inside the open chunk
    assert ledger.heard_ms("a", 0.5) == 180  # never past what was sent


def test_a_new_item_seals_the_open_chunk_of_the_last_one_first():
    ledger = PlayoutLedger()
    assert ledger.sent("a", 40, now=0.0) is None
    assert ledger.before("a") is None
    first = ledger.before("b")  # the mark goes out before b's audio
    assert first is not None and ledger.sent("b", 40, now=0.0) is None
    assert ledger.echoed(first, now=0.04)
    assert ledger.heard_ms("a", 0.04) == 40 and ledger.playing_item == "b"
