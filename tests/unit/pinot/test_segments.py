"""Segment names, ``creation.meta``, Pinot's CRC and ``.properties``: pure functions."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from az_agent.drivers.pinot.segments import (
    CreationMeta,
    LLCSegmentName,
    crc_files,
    find_format_file,
    format_properties,
    is_uploaded_realtime_name,
    parse_properties,
    segment_crc,
)


def test_llc_names() -> None:
    name = LLCSegmentName.parse("myTable__0__12__20240501T1230Z")
    assert name == LLCSegmentName("myTable", 0, 12, "20240501T1230Z")
    assert str(name) == "myTable__0__12__20240501T1230Z"
    assert str(LLCSegmentName.build("t", 3, 0, 1_717_245_296_789)) == "t__3__0__20240601T1234Z"
    assert name is not None
    assert str(name.next(1_714_566_600_000)) == "myTable__0__13__20240501T1230Z"
    for other in (
        "myTable_1714521600000_1714607999000_0",
        "uploaded__myTable__0__20240501T1230Z__a1b2",
        "myTable__x__1__20240501T1230Z",
        "__0__1__20240501T1230Z",
    ):
        assert LLCSegmentName.parse(other) is None
    assert is_uploaded_realtime_name("uploaded__myTable__0__20240501T1230Z__a1b2")
    assert not is_uploaded_realtime_name("myTable__0__12__20240501T1230Z")


def test_creation_meta_16_and_24_bytes() -> None:
    short = CreationMeta(3_618_839_852, 1_714_563_000_000)
    assert len(short.to_bytes()) == 16
    assert CreationMeta.from_bytes(short.to_bytes()) == short
    long = CreationMeta(3_618_839_852, 1_714_563_000_000, 2_271_830_915)
    raw = long.to_bytes()
    assert raw[:8] == (3_618_839_852).to_bytes(8, "big")
    assert len(raw) == 24
    assert CreationMeta.from_bytes(raw) == long
    with pytest.raises(ValueError, match="expected 16 or 24"):
        CreationMeta.from_bytes(b"\0" * 8)


def test_crc_order_and_exclusions(tmp_path: Path) -> None:
    # Java's File.compareTo order: "a.b" < "a/b" ('.' < '/'), "A/q" < "_u" < "a.b",
    # "v3.x/z" < "v3/columns.psf"; creation.meta and *.crc are left out.
    files = {
        "a/b": b"1",
        "a.b": b"22",
        "A/q": b"333",
        "_u": b"4444",
        "v3/columns.psf": b"55555",
        "v3.x/z": b"666666",
        "v3/creation.meta": b"ignored",
        "v3/x.crc": b"ignored",
    }
    for relative, data in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(data)
    order = ["A/q", "_u", "a.b", "a/b", "v3.x/z", "v3/columns.psf"]
    assert [p.relative_to(tmp_path).as_posix() for p in crc_files(tmp_path)] == order
    expected = zlib.adler32(b"".join(files[name] for name in order))
    assert segment_crc(tmp_path) == expected
    assert segment_crc(tmp_path / "nothing-here") == 1


def test_data_crc_uses_forward_and_dictionary_files(tmp_path: Path) -> None:
    (tmp_path / "col.dict").write_bytes(b"dict")
    (tmp_path / "col.sv.unsorted.fwd").write_bytes(b"fwd")
    (tmp_path / "metadata.properties").write_bytes(b"x")
    assert segment_crc(tmp_path, data_only=True) == zlib.adler32(b"dictfwd")


def test_find_format_file_prefers_v3(tmp_path: Path) -> None:
    assert find_format_file(tmp_path, "metadata.properties") is None
    (tmp_path / "metadata.properties").write_text("a=1")
    assert find_format_file(tmp_path, "metadata.properties") == tmp_path / "metadata.properties"
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "metadata.properties").write_text("a=2")
    assert find_format_file(tmp_path, "metadata.properties") == tmp_path / "v3/metadata.properties"


def test_properties_as_java_reads_them() -> None:
    text = (
        "# comment\n"
        "! also a comment\n"
        "segment.name = myTable__0__11__20240501T1130Z\n"
        "segment.total.docs=100000\n"
        "key\\ with\\ spaces : value\n"
        "multi = one, \\\n"
        "        two\n"
        "unicode = caf\\u00e9\n"
        "empty =\n"
        "bare\n"
    )
    assert parse_properties(text) == {
        "segment.name": "myTable__0__11__20240501T1130Z",
        "segment.total.docs": "100000",
        "key with spaces": "value",
        "multi": "one, two",
        "unicode": "café",
        "empty": "",
        "bare": "",
    }


@given(
    st.dictionaries(
        st.text(st.characters(blacklist_categories=["Cs"]), min_size=1),
        st.text(st.characters(blacklist_categories=["Cs"])),
        max_size=8,
    )
)
def test_properties_round_trip(values: dict[str, str]) -> None:
    assert parse_properties(format_properties(values)) == values
