"""The packed record: its formats and its size."""

from __future__ import annotations

import sys

import msgpack
import pytest

from inline_state import Change, RecordKey
from inline_state.stores._record import FormatError, Record, view_blob

KEY = RecordKey("user", "bot", "test", "", "user-1")
CREATED = (500 << 32) + 7  # a stamp well above 2^32, as real ones are


def record_with_everything() -> Record:
    rec = Record()
    rec.apply(Change(KEY, {"a": b"1", "b": b'"x"'}, stamp=CREATED))
    rec.apply(Change(KEY, {"c": b"[1]"}, frozenset({"b"}), stamp=CREATED + (3_600_000 << 12)))
    return rec


def test_pack_and_unpack_round_trip() -> None:
    rec = record_with_everything()
    again = Record.unpack(rec.pack())

    assert again.values == rec.values and again.stamps == rec.stamps
    assert again.tombs == rec.tombs
    assert again.size() == rec.size()
    assert (again.created, again.writes, again.clear) == (rec.created, rec.writes, rec.clear)
    assert again.etag == rec.etag and again.observed == rec.observed


def test_text_records_round_trip() -> None:
    rec = Record()
    rec.replace("base64 state", CREATED)
    view = view_blob(rec.pack())
    assert view.text == "base64 state" and view.observed == CREATED and not view.props


def test_format_1_blobs_are_still_read() -> None:
    rec = record_with_everything()
    flat = [x for name, value in rec.values.items() for x in (name, value, rec.stamps[name])]
    tombs = [x for name, stamp in rec.tombs.items() for x in (name, stamp)]
    old = msgpack.packb([1, rec.created, rec.writes, rec.clear, None, 0, flat, tombs])

    assert view_blob(old) == view_blob(rec.pack())
    assert Record.unpack(old).values == rec.values


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(FormatError, match="format 9"):
        view_blob(msgpack.packb([9, 0, 0, 0, [], []]))


def test_a_small_fresh_record_fits_a_64_byte_allocation() -> None:
    # What keeps memory:// near 400 bytes per idle user: stamps relative to the creation
    # stamp take one byte here instead of nine.
    rec = Record()
    rec.apply(Change(KEY, {"turns": b"12"}, stamp=CREATED))
    assert sys.getsizeof(rec.pack()) <= 64


def test_values_written_before_orjson_compare_equal_to_what_it_writes() -> None:
    # json wrote 1e-05 where orjson writes 0.00001: a bag carried back unchanged must not
    # look changed (and be written) because the stored bytes came from the old encoder.
    old = Record()
    old.apply(
        Change(KEY, {"small": b"1e-05", "list": b"[1e-07,2.5]", "s": b'"e-1"'}, stamp=CREATED)
    )
    again = Record.unpack(old.pack())
    assert again.values == {"small": b"0.00001", "list": b"[1e-7,2.5]", "s": b'"e-1"'}


def test_the_kept_size_and_top_stamp_match_a_recount() -> None:
    rec = record_with_everything()
    rec.apply(Change(KEY, {"d": b'"longer value"'}, stamp=CREATED + (7_200_000 << 12)))
    rec.apply(Change(KEY, {}, frozenset({"a"}), stamp=CREATED + (7_300_000 << 12)))
    from inline_state._codec import bag_size

    assert rec.size() == bag_size(rec.values)
    assert rec.top == max([rec.clear, *rec.stamps.values(), *rec.tombs.values()])


def test_a_change_at_stamp_zero_is_stale_even_for_a_new_name() -> None:
    # "Above the stored stamp, 0 for none": the Lua scripts keep the same rule.
    rec = Record()
    assert not rec.apply(Change(KEY, {"a": b"1"}, stamp=0))
    assert rec.values == {} and not rec.live
