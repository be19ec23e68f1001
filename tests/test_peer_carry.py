"""peer_carry's receiving side: pieces carried over several calls rebuild and unpack an archive."""
from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from pagedllm_tools.bench.peer_carry import recv, split


def _archive(tmp_path, files=(("pkg/__init__.py", "VALUE = 7\n"), ("pkg/big.bin", "x" * 5000))) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, text in files:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _carry(folder, data: bytes, cut: int, which: list[int], name="X", digest=None):
    folder.mkdir(exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    pieces = [(0, data[:cut]), (cut, data[cut:])]
    for i in which:
        offset, chunk = pieces[i]
        (folder / f"{name}.{offset}").write_bytes(chunk)
    (folder / "SUMS").write_text(f"{digest or hashlib.sha256(data).hexdigest()} {len(data)} {name}\n")


def test_pieces_over_calls_rebuild_and_unpack_once(tmp_path, capsys):
    data, carried = _archive(tmp_path), tmp_path / "vl"
    state, site = tmp_path / "state", tmp_path / "site"
    _carry(carried, data, 100, [1])  # the second piece first: it does not continue the archive
    recv(carried, state, site)
    assert "GAP X.100" in capsys.readouterr().out and not (site / "pkg").exists()
    _carry(carried, data, 100, [0])
    recv(carried, state, site)
    assert f"X: 100 of {len(data)} bytes" in capsys.readouterr().out
    _carry(carried, data, 100, [0, 1])  # the first again (already had) and the second
    recv(carried, state, site)
    out = capsys.readouterr().out
    assert "had X.0" in out and "appended X.100" in out and "X unpacked" in out
    assert (site / "pkg" / "__init__.py").read_text() == "VALUE = 7\n"
    recv(carried, state, site)
    assert "X already unpacked" in capsys.readouterr().out


def test_a_corrupt_archive_is_not_unpacked(tmp_path, capsys):
    data, carried = _archive(tmp_path), tmp_path / "vl"
    _carry(carried, data, 100, [0, 1], digest="0" * 64)
    recv(carried, tmp_path / "state", tmp_path / "site")
    assert "X: BAD SUM" in capsys.readouterr().out
    assert not (tmp_path / "site" / "pkg").exists()


def test_split_fills_each_calls_room_and_the_calls_rebuild_the_archives(tmp_path, capsys):
    x, y = _archive(tmp_path), _archive(tmp_path, [("lib/y.so", "y" * 300)])
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "X.0").write_bytes(x[:150])  # as `pack` leaves them: fixed-size pieces
    (packed / "X.150").write_bytes(x[150:])
    (packed / "Y.0").write_bytes(y)
    (packed / "SUMS").write_text(f"{hashlib.sha256(x).hexdigest()} {len(x)} X\n"
                                 f"{hashlib.sha256(y).hexdigest()} {len(y)} Y\n")
    rooms = [100, len(x) - 100 + 50, 1000]
    folders = split(packed, rooms, tmp_path / "calls")
    assert [sum(p.stat().st_size for p in f.iterdir() if p.name != "SUMS") for f in folders] \
        == [100, len(x) - 100 + 50, len(y) - 50]
    assert sorted(p.name for p in folders[1].iterdir()) == ["SUMS", "X.100", "Y.0"]
    state, site = tmp_path / "state", tmp_path / "site"
    for folder in folders:
        recv(folder, state, site)
    out = capsys.readouterr().out
    assert "X unpacked" in out and f"Y: 50 of {len(y)}" in out and "Y unpacked" in out
    assert "GAP" not in out
    assert (site / "pkg" / "__init__.py").read_text() == "VALUE = 7\n"
    assert (site / "lib" / "y.so").read_text() == "y" * 300


def test_split_refuses_rooms_too_small_and_pieces_that_do_not_match(tmp_path):
    x = _archive(tmp_path)
    packed = tmp_path / "packed"
    _carry(packed, x, 100, [0, 1])
    with pytest.raises(ValueError, match=f"{len(x) - 60} bytes too few"):
        split(packed, [30, 30], tmp_path / "calls")
    (packed / "X.100").write_bytes(b"broken")
    with pytest.raises(ValueError, match="X: the pieces"):
        split(packed, [10**6], tmp_path / "calls2")
