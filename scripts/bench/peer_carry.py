"""Carry vLLM 0.25.0 to a GPU machine that has no package index, for peer.py's side-by-side.

The GPU machine has torch 2.11, triton and transformers but no vLLM, no internet and no pip index,
and each device call carries at most 64 MiB together with the working tree (about 18 MiB here).
vLLM 0.25.0 is the release whose wheel pins torch 2.11. Its wheels, unzipped into one folder and
pruned of what a dense bf16 model on Hopper never loads, pack into two xz archives of ~130 MB
together. They travel in pieces over back-to-back calls (the machine keeps /root while it is warm,
about 30 s after a call), and the last call runs the benchmark:

    here:    python -m pagedllm_tools.bench.peer_carry pack --out .vl --piece-mib 45
             (.vl must be git-ignored: echo /.vl/ >> .git/info/exclude)
    or:      python -m pagedllm_tools.bench.peer_carry split --pieces .vl --room-mb 13.8 24 63.7 28 \
                 --out /tmp/calls     (one folder per call, each filling the room that call has
                 left beside the tree and whatever else it carries)
    calls:   move the pieces of one call into the carried folder, carry it, and run
             python3 -m pagedllm_tools.bench.peer_carry recv --pieces .vl
    last:    ... recv --pieces .vl && python3 -m pagedllm_tools.bench.peer --vllm-site /root/vsite

`recv` appends each piece (NAME.OFFSET) to /root/vl/NAME.tar.xz when it starts where the file
ends, and unpacks an archive once its size and sha256 match SUMS. It can run any number of times.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

# vLLM 0.25.0 and what its offline bf16 path imports that the GPU machine lacks (checked there).
WHEELS = """vllm==0.25.0 lm-format-enforcer==0.11.3 outlines_core==0.2.14 diskcache==5.6.3 lark==1.2.2
compressed-tensors==0.17.0 depyf==0.20.0 nvtx==0.2.15 apache-tvm-ffi==0.1.9 cachetools==8.0.2
blake3==1.0.11 fastapi==0.136.3 starlette==1.10.0 openai==3.57.0 pydantic==2.14.4
pydantic_core==2.50.5 prometheus-fastapi-instrumentator==8.1.0 llguidance==1.7.6
xgrammar==0.2.5.post1 partial-json-parser==0.2.1.1.post7 jsonschema==4.26.0
jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 pyzmq==27.3.0
msgspec==0.23.0 watchfiles==1.3.0 python-json-logger==4.2.0 pybase64==1.5.1 cbor2==6.3.0
ijson==3.6.0 setproctitle==1.3.8 openai-harmony==0.0.8 annotated-types==0.8.0
typing-inspection==0.4.5 httpx2==2.16.2 httpcore2==2.16.2 jiter==0.19.0 interegular==0.3.3
astor==0.8.1 dill==0.4.1 loguru==0.7.3 pydantic-extra-types==2.11.1 sniffio==1.3.1
truststore==0.10.5""".split()
# Never loaded by a dense bf16 model on sm90: FlashAttention 2 (FA3 runs), the Rust frontend,
# Blackwell / FP8 kernels, a static library, scripts.
PRUNE = ["vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so", "vllm/vllm-rs", "vllm/third_party/fmha_sm100",
         "vllm/third_party/deep_gemm", "xgrammar/lib/libxgrammar.a", "bin"]
# The two large libraries go in an archive of their own (Y), everything else in X.
LARGE = ["vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", "vllm/_moe_C_stable_libtorch.abi3.so"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_26_x86_64", "manylinux_2_31_x86_64"]


def pack(out: Path, piece_mib: float, work: Path) -> None:
    """Downloads, unzips, prunes and packs the wheels; writes pieces and SUMS into `out`."""
    wheels, site = work / "wheels", work / "site"
    wheels.mkdir(parents=True, exist_ok=True)
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platform_args,
                    "-d", str(wheels), *WHEELS], check=True)
    shutil.rmtree(site, ignore_errors=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    for rel in PRUNE + [p.name for p in site.glob("dill-*.data")]:
        target = site / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    archives = {"X": [p for p in sorted(site.iterdir())], "Y": [site / rel for rel in LARGE]}
    out.mkdir(parents=True, exist_ok=True)
    sums = []
    for name, paths in archives.items():
        archive = work / f"{name}.tar.xz"
        with tarfile.open(archive, "w:xz", preset=9) as tar:
            for path in paths:
                tar.add(path, arcname=str(path.relative_to(site)),
                        filter=None if name == "Y" else _without(LARGE))
        data = archive.read_bytes()
        sums.append(f"{hashlib.sha256(data).hexdigest()} {len(data)} {name}\n")
        step = int(piece_mib * (1 << 20))
        for offset in range(0, len(data), step):
            (out / f"{name}.{offset}").write_bytes(data[offset:offset + step])
        print(f"{name}: {len(data) / (1 << 20):.1f} MiB in {-(-len(data) // step)} pieces")
    (out / "SUMS").write_text("".join(sums))


def split(pieces: Path, rooms: list[int], out: Path) -> list[Path]:
    """Re-cuts packed archives into one folder per call: folder i gets pieces of `rooms[i]` bytes
    at most, archives in SUMS order, each folder with its own SUMS (what `recv` reads)."""
    sums = (pieces / "SUMS").read_text()
    cuts: list[list[tuple[str, int, bytes]]] = [[] for _ in rooms]
    call, left = 0, rooms[0] if rooms else 0
    for line in sums.splitlines():
        digest, size, name = line.split()
        data = b"".join(p.read_bytes() for p in _pieces(pieces) if p.stem == name)
        if len(data) != int(size) or hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"{name}: the pieces in {pieces} do not rebuild the archive SUMS names")
        offset = 0
        while offset < len(data):
            while left == 0:
                call += 1
                if call == len(rooms):
                    missing = sum(int(x.split()[1]) for x in sums.splitlines()) - sum(rooms)
                    raise ValueError(f"the rooms hold {missing} bytes too few for the archives")
                left = rooms[call]
            take = min(left, len(data) - offset)
            cuts[call].append((name, offset, data[offset:offset + take]))
            offset, left = offset + take, left - take
    folders = []
    for i, chunk in enumerate(cuts):
        folder = out / f"call{i + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, offset, data in chunk:
            (folder / f"{name}.{offset}").write_bytes(data)
        (folder / "SUMS").write_text(sums)
        folders.append(folder)
    return folders


def _pieces(folder: Path) -> list[Path]:
    """The archive pieces (NAME.OFFSET) in folder, by archive name, then offset."""
    found = [p for p in folder.iterdir() if p.suffix[1:].isdigit() and p.stem.isalpha()]
    return sorted(found, key=lambda p: (p.stem, int(p.suffix[1:])))


def _without(rels: list[str]):
    def keep(info: tarfile.TarInfo):
        return None if info.name in rels else info
    return keep


def recv(pieces: Path, state: Path, site: Path) -> None:
    """Appends the carried pieces that continue their archive; unpacks each complete archive."""
    state.mkdir(parents=True, exist_ok=True)
    site.mkdir(parents=True, exist_ok=True)
    for piece in _pieces(pieces):
        archive, offset = state / f"{piece.stem}.tar.xz", int(piece.suffix[1:])
        have = archive.stat().st_size if archive.exists() else 0
        if have == offset:
            with open(archive, "ab") as f:
                f.write(piece.read_bytes())
            print("appended", piece.name)
        elif have >= offset + piece.stat().st_size:
            print("had", piece.name)
        else:
            print(f"GAP {piece.name}: have {have} bytes, the piece starts at {offset}")
    for line in (pieces / "SUMS").read_text().splitlines():
        digest, size, name = line.split()
        archive, done = state / f"{name}.tar.xz", state / f"{name}.done"
        if done.exists():
            print(name, "already unpacked")
            continue
        have = archive.stat().st_size if archive.exists() else 0
        if have != int(size):
            print(f"{name}: {have} of {size} bytes")
        elif hashlib.sha256(archive.read_bytes()).hexdigest() != digest:
            print(f"{name}: BAD SUM")
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(site, filter="fully_trusted")
            done.touch()
            print(name, "unpacked into", site)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, default=Path(".vl"))
    p.add_argument("--piece-mib", type=float, default=45.0)
    p.add_argument("--work", type=Path, default=Path("/tmp/vllm-carry"))
    c = sub.add_parser("split")
    c.add_argument("--pieces", type=Path, default=Path(".vl"))
    c.add_argument("--room-mb", type=float, nargs="+", required=True,
                   help="bytes (in 10^6) each call can carry, in call order")
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("recv")
    r.add_argument("--pieces", type=Path, default=Path(".vl"))
    r.add_argument("--state", type=Path, default=Path("/root/vl"))
    r.add_argument("--site", type=Path, default=Path("/root/vsite"))
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.out, a.piece_mib, a.work)
    elif a.cmd == "split":
        for folder in split(a.pieces, [int(mb * 1e6) for mb in a.room_mb], a.out):
            print(folder, sorted(p.name for p in folder.iterdir()))
    else:
        recv(a.pieces, a.state, a.site)


if __name__ == "__main__":
    main()
