"""Issue 10, ingest half: one bad entry never stops a run, what is stored is what was embedded, bounded memory per
file, and the small input checks. Real files, real SQLite, the real offline encoder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import hostile
from xsearch import media
from xsearch.cli import app
from xsearch.engine import Collection
from xsearch.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _stored(col: Collection) -> dict[str, object]:
    return {r.path: r for r in col.store.rows()}


@pytest.mark.slow
def test_hostile_folder_indexes_every_good_file_and_names_every_bad_one(tmp_path, mini, monkeypatch):
    folder = tmp_path / "hostile"
    h = hostile.build(folder)
    hostile.write(folder, b"vanish.png", hostile.png(color=(1, 2, 3)))        # deleted after discovery
    hostile.write(folder, b"swap.jpg", hostile.jpeg(color=(250, 250, 250)))   # replaced after it was decoded
    hostile.write(folder, b"grow.txt", b"a short note")                        # rewritten in place while read
    events: list[tuple[str, str]] = []

    def hook(event: str, path: str) -> None:
        events.append((event, path))
        name = os.fsencode(path).rsplit(b"/", 1)[-1]
        if event == "open" and name == b"vanish.png":
            os.unlink(path)
        if event == "decoded" and name == b"swap.jpg" and events.count((event, path)) == 1:
            hostile.write(folder, b"swap.tmp", hostile.jpeg(color=(10, 10, 10), w=64))
            os.replace(h.path(b"swap.tmp"), path)
        if event == "decoded" and name == b"grow.txt" and events.count((event, path)) == 1:
            with open(path, "wb") as fh:
                fh.write(b"a much longer note about a rocket launch at night")
            os.utime(path, ns=(1, 1_000_000_000))

    monkeypatch.setattr(media, "TEST_HOOK", hook, raising=False)
    try:
        col = Collection.open(tmp_path / "home", "h", encoder=mini, create=True)
        report = col.add([folder])
        stored = _stored(col)
        skipped = {os.fsencode(p): r for p, r in report.skipped}
        for name in h.good:
            assert h.path(name) in stored, (name, skipped.get(os.fsencode(h.path(name))))
        for name, fragment in h.bad.items():
            path = os.fsencode(h.path(name))
            assert path in skipped, (name, sorted(skipped))
            reason = skipped[path]
            assert fragment in reason and media.shown(h.path(name)) in reason and "\n" not in reason, reason
            assert h.path(name) not in stored
        assert os.fsencode(h.path(b"vanish.png")) in skipped and "vanished" in skipped[os.fsencode(h.path(b"vanish.png"))]
        assert report.added == len(h.good) + 2  # + swap.jpg and grow.txt
        # the in-place rewrite was noticed and read again: what is stored is the new text, with its own hash
        grow = stored[h.path(b"grow.txt")]
        assert grow.text.startswith("a much longer note") and grow.sha256 == media.file_hash(h.path(b"grow.txt"))
        # the swapped file is stored as the bytes that were embedded (old hash), so the next run re-embeds it
        swap = stored[h.path(b"swap.jpg")]
        assert swap.sha256 != media.file_hash(h.path(b"swap.jpg"))
        monkeypatch.setattr(media, "TEST_HOOK", None)
        again = col.add([folder])
        assert again.updated == 1 and again.added == 0 and again.unchanged == len(h.good) + 1
        assert {os.fsencode(p) for p, _ in again.skipped} == set(skipped) - {os.fsencode(h.path(b"vanish.png"))}
        swap = _stored(col)[h.path(b"swap.jpg")]
        assert swap.sha256 == media.file_hash(h.path(b"swap.jpg"))
        assert np.allclose(col.vectors([swap.id])[0], mini.encode_images([h.path(b"swap.jpg")])[0], atol=1e-5)
        # non-UTF-8 names: found by their own image, filtered by their (non-UTF-8) folder, removable
        cafe = h.path(b"caf\xe9.jpg")
        assert col.search(image=cafe, k=1)[0].path == cafe
        odd_folder = h.path(b"sub/\xff\xfe folder")
        assert [x.path for x in col.search(text="yellow", under=[odd_folder], k=5)] == [h.path(b"sub/\xff\xfe folder/yellow.png")]
        assert col.remove([odd_folder]) == 1
        col.close()
    finally:
        hostile.restore_permissions(folder)


def _walk_and_read(folder: Path) -> dict:
    """Discover and read every file under ``folder``: {path: reason or 'ok'}."""
    result = {}
    for f in media.discover([folder], on_skip=lambda p, r: result.__setitem__(p, r)):
        try:
            media.read_consistent(f.path, lambda fh: fh.read())
            result[f.path] = "ok"
        except BadInput as exc:
            result[f.path] = str(exc)
    return result


def _discover_as_nobody(folder: Path) -> dict:
    """Walk and read ``folder`` in a child that dropped root (root reads anything): {path: reason or 'ok'}."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, json.dumps(_walk_and_read(folder)).encode())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            os.write(write, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_unreadable_folders_and_files_are_named_not_fatal(tmp_path):
    """r-- folder (names listable, files not reachable), 000 folder, 000 file. As root these cannot fail, so the walk
    runs in a child that dropped to 'nobody' (in a world-traversable temp folder)."""
    base = Path(tempfile.mkdtemp(dir="/tmp" if os.geteuid() == 0 else tmp_path))
    try:
        os.chmod(base, 0o755)
        hostile.write(base, b"ok.png", hostile.png())
        hostile.write(base, b"noexec/a.png", hostile.png())
        hostile.write(base, b"closed/b.png", hostile.png())
        hostile.write(base, b"secret.png", hostile.png())
        os.chmod(base / "noexec", 0o444)
        os.chmod(base / "closed", 0o000)
        os.chmod(base / "secret.png", 0o000)
        if os.geteuid() == 0:
            result = _discover_as_nobody(base)
        else:
            result = _walk_and_read(base)
        assert "error" not in result, result
        assert result[str(base / "ok.png")] == "ok"
        assert "Permission denied" in result[str(base / "noexec" / "a.png")]
        assert "cannot list folder" in result[str(base / "closed")]
        assert "cannot open (Permission denied)" in result[str(base / "secret.png")]
    finally:
        for p in (base / "noexec", base / "closed", base / "secret.png"):
            os.chmod(p, 0o755)
        import shutil

        shutil.rmtree(base)


