"""Helpers for the server tests: a generated collection (no ../shared needed) and a live uvicorn on 127.0.0.1."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

PICTURES = {  # name -> (background, shape colour, shape)
    "red-circle.png": ((240, 240, 240), (220, 30, 30), "ellipse"),
    "blue-square.png": ((250, 250, 250), (30, 60, 220), "rectangle"),
    "green-stripes.png": ((20, 120, 40), (200, 240, 200), "stripes"),
    "night-sky.jpg": ((5, 5, 30), (250, 250, 200), "dots"),
    "sunset.jpg": ((250, 140, 40), (120, 20, 60), "gradient"),
    "checker.png": ((0, 0, 0), (255, 255, 255), "checker"),
}
SUB_PICTURES = {"sub/yellow-triangle.png": ((30, 30, 30), (250, 220, 0), "triangle"),
                "sub/noise.jpg": ((128, 128, 128), (0, 0, 0), "noise")}


def picture(bg, fg, shape: str, size: int = 256, seed: int = 0) -> Image.Image:
    """A small synthetic picture: a shape, stripes, dots, a gradient, a checkerboard or noise."""
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(seed)
    if shape == "ellipse":
        d.ellipse((48, 48, 208, 208), fill=fg)
    elif shape == "rectangle":
        d.rectangle((56, 56, 200, 200), fill=fg)
    elif shape == "triangle":
        d.polygon([(128, 30), (230, 220), (26, 220)], fill=fg)
    elif shape == "stripes":
        for x in range(0, size, 32):
            d.rectangle((x, 0, x + 14, size), fill=fg)
    elif shape == "dots":
        for x, y in rng.integers(0, size, (80, 2)):
            d.ellipse((x, y, x + 3, y + 3), fill=fg)
    elif shape == "gradient":
        arr = np.linspace(0, 1, size)[:, None, None] * np.array(fg) + (1 - np.linspace(0, 1, size))[:, None, None] * np.array(bg)
        return Image.fromarray(np.repeat(arr, size, axis=1).astype(np.uint8))
    elif shape == "checker":
        for i in range(0, size, 32):
            for j in range(0, size, 32):
                if (i // 32 + j // 32) % 2:
                    d.rectangle((i, j, i + 31, j + 31), fill=fg)
    elif shape == "noise":
        return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return img


def make_folder(root: Path) -> Path:
    """Pictures (two in a subfolder), a text note and a 1 s 440 Hz tone under ``root/media``."""
    folder = root / "media"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i, (name, (bg, fg, shape)) in enumerate({**PICTURES, **SUB_PICTURES}.items()):
        picture(bg, fg, shape, seed=i).save(folder / name)
    (folder / "note.txt").write_text("Shopping list: milk, bread and coffee beans.")
    t = np.arange(16_000) / 16_000
    sf.write(folder / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16_000)
    (folder / "captions.csv").write_text("file,caption\nred-circle.png,a red ball on a white table\n")
    return folder


def build_collection(home: Path, folder: Path, encoder, name: str = "gen") -> None:
    """Index ``folder`` (with its captions) into ``home/name`` and store zero-shot colour tags."""
    from xsearch import Collection

    with Collection.open(home, name, encoder=encoder, create=True) as col:
        col.add([folder], captions=folder / "captions.csv")
        col.tag(["red", "blue", "green", "yellow", "black and white"], k=1)


def build_home(root: Path, encoder) -> tuple[Path, Path]:
    """A generated media folder under ``root`` and a home with collection 'gen' plus a copy 'gen2' (the switcher)."""
    import shutil

    folder = make_folder(root)
    home = root / "home"
    build_collection(home, folder, encoder)
    shutil.copytree(home / "gen", home / "gen2")
    return home, folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app on 127.0.0.1:<free port> in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while httpx.get(self.url + "/api/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("server never became ready")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
