"""`xsearch dupes` on a duplicate set the test writes: exact copies, resized / re-encoded / cropped / burst copies,
and distinct photos that must stay out of every group."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from conftest import DEV_PHOTOS, run

pytestmark = pytest.mark.needs_data



def save_with_date(image, path: Path, taken: str, quality: int = 92) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = taken
    image.save(path, exif=exif, quality=quality)


@pytest.fixture
def dupe_home(tmp_path, home, mini) -> tuple[Path, Path]:
    folder = tmp_path / "lib"
    (folder / "sub").mkdir(parents=True)
    cat = Image.open(DEV_PHOTOS / "chelsea.jpg").convert("RGB")
    w, h = cat.size
    save_with_date(cat, folder / "cat.jpg", "2019:01:01 10:00:00")
    shutil.copy(folder / "cat.jpg", folder / "sub" / "cat-copy.jpg")  # same bytes
    save_with_date(cat.resize((w // 2, h // 2)), folder / "cat-small.jpg", "2018:01:01 10:00:00")  # older, smaller
    save_with_date(cat, folder / "cat-q30.jpg", "2020:01:01 10:00:00", quality=30)
    cat.crop((15, 15, w - 15, h - 15)).save(folder / "cat-crop.jpg")
    coffee = Image.open(DEV_PHOTOS / "coffee.jpg").convert("RGB")
    cw, ch = coffee.size
    coffee.save(folder / "coffee.jpg", quality=92)
    burst = coffee.rotate(2, resample=Image.Resampling.BILINEAR).crop((10, 8, cw, ch)).resize((cw, ch))
    ImageEnhance.Brightness(burst).enhance(1.08).save(folder / "coffee-burst.jpg", quality=90)
    shutil.copy(DEV_PHOTOS / "rocket.jpg", folder / "rocket.jpg")
    shutil.copy(DEV_PHOTOS / "rocket.jpg", folder / "sub" / "rocket.jpg")
    for name in ("motorcycle.jpg", "astronaut.jpg", "camera.jpg", "dahlia.jpg", "marigold.jpg"):
        shutil.copy(DEV_PHOTOS / name, folder / name)
    run("index", folder, "--home", home, "-q")
    return home, folder


def groups_of(home: Path, *args) -> list[dict]:
    out = run("dupes", "--home", home, "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def rel(folder: Path, path: str) -> str:
    return str(Path(path).relative_to(folder))


def test_dupes_groups_copies_and_suggests_a_keeper(dupe_home):
    home, folder = dupe_home
    before = sorted(p.name for p in folder.rglob("*"))
    groups = groups_of(home)
    by_keeper = {rel(folder, g["keeper"]): g for g in groups}
    assert set(by_keeper) == {"cat.jpg", "coffee.jpg", "rocket.jpg"}
    cat = by_keeper["cat.jpg"]  # full size, oldest capture among full size (tie with its copy), shortest path
    assert cat["kind"] == "near"
    assert {rel(folder, m["path"]) for m in cat["members"]} == {"cat.jpg", "sub/cat-copy.jpg", "cat-small.jpg",
                                                                  "cat-q30.jpg", "cat-crop.jpg"}
    assert [sorted(rel(folder, p) for p in s) for s in cat["identical"]] == [["cat.jpg", "sub/cat-copy.jpg"]]
    assert {rel(folder, m["path"]) for m in by_keeper["coffee.jpg"]["members"]} == {"coffee.jpg", "coffee-burst.jpg"}
    rocket = by_keeper["rocket.jpg"]
    assert rocket["kind"] == "exact" and len(rocket["members"]) == 2
    grouped = {rel(folder, m["path"]) for g in groups for m in g["members"]}
    assert not grouped & {"motorcycle.jpg", "astronaut.jpg", "camera.jpg", "dahlia.jpg", "marigold.jpg"}
    assert sorted(p.name for p in folder.rglob("*")) == before  # never deletes


def test_keeper_prefers_resolution_then_oldest_capture(dupe_home):
    home, folder = dupe_home
    cat = next(g for g in groups_of(home) if "cat" in Path(g["keeper"]).name)
    sizes = [m["width"] * m["height"] for m in cat["members"]]
    assert sizes[0] == max(sizes) and rel(folder, cat["members"][-1]["path"]) == "cat-small.jpg"
    assert cat["members"][0]["taken"] == "2019-01-01T10:00:00"
    full = [m for m in cat["members"] if m["width"] * m["height"] == max(sizes)]
    dated = [m["taken"] for m in full if m["taken"]]
    assert cat["members"][0]["taken"] == min(dated)  # among equal resolutions, the oldest capture


def test_dupes_threshold_and_text_output(dupe_home):
    home, folder = dupe_home
    strict = groups_of(home, "--threshold", "0.999", "--max-hash", "0")
    assert {g["kind"] for g in strict} == {"exact"}  # identical bytes group whatever the threshold
    assert len(strict) == 2
    text = run("dupes", "--home", home)
    assert "keep" in text.stdout and "nothing was deleted" in text.output
    only_sub = groups_of(home, "--under", folder / "sub")
    assert only_sub == []
    bad = run("dupes", "--home", home, "--threshold", "2", ok=False)
    assert bad.exit_code == 1 and "threshold" in bad.output
