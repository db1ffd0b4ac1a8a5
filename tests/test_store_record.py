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

    assert again.props == rec.props
    assert again.tombs == rec.tombs
    assert (again.created, again.writes, again.clear) == (rec.created, rec.writes, rec.clear)
    assert again.etag == rec.etag and again.observed == rec.observed


def test_text_records_round_trip() -> None:
    rec = Record()
    rec.replace("base64 state", CREATED)
    view = view_blob(rec.pack())
    assert view.text == "base64 state" and view.observed == CREATED and not view.props


def test_format_1_blobs_are_still_read() -> None:
    rec = record_with_everything()
    flat = [x for name, (value, stamp) in rec.props.items() for x in (name, value, stamp)]
    tombs = [x for name, stamp in rec.tombs.items() for x in (name, stamp)]
    old = msgpack.packb([1, rec.created, rec.writes, rec.clear, None, 0, flat, tombs])

    assert view_blob(old) == view_blob(rec.pack())
    assert Record.unpack(old).props == rec.props


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(FormatError, match="format 9"):
        view_blob(msgpack.packb([9, 0, 0, 0, [], []]))


def test_a_small_fresh_record_fits_a_64_byte_allocation() -> None:
    # What keeps memory:// near 400 bytes per idle user: stamps relative to the creation
    # stamp take one byte here instead of nine.
    rec = Record()
    rec.apply(Change(KEY, {"turns": b"12"}, stamp=CREATED))
    assert sys.getsizeof(rec.pack()) <= 64
