import datetime as dt

import pytest

from rentbox.clock import SystemClock, from_text, to_text


def test_text_round_trip_and_order():
    moment = dt.datetime(2026, 11, 26, 22, 43, 1, 5, tzinfo=dt.timezone.utc)
    assert to_text(moment) == "2026-11-26T22:43:01.000005Z"
    assert from_text(to_text(moment)) == moment
    later = moment + dt.timedelta(microseconds=995)
    assert to_text(later) > to_text(moment)


def test_other_zones_are_stored_as_utc():
    moscow = dt.timezone(dt.timedelta(hours=3))
    assert to_text(dt.datetime(2026, 1, 1, 3, 0, tzinfo=moscow)) == "2026-01-01T00:00:00.000000Z"


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        to_text(dt.datetime(2026, 1, 1))


def test_system_clock_is_aware():
    assert SystemClock().now().tzinfo is not None


def test_to_text_writes_what_strftime_wrote_and_from_text_reads_it_back():
    """The fast formatting is the stored format, byte for byte, in any zone."""
    import datetime as dt
    import random

    from rentbox.clock import _FORMAT, from_text, to_text

    draw = random.Random(7)
    for _ in range(2000):
        moment = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
            microseconds=draw.randrange(10**17))
        zone = dt.timezone(dt.timedelta(minutes=draw.randrange(-14 * 60, 14 * 60)))
        local = moment.astimezone(zone)
        text = to_text(local)
        assert text == moment.strftime(_FORMAT)
        assert from_text(text) == moment and from_text(text).tzinfo == dt.timezone.utc
