"""peer_carry's receiving side: pieces carried over several calls rebuild and unpack an archive."""
from __future__ import annotations

import hashlib
import io
import tarfile

from pagedllm_tools.bench.peer_carry import recv


def _archive(tmp_path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, text in (("pkg/__init__.py", "VALUE = 7\n"), ("pkg/big.bin", "x" * 5000)):
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