@pytest.mark.slow
def test_a_file_replaced_after_decoding_is_never_stored_with_the_new_checksum(tmp_path, mini, monkeypatch):
    """Issue 10 item 2: before, the hash was taken after embedding, so the old vector got the new checksum and the
    next run called the file unchanged forever."""
    folder = tmp_path / "p"
    names = [f"img{i}.png".encode() for i in range(4)]
    for i, name in enumerate(names):
        hostile.write(folder, name, hostile.png(color=(60 * i, 200, 30)))

    def hook(event: str, path: str) -> None:
        if event == "decoded" and not path.endswith(".new"):
            hostile.write(folder, b"x.new", hostile.png(color=(255, 0, 255), w=40))
            os.replace(folder / "x.new", path)

    monkeypatch.setattr(media, "TEST_HOOK", hook, raising=False)
    col = Collection.open(tmp_path / "home", "c", encoder=mini, create=True)
    col.add([folder])
    monkeypatch.setattr(media, "TEST_HOOK", None)
    report = col.add([folder])
    assert report.updated == len(names) and report.unchanged == 0
    rows = _stored(col)
    for name in names:
        path = str(folder / name.decode())
        assert rows[path].sha256 == media.file_hash(path)
        assert np.allclose(col.vectors([rows[path].id])[0], mini.encode_images([path])[0], atol=1e-5)
    assert col.add([folder]).unchanged == len(names)


# ---- bounded resources ----------------------------------------------------------------------------
_RESAMPLE = """
import resource, sys
import numpy as np
from xsearch.encoders.audio import resample
peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmPeak')) * 1024
resource.setrlimit(resource.RLIMIT_AS, (peak + (1 << 30), peak + (1 << 30)))  # 1 GiB above the imports
for sr in map(int, sys.argv[1:]):
    t = np.arange(2 * sr) / sr
    y = resample((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, 16000)
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    print(sr, len(y), np.fft.rfftfreq(len(y), 1 / 16000)[spec.argmax()], flush=True)
"""


def test_odd_sample_rates_resample_in_bounded_memory():
    """Issue 10 item 3: the kernel grew with the rate ratio (2.6 GB for 4001 Hz, 5.6 GB for 44101 Hz). Here each
    rate must resample 2 s of a tone within 1 GiB of address space, and keep the tone where it was."""
    rates = [4001, 8001, 44101, 12345]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _RESAMPLE, *map(str, rates)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-500:]
    for line, rate in zip(run.stdout.splitlines(), rates, strict=True):
        sr, n, peak_hz = line.split()
        assert int(sr) == rate and abs(int(n) - 32000) <= 40 and abs(float(peak_hz) - 440) < 2, line


def test_common_rates_keep_their_exact_ratio():
    from xsearch.encoders.audio import resample_ratio

    assert resample_ratio(44_100, 16_000) == (160, 441) and resample_ratio(48_000, 16_000) == (1, 3)
    assert resample_ratio(22_050, 16_000) == (320, 441) and resample_ratio(8_000, 16_000) == (2, 1)


def test_nan_audio_and_nan_vectors_are_refused_with_a_reason(tmp_path):
    from xsearch.engine.batching import emit
    from xsearch.media import FileInfo

    hostile.write(tmp_path, b"nan.wav", hostile.wav(poison=float("nan")))
    with pytest.raises(BadInput, match="nan.wav: audio contains NaN"):
        media.load_audio(tmp_path / "nan.wav")
    files = [FileInfo(f"/x/{i}.txt", "text", 1, 1) for i in range(3)]
    batches, errors = [], []
    vectors = np.eye(3, dtype=np.float32)
    vectors[1, 0] = np.nan
    emit(lambda xs: vectors, [0, 1, 2], files, [{}, {}, {}], batches.append, lambda p, r: errors.append((p, r)))
    assert [f.path for f in batches[0].files] == ["/x/0.txt", "/x/2.txt"] and np.isfinite(batches[0].vectors).all()
    assert errors == [("/x/1.txt", "/x/1.txt: the encoder produced a non-finite (NaN/inf) vector; not stored")]


