import pytest

from telephony.playout import PlayoutLedger


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
    m1 = ledger.sent("a", 40, now=0.0)
    ledger.echoed(m1, now=0.04)
    ledger.sent("b", 200, now=1.0)  # buffer was empty: b starts playing at 1.0, not 0.04
    assert ledger.heard_ms("b", 1.05) == pytest.approx(50)
    assert ledger.playing_item == "b"


def test_unknown_mark_is_rejected_and_changes_nothing():
    ledger = PlayoutLedger()
    ledger.sent("a", 100, now=0.0)
    assert not ledger.echoed("nope", now=0.05)
    assert ledger.heard_ms("a", 0.05) == pytest.approx(50)
