"""File discovery, modality detection and safe decoding."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xsearch.errors import BadInput
from xsearch.media import discover, load_audio, load_text, modality_of, open_image


def test_discover_recurses_skips_hidden_and_unsupported(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "b" / "x.PNG")
    (tmp_path / "a" / "notes.md").write_text("# hi")
    (tmp_path / "a" / "data.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden" / "y.jpg")
    found = {f.path.split("/")[-1]: f.modality for f in discover([tmp_path])}
    assert found == {"x.PNG": "image", "notes.md": "text"}


def test_modality_from_magic_bytes_when_no_extension(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo", format="JPEG")
    (tmp_path / "blob").write_bytes(b"hello")
    assert modality_of(tmp_path / "photo") == "image" and modality_of(tmp_path / "blob") is None
    assert modality_of("song.FLAC") == "audio" and modality_of("x.webp") == "image" and modality_of("x.exe") is None


def test_large_jpeg_is_drafted_but_reports_its_real_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 3200, 3), dtype=np.uint8)).save(path)
    image, size = open_image(path)
    assert size == (3200, 2400) and max(image.size) < 1600 and image.mode == "RGB"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"), (b"\xff\xd8\xff\xe0garbage", "unreadable image"), (b"GIF89a??", "not a readable image"),
])
def test_bad_images_name_file_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=reason) as err:
        open_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_text_and_audio_errors(tmp_path):
    (tmp_path / "e.txt").write_text("  \n")
    (tmp_path / "b.txt").write_bytes(b"abc\x00def")
    (tmp_path / "n.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(BadInput, match="empty text"):
        load_text(tmp_path / "e.txt")
    with pytest.raises(BadInput, match="binary"):
        load_text(tmp_path / "b.txt")
    with pytest.raises(BadInput, match="n.wav: unreadable audio"):
        load_audio(tmp_path / "n.wav")


def test_discover_yields_each_file_once_through_symlinks_and_overlapping_roots(tmp_path):
    from xsearch.media import discover

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "note.txt").write_text("hello")
    (tmp_path / "a" / "alias.txt").symlink_to(tmp_path / "a" / "note.txt")
    found = [f.path for f in discover([tmp_path, tmp_path / "a", tmp_path / "a" / "note.txt"])]
    assert found == [str((tmp_path / "a" / "note.txt").resolve())]
