"""Builds, on the fly, a folder of awkward and broken image files mixed with good faces.

Each entry says what the loader must make of it: an error code, or a good
image. Nothing here is committed as a binary; it is all made from real
UTKFace faces at test time.
"""

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Expected:
    path: Path
    error_code: str | None  # None: must load and be processed
    size: tuple[int, int] = (200, 200)  # (width, height) of a good one


def _png_bomb(path: Path, side: int = 100_000) -> None:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    raw = zlib.compress(b"\x00" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    )


def build_bad_corpus(folder: Path, faces: list[Path]) -> list[Expected]:
    """Write the corpus into `folder` using a few real face files; returns the expectations."""
    folder.mkdir(parents=True, exist_ok=True)
    face = Image.open(faces[0]).convert("RGB")
    expected: list[Expected] = []

    def bad(name: str, code: str) -> Path:
        expected.append(Expected(folder / name, code))
        return folder / name

    def good(name: str, size: tuple[int, int] = face.size) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        expected.append(Expected(path, None, size))
        return path

    bad("zero.jpg", "empty").write_bytes(b"")
    data = faces[1].read_bytes()
    bad("truncated.jpg", "truncated").write_bytes(data[: len(data) // 2])
    bad("text.jpg", "not_an_image").write_text("this is a text file, not a JPEG\n")
    _png_bomb(bad("bomb.png", "too_large"))
    os.symlink(folder / "does-not-exist.jpg", bad("dangling.jpg", "not_found"))
    os.mkfifo(bad("pipe.jpg", "not_a_file"))
    bad("folder.jpg", "not_a_file").mkdir()
    os.symlink("loop.jpg", bad("loop.jpg", "symlink_loop"))
    if os.geteuid() != 0:  # root reads anything; the other unreadable cases still run
        locked = bad("locked.jpg", "unreadable")
        locked.write_bytes(data)
        locked.chmod(0)

    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 200))
    rgba.save(good("alpha.png"))
    sixteen = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(good("sixteen.png"))
    face.convert("L").save(good("gray.jpg"))
    face.convert("CMYK").save(good("cmyk.jpg"))
    frames = [Image.open(p).convert("RGB") for p in faces[2:4]]
    frames[0].save(good("animated.gif"), save_all=True, append_images=frames[1:], duration=100)
    face.save(good("my photos/ünïcödé face.jpg"))
    face.convert("P", palette=Image.Palette.ADAPTIVE).save(good("palette.png"))
    for size in [(1, 1), (8, 8), (16, 11)]:  # thumbnails smaller than any face: done, none
        face.resize(size).save(good(f"thumbnail-{size[0]}x{size[1]}.png", size))
    return expected


def write_exif_rotated(source: Path, target: Path) -> None:
    """Store the face lying on its side, with EXIF orientation 6 saying how to stand it up."""
    upright = Image.open(source).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # viewer rotates 90 CW to undo
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(target, exif=exif.tobytes())