def test_a_failing_batch_is_retried_item_by_item():
    from xsearch.engine.batching import emit
    from xsearch.media import FileInfo

    def encode(xs):
        if "bad" in xs:
            raise RuntimeError("boom")
        return np.ones((len(xs), 2), np.float32)

    files = [FileInfo(f"/x/{n}", "text", 1, 1) for n in ("a", "bad", "c")]
    batches, errors = [], []
    emit(encode, ["a", "bad", "c"], files, [{}, {}, {}], batches.append, lambda p, r: errors.append(r))
    assert [b.files[0].path for b in batches] == ["/x/a", "/x/c"] and errors == ["/x/bad: cannot embed (RuntimeError: boom)"]


def test_random_bytes_mp3_reason_does_not_guess_a_pipe(tmp_path):
    for seed in range(5):
        hostile.write(tmp_path, b"r.mp3", bytes(np.random.default_rng(seed).integers(0, 256, 4000, dtype=np.uint8)))
        with pytest.raises(BadInput) as err:
            media.load_audio(tmp_path / "r.mp3")
        assert "pipe" not in str(err.value) and "unreadable audio" in str(err.value)


# ---- small input checks: one line, exit 1 (was: internal error, or arbitrary hits) ----------------
@pytest.fixture(scope="module")
def small_home(tmp_path_factory):
    from xsearch.encoders import create

    folder = tmp_path_factory.mktemp("small")
    hostile.write(folder, b"red.png", hostile.png())
    hostile.write(folder, b"note.txt", b"a note about cats")
    home = folder / "home"
    col = Collection.open(home, "default", encoder=create("xsearch-mini"), create=True)
    col.add([folder / "red.png", folder / "note.txt"])
    col.close()
    return home, folder


@pytest.mark.parametrize("args, message", [
    (["index", "{folder}", "--batch-size", "0"], "batch size must be at least 1"),
    (["index", "{folder}", "--workers", "-1"], "workers must be 0 or more"),
    (["tag", "--labels", "cat,dog", "--template", "{0} {1}"], "--template"),
    (["tag", "--labels", "cat,dog", "--template", "{label}"], "--template"),
    (["tag", "--labels", "cat,dog", "--template", "no placeholder"], "has no {}"),
    (["query", ""], "empty query text"),
    (["query", "   "], "empty query text"),
    (["query", "cat", "--weights", "text=0"], "all weights are 0"),
    (["query", "cat", "--weights", "text=nan"], "finite"),
])
def test_bad_options_are_one_line_errors(small_home, args, message):
    home, folder = small_home
    result = runner.invoke(app, [a.format(folder=folder) if a == "{folder}" else a for a in args] + ["--home", str(home)])
    assert result.exit_code == 1, result.output
    assert message in result.output and "internal error" not in result.output


def test_dates_far_out_are_clamped_not_overflowing(small_home):
    home, _ = small_home
    late = runner.invoke(app, ["query", "cat", "--since", "2999-01-01", "--home", str(home), "--json"])
    assert late.exit_code == 0 and late.stdout.strip() == "", late.output
    early = runner.invoke(app, ["query", "cat", "--until", "2999-01-01", "--since", "1000-01-01", "-m", "any",
                                "--home", str(home), "--json"])
    assert early.exit_code == 0 and len([l for l in early.stdout.splitlines() if l.startswith("{")]) == 2


@pytest.mark.slow
def test_non_utf8_paths_print_safely_and_round_trip_in_json(tmp_path, mini):
    folder = tmp_path / "f"
    hostile.write(folder, b"caf\xe9.png", hostile.png())
    hostile.write(folder, b"gar\xe7on.jpg", b"junk")
    home = tmp_path / "home"
    Collection.open(home, "default", encoder=mini, create=True).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}
    cli = [sys.executable, "-m", "xsearch.cli"]
    index = subprocess.run(cli + ["index", str(folder), "--home", str(home), "--json"], capture_output=True, env=env)
    assert index.returncode == 0, index.stderr.decode()[-400:]
    report = json.loads(index.stdout)  # valid (ASCII) JSON, the real path inside
    assert report["added"] == 1 and report["skipped"][0]["path"] == str(folder) + "/gar\udce7on.jpg"
    assert "gar\\xe7on.jpg" in report["skipped"][0]["reason"]
    table = subprocess.run(cli + ["query", "red", "--home", str(home)], capture_output=True, env=env)
    assert table.returncode == 0 and b"caf\\xe9.png" in table.stdout, table.stderr.decode()[-400:]
    hits = subprocess.run(cli + ["query", "red", "--home", str(home), "--json"], capture_output=True, env=env)
    assert json.loads(hits.stdout.splitlines()[0])["path"] == str(folder) + "/caf\udce9.png"
