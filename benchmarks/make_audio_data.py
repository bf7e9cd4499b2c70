"""Generate captioned training audio for the xsearch audio tower (reproducible with --seed).

Sources: espeak-ng and flite speech (many voices, speeds, pitches) of words and short phrases; General-MIDI instruments
rendered with fluidsynth (fluid-soundfont-gm); tones, noises, chirps, beeps and clicks from sox; and mixtures of
these (speech or music over noise, speech over music, two instruments) with varied loudness.
Every clip is a 16 kHz mono 16-bit WAV of --duration seconds; ``captions.csv`` has
``file,caption,label,kind,words,split`` (label: the class used for zero-shot tagging; words: spoken text).

Speech and instruments get random room reverb / telephone-band simulation, and every clip gets a coloured
background-noise floor 20-50 dB down (so "digital silence" never marks a class).

Needs: apt-get install -y --no-install-recommends espeak-ng flite sox fluidsynth fluid-soundfont-gm
Run:   .venv/bin/python benchmarks/make_audio_data.py --out benchmarks/_data/audio --seed 0
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xsearch.encoders.audio import resample  # noqa: E402

SR = 16_000
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"

WORDS = (
    "hello goodbye yes no stop go left right up down front rear center side one two three four five zero "
    "music water computer search dog cat red blue green morning night coffee help open close play"
).split()
PHRASES = [
    "front left", "front right", "front center", "rear left", "rear right", "rear center", "side left",
    "side right", "good morning", "thank you", "turn left", "turn right", "play music", "open the door",
    "hello world", "good night", "help me", "stop the music",
]
BASE_VOICES = ["en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
MALE = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8"]
FEMALE = ["f1", "f2", "f3", "f4", "f5"]
FLITE = {"awb": False, "rms": False, "kal16": False, "kal": False, "slt": True}  # voice -> female
SPEECH_TEMPLATES = [
    "a {who} saying the word '{w}'", "a {who} saying '{w}'", "a {who} says '{w}'", "the spoken word '{w}'",
    "someone says '{w}'", "a {who}'s voice saying '{w}'", "speech: '{w}'", "a person speaking the words '{w}'",
]
PHRASE_TEMPLATES = ["a {who} saying '{w}'", "a {who} says '{w}'", "someone says '{w}'", "a voice saying '{w}'"]

# name, GM program (0-based), article
INSTRUMENTS = [
    ("piano", 0), ("electric piano", 4), ("harpsichord", 6), ("music box", 10), ("marimba", 12),
    ("xylophone", 13), ("church organ", 19), ("accordion", 21), ("harmonica", 22), ("acoustic guitar", 24),
    ("electric guitar", 30), ("bass guitar", 33), ("violin", 40), ("cello", 42), ("harp", 46),
    ("string ensemble", 48), ("choir", 52), ("trumpet", 56), ("trombone", 57), ("french horn", 60),
    ("saxophone", 65), ("oboe", 68), ("clarinet", 71), ("flute", 73), ("pan flute", 75), ("banjo", 105),
    ("steel drums", 114), ("tubular bells", 14),
]
RANGES = {"bass guitar": (28, 52), "cello": (36, 64), "trombone": (40, 65), "violin": (55, 88), "flute": (60, 93),
          "piccolo": (74, 100), "tubular bells": (60, 77), "choir": (48, 76), "banjo": (48, 76)}
INSTR_TEMPLATES = {
    "melody": ["{a} playing a melody", "a melody played on {a}", "{i} music", "the sound of {a}", "{a} tune"],
    "note": ["{a} playing a single long note", "one sustained {i} note", "a single note on {a}"],
    "chords": ["{a} playing chords", "{i} chords", "chords played on {a}"],
    "arpeggio": ["{a} playing an arpeggio", "{a} playing fast notes", "{i} music"],
}
DRUM_TEMPLATES = ["a drum beat", "drums playing a rhythm", "a drum kit playing a beat", "a rock drum beat"]
CLAP_TEMPLATES = ["hand claps", "people clapping their hands in rhythm", "clapping"]

SYNTH = {  # label -> caption templates
    "sine tone": ["a sine tone", "a pure tone", "a steady electronic tone", "a test tone"],
    "square wave": ["a buzzing square wave tone", "a square wave", "a harsh electronic buzz"],
    "sawtooth wave": ["a sawtooth synth tone", "a bright sawtooth wave", "a raspy synthesizer tone"],
    "white noise": ["white noise", "static hiss", "a hissing noise like radio static"],
    "pink noise": ["pink noise", "a soft rushing noise like a waterfall"],
    "brown noise": ["brown noise", "a low rumbling noise", "deep rumble"],
    "rising chirp": ["a rising sine sweep", "a chirp going up in pitch", "a tone sliding upwards"],
    "falling chirp": ["a falling sine sweep", "a chirp going down in pitch", "a tone sliding downwards"],
    "beeps": ["beeping", "a repeating beep like an alarm", "short electronic beeps"],
    "clicks": ["clicks", "a ticking clock", "a metronome clicking", "regular clicking sounds"],
    "silence": ["silence", "near silence", "a quiet empty recording"],
}


# ---- specs ---------------------------------------------------------------------------------------
def make_specs(args: argparse.Namespace) -> list[dict]:
    """The deterministic list of base clips (speech, instrument, synth) with captions and splits."""
    rng = random.Random(args.seed)
    specs: list[dict] = []
    for _ in range(args.n_speech):
        specs.append(_speech_spec(rng))
    for _ in range(args.n_instrument):
        specs.append(_instrument_spec(rng))
    for _ in range(args.n_synth):
        specs.append(_synth_spec(rng))
    for i, s in enumerate(specs):
        s["id"] = f"{s['kind']}_{i:05d}"
        s["split"] = "test" if rng.random() < args.test_frac else "train"
        s["seed"] = rng.randrange(1 << 30)
        s["gain_db"] = rng.uniform(-24, -1)
        s["floor_db"] = rng.uniform(-50, -20)  # background noise floor relative to the signal (no digital silence)
    return specs


def _speech_spec(rng: random.Random) -> dict:
    use_flite = rng.random() < 0.45
    flite_voice = rng.choice(list(FLITE))
    female = FLITE[flite_voice] if use_flite else rng.random() < 0.45
    text = rng.choice(PHRASES) if rng.random() < 0.35 else rng.choice(WORDS)
    who = rng.choice(["woman", "girl", "female speaker"] if female else ["man", "boy", "male speaker"])
    who = who if rng.random() < 0.8 else "person"
    tpl = rng.choice(PHRASE_TEMPLATES if " " in text else SPEECH_TEMPLATES)
    return dict(
        kind="speech", label="speech", words=text, caption=tpl.format(who=who, w=text),
        voice=f"{rng.choice(BASE_VOICES)}+{rng.choice(FEMALE if female else MALE)}",
        speed=rng.randint(110, 210), pitch=rng.randint(25, 85), engine="flite" if use_flite else "espeak-ng",
        flite_voice=flite_voice, stretch=round(rng.uniform(0.8, 1.35), 2), effect=_effect(rng),
    )


def _effect(rng: random.Random) -> str:
    """Room/channel simulation applied to speech and instruments: none, reverb, telephone band."""
    return rng.choices(["none", "reverb", "telephone", "reverb+telephone"], weights=[5, 3, 2, 1])[0]


def _instrument_spec(rng: random.Random) -> dict:
    r = rng.random()
    if r < 0.07:
        return dict(kind="instrument", label="drums", words="", caption=rng.choice(DRUM_TEMPLATES), program=-1, pattern="drums")
    if r < 0.10:
        return dict(kind="instrument", label="hand claps", words="", caption=rng.choice(CLAP_TEMPLATES), program=-1, pattern="claps")
    name, program = rng.choice(INSTRUMENTS)
    pattern = rng.choices(["melody", "note", "chords", "arpeggio"], weights=[5, 2, 2, 2])[0]
    if name in ("music box", "marimba", "xylophone", "tubular bells", "steel drums", "harp") and pattern == "note":
        pattern = "melody"
    return dict(kind="instrument", label=name, words="", caption=rng.choice(INSTR_TEMPLATES[pattern]).format(i=name, a=article(name)),
                program=program, pattern=pattern, effect=rng.choices(["none", "reverb", "telephone"], weights=[6, 2, 1])[0])


def article(name: str) -> str:
    """'a violin' / 'an oboe'."""
    return ("an " if name[0] in "aeiou" else "a ") + name


def _synth_spec(rng: random.Random) -> dict:
    label = rng.choices(list(SYNTH), weights=[3, 2, 2, 2, 1, 1, 1.5, 1.5, 2, 2, 0.7])[0]
    spec = dict(kind="synth", label=label, words="", caption=rng.choice(SYNTH[label]))
    spec["freq"] = round(float(np.exp(rng.uniform(np.log(120), np.log(3000)))), 1)
    if label == "sine tone" and rng.random() < 0.5:
        low = spec["freq"] < 400
        spec["caption"] = "a low-pitched hum" if low and rng.random() < 0.5 else (
            "a low sine tone" if low else ("a high-pitched sine tone" if spec["freq"] > 1500 else "a sine tone beep"))
    return spec


def make_mix_specs(specs: list[dict], n: int, seed: int) -> list[dict]:
    """Mixture specs built from base clips of the same split."""
    rng = random.Random(seed + 1)
    by = lambda pred, split: [s for s in specs if pred(s) and s["split"] == split]  # noqa: E731
    speech = lambda s: s["kind"] == "speech"  # noqa: E731
    music = lambda s: s["kind"] == "instrument" and s["label"] not in ("drums", "hand claps")  # noqa: E731
    noise = lambda s: s["label"] in ("white noise", "pink noise", "brown noise")  # noqa: E731
    out: list[dict] = []
    for _ in range(n * 5):
        if len(out) >= n:
            break
        split = "test" if rng.random() < 0.1 else "train"
        try:
            out.append(_mix_spec(rng, split, by, speech, music, noise) | {"id": f"mix_{len(out):05d}", "split": split})
        except IndexError:  # no component of that kind in this split (tiny data sets)
            continue
    return out


def _mix_spec(rng: random.Random, split: str, by, speech, music, noise) -> dict:  # noqa: ANN001
    """One mixture of two base clips of ``split``."""
    kind = rng.choices(["speech+noise", "music+noise", "speech+music", "music+music", "drums+music"], weights=[3, 2, 3, 2, 1])[0]
    if kind == "speech+noise":
        a, b = rng.choice(by(speech, split)), rng.choice(by(noise, split))
        cap = rng.choice(["{a} with background noise", "{a} over {b}", "{a} in a noisy room"]).format(
            a=a["caption"], b=b["label"])
        snr, label = rng.uniform(0, 15), "speech"
    elif kind == "music+noise":
        a, b = rng.choice(by(music, split)), rng.choice(by(noise, split))
        cap = rng.choice(["{a} with background hiss", "{a} and {b}"]).format(a=a["caption"], b=b["label"])
        snr, label = rng.uniform(3, 18), a["label"]
    elif kind == "speech+music":
        a, b = rng.choice(by(speech, split)), rng.choice(by(music, split))
        cap = f"{a['caption']} over {b['label']} music"
        snr, label = rng.uniform(3, 12), "speech"
    elif kind == "drums+music":
        a = rng.choice(by(lambda s: s["label"] == "drums", split))
        b = rng.choice(by(music, split))
        cap, snr, label = f"a drum beat with {article(b['label'])}", rng.uniform(-3, 3), "mix"
    else:
        a = rng.choice(by(music, split))
        b = rng.choice([s for s in by(music, split) if s["label"] != a["label"]])
        cap, snr, label = f"{article(a['label'])} and {article(b['label'])} playing together", rng.uniform(-3, 3), "mix"
    return dict(kind="mix", label=label, words=a.get("words", ""), caption=cap, a=a["id"], b=b["id"], snr=snr,
                gain_db=rng.uniform(-20, -1), seed=rng.randrange(1 << 30))


# ---- rendering -----------------------------------------------------------------------------------
def fit(wave: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Place ``wave`` at a random offset in ``n`` samples (or take a random ``n``-sample crop)."""
    if len(wave) >= n:
        start = int(rng.integers(0, len(wave) - n + 1))
        return wave[start : start + n]
    out = np.zeros(n, np.float32)
    start = int(rng.integers(0, n - len(wave) + 1))
    out[start : start + len(wave)] = wave
    return out


def apply_effect(wave: np.ndarray, effect: str, rng: np.random.Generator) -> np.ndarray:
    """Synthetic room reverb (decaying noise impulse response) and/or a telephone channel (300-3400 Hz, 8 kHz)."""
    n = len(wave)
    if "reverb" in effect:
        t60 = rng.uniform(0.2, 0.9)
        tt = np.arange(int(t60 * SR)) / SR
        ir = rng.standard_normal(len(tt)) * np.exp(-6.9 * tt / t60)
        ir[0] = 1.0 / rng.uniform(0.3, 1.0)  # direct path
        wet = np.fft.irfft(np.fft.rfft(wave, 2 * n + len(ir)) * np.fft.rfft(ir, 2 * n + len(ir)))[:n]
        wave = wet / (np.max(np.abs(wet)) + 1e-9) * (np.max(np.abs(wave)) + 1e-9)
    if "telephone" in effect:
        spec = np.fft.rfft(wave)
        f = np.fft.rfftfreq(n, 1 / SR)
        spec[(f < 300) | (f > 3400)] = 0
        wave = resample(resample(np.fft.irfft(spec, n).astype(np.float32), SR, 8000), 8000, SR)[:n]
        wave = np.pad(wave, (0, n - len(wave)))
    return wave.astype(np.float32)


def add_floor(wave: np.ndarray, floor_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add coloured background noise ``floor_db`` below the signal's active RMS (real recordings are never silent)."""
    active = wave[np.abs(wave) > 0.05 * (np.max(np.abs(wave)) + 1e-9)]
    level = np.sqrt(np.mean(active**2)) if active.size else 1e-3
    noise = rng.standard_normal(len(wave))
    spec = np.fft.rfft(noise) / np.maximum(np.fft.rfftfreq(len(wave), 1 / SR), 20.0) ** rng.uniform(0, 1)
    noise = np.fft.irfft(spec, len(wave))
    noise /= np.sqrt(np.mean(noise**2)) + 1e-12
    return (wave + noise * level * 10 ** (floor_db / 20)).astype(np.float32)


def finish(wave: np.ndarray, gain_db: float, label: str = "") -> np.ndarray:
    """Peak-normalise then apply the clip's gain (loudness variety); silence keeps its absolute level."""
    peak = 1.0 if label == "silence" else (float(np.max(np.abs(wave))) or 1.0)
    return (wave / peak * 10 ** (gain_db / 20)).astype(np.float32)


def render_speech(spec: dict, n: int, tmp: str) -> np.ndarray:
    path = os.path.join(tmp, spec["id"] + ".wav")
    speed, stretch = spec["speed"], spec["stretch"]
    for _ in range(4):
        if spec["engine"] == "flite":
            subprocess.run(["flite", "-voice", spec["flite_voice"], "--setf", f"duration_stretch={stretch}", "-t",
                            spec["words"], "-o", path], check=True, capture_output=True)
        else:
            subprocess.run(["espeak-ng", "-v", spec["voice"], "-s", str(speed), "-p", str(spec["pitch"]), "-w", path,
                            spec["words"]], check=True, capture_output=True)
        wave, sr = sf.read(path, dtype="float32")
        wave = resample(np.trim_zeros(wave), sr, SR)
        if len(wave) <= n - SR // 10:
            break
        speed, stretch = speed + 40, stretch * 0.75
    os.unlink(path)
    return wave


NOISE_SLOPES = {"white noise": 0.0, "pink noise": 0.5, "brown noise": 1.0}  # amplitude ~ 1 / f**slope


def coloured_noise(n: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped to an amplitude spectrum of 1/f**slope (white 0, pink 0.5, brown 1), peak 0.5."""
    spec = np.fft.rfft(rng.standard_normal(n)) / np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0) ** slope
    wave = np.fft.irfft(spec, n)
    return (0.5 * wave / (np.max(np.abs(wave)) + 1e-12)).astype(np.float32)


def render_synth(spec: dict, n: int, tmp: str, rng: np.random.Generator) -> np.ndarray:
    d, f, label = n / SR, spec["freq"], spec["label"]
    effect = {
        "sine tone": ["synth", f"{d * rng.uniform(0.4, 1):.2f}", "sine", str(f)],
        "square wave": ["synth", f"{d * rng.uniform(0.4, 1):.2f}", "square", str(f)],
        "sawtooth wave": ["synth", f"{d * rng.uniform(0.4, 1):.2f}", "sawtooth", str(f)],
        "rising chirp": ["synth", f"{d * rng.uniform(0.5, 1):.2f}", "sine", f"{f / 3:.0f}-{min(f * 2.5, 7500):.0f}"],
        "falling chirp": ["synth", f"{d * rng.uniform(0.5, 1):.2f}", "sine", f"{min(f * 2.5, 7500):.0f}-{f / 3:.0f}"],
    }.get(label)
    if label == "beeps":
        on = rng.uniform(0.05, 0.3)
        off = rng.uniform(0.05, 0.3)
        effect = ["synth", f"{on:.3f}", "sine", str(f), "pad", "0", f"{off:.3f}", "repeat", str(int(d / (on + off)) + 1)]
    if label == "clicks":
        period = rng.uniform(0.12, 0.6)
        effect = ["synth", "0.004", rng.choice(["square", "whitenoise", "sine"]), str(f * 2), "pad", "0",
                  f"{period:.3f}", "repeat", str(int(d / period) + 1)]
    if label == "silence":
        return (rng.standard_normal(n) * 10 ** rng.uniform(-5, -3.5)).astype(np.float32)
    if label in NOISE_SLOPES:  # numpy, not sox: sox's noise generators are seeded afresh on every run
        return coloured_noise(n, NOISE_SLOPES[label], rng)
    path = os.path.join(tmp, spec["id"] + ".wav")
    # -R: repeatable output (sox otherwise adds random dither, so two runs would differ)
    subprocess.run(["sox", "-R", "-n", "-r", str(SR), "-b", "16", "-c", "1", path, *effect], check=True, capture_output=True)
    wave, _ = sf.read(path, dtype="float32")
    os.unlink(path)
    return wave


def _render_one(job: tuple[dict, int, str]) -> tuple[str, np.ndarray]:
    spec, n, tmp = job
    rng = np.random.default_rng(spec["seed"])
    wave = render_speech(spec, n, tmp) if spec["kind"] == "speech" else render_synth(spec, n, tmp, rng)
    wave = fit(wave, n, rng)
    if spec.get("effect", "none") != "none":
        wave = apply_effect(wave, spec["effect"], rng)
    return spec["id"], wave if spec["label"] == "silence" else add_floor(wave, spec["floor_db"], rng)


# ---- MIDI (tiny writer) + fluidsynth --------------------------------------------------------------
def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def write_midi(path: str, events: list[tuple[float, bytes]], tpq: int = 480, bpm: int = 120) -> None:
    """Type-0 MIDI file from (time_seconds, message bytes) events."""
    ticks_per_s = tpq * bpm / 60
    track, last = bytearray(), 0
    track += _vlq(0) + b"\xff\x51\x03" + (60_000_000 // bpm).to_bytes(3, "big")
    for t, msg in sorted(events, key=lambda e: e[0]):
        tick = int(round(t * ticks_per_s))
        track += _vlq(tick - last) + msg
        last = tick
    track += _vlq(0) + b"\xff\x2f\x00"
    with open(path, "wb") as fh:
        fh.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq))
        fh.write(b"MTrk" + struct.pack(">I", len(track)) + bytes(track))


def instrument_events(spec: dict, t0: float, dur: float, rng: random.Random) -> list[tuple[float, bytes]]:
    """Note events of one instrument clip starting at ``t0`` and ending before ``t0 + dur``."""
    ev: list[tuple[float, bytes]] = []

    def note(ch: int, t: float, length: float, pitch: int, vel: int) -> None:
        ev.append((t, bytes([0x90 | ch, pitch, vel])))
        ev.append((t + length, bytes([0x80 | ch, pitch, 0])))

    start = t0 + rng.uniform(0, 0.3)
    end = t0 + dur - 0.25
    if spec["pattern"] in ("drums", "claps"):
        step = 60 / rng.randint(80, 160) / 2
        t, k = start, 0
        while t < end:
            if spec["pattern"] == "claps":
                if k % 2 == 0 or rng.random() < 0.3:
                    note(9, t, 0.1, 39, rng.randint(70, 120))
            else:
                if k % 4 == 0 or rng.random() < 0.15:
                    note(9, t, 0.1, 36, rng.randint(80, 120))
                if k % 4 == 2:
                    note(9, t, 0.1, rng.choice([38, 40]), rng.randint(80, 120))
                note(9, t, 0.1, rng.choice([42, 42, 46, 51]), rng.randint(50, 100))
            t += step
            k += 1
        return ev
    lo, hi = RANGES.get(spec["label"], (48, 84))
    ev.append((t0, bytes([0xC0, spec["program"]])))
    root = rng.randint(lo, max(lo, hi - 12))
    scale = [0, 2, 4, 5, 7, 9, 11, 12] if rng.random() < 0.6 else [0, 2, 3, 5, 7, 8, 10, 12]
    vel = rng.randint(60, 120)
    t = start
    if spec["pattern"] == "note":
        note(0, t, end - t, root + rng.choice(scale), vel)
    elif spec["pattern"] == "chords":
        while t < end - 0.3:
            length = min(rng.uniform(0.6, 1.2), end - t)
            base = root + rng.choice(scale[:5])
            for iv in (0, 4 if rng.random() < 0.5 else 3, 7):
                note(0, t, length, min(base + iv, 127), vel)
            t += length
    else:
        step_range = (0.18, 0.5) if spec["pattern"] == "melody" else (0.08, 0.16)
        while t < end - 0.1:
            length = min(rng.uniform(*step_range), end - t)
            note(0, t, length * 0.95, root + rng.choice(scale), max(30, min(127, vel + rng.randint(-15, 15))))
            t += length
    ev.append((t0 + dur - 0.01, bytes([0xB0, 123, 0])))  # all notes off
    return ev


def render_instruments(specs: list[dict], n: int, tmp: str, seed: int, slot: float = 4.5) -> dict[str, np.ndarray]:
    """Render all instrument clips in one MIDI file (one slot each) with fluidsynth and cut them apart."""
    if not specs:
        return {}
    rng = random.Random(seed + 2)
    dur = n / SR
    events: list[tuple[float, bytes]] = []
    for i, spec in enumerate(specs):
        events += instrument_events(spec, i * slot, dur, rng)
    mid, wav = os.path.join(tmp, f"chunk{seed}.mid"), os.path.join(tmp, f"chunk{seed}.wav")
    write_midi(mid, events)
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(SR), "-F", wav, SOUNDFONT, mid], check=True,
                   capture_output=True)
    audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    audio = resample(audio.mean(axis=1), sr, SR)
    slot_n = int(slot * SR)
    out = {}
    for i, spec in enumerate(specs):
        clip = audio[i * slot_n : i * slot_n + n]
        clip = np.pad(clip, (0, n - len(clip)))
        crng = np.random.default_rng(spec["seed"])
        out[spec["id"]] = add_floor(apply_effect(clip, spec.get("effect", "none"), crng), spec["floor_db"], crng)
    return out


def _render_chunk(job: tuple[list[dict], int, str, int]) -> dict[str, np.ndarray]:
    specs, n, tmp, seed = job
    return render_instruments(specs, n, tmp, seed)


# ---- main ----------------------------------------------------------------------------------------
def mix(a: np.ndarray, b: np.ndarray, snr_db: float) -> np.ndarray:
    """``a`` plus ``b`` scaled so that a's RMS is ``snr_db`` above b's."""
    ra = np.sqrt(np.mean(a**2)) + 1e-8
    rb = np.sqrt(np.mean(b**2)) + 1e-8
    return a + b * (ra / rb) * 10 ** (-snr_db / 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/_data/audio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-speech", type=int, default=1500)
    ap.add_argument("--n-instrument", type=int, default=1300)
    ap.add_argument("--n-synth", type=int, default=700)
    ap.add_argument("--n-mix", type=int, default=700)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--test-frac", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    for tool in ("espeak-ng", "flite", "sox", "fluidsynth"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install -y --no-install-recommends espeak-ng flite sox fluidsynth fluid-soundfont-gm")
    out = Path(args.out)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    n = int(args.duration * SR)
    t_start = time.time()
    specs = make_specs(args)
    waves: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp, Pool(args.workers) as pool:
        instr = [s for s in specs if s["kind"] == "instrument"]
        chunks = [(instr[i :: args.workers * 2], n, tmp, args.seed * 100 + i) for i in range(args.workers * 2)]
        pending = pool.map_async(_render_chunk, chunks)
        others = [(s, n, tmp) for s in specs if s["kind"] != "instrument"]
        for sid, wave in pool.imap_unordered(_render_one, others, chunksize=16):
            waves[sid] = wave
        for part in pending.get():
            waves.update(part)
    print(f"rendered {len(waves)} base clips in {time.time() - t_start:.0f}s", flush=True)
    mixes = make_mix_specs(specs, args.n_mix, args.seed)
    for m in mixes:
        rng = np.random.default_rng(m["seed"])
        waves[m["id"]] = mix(waves[m["a"]], np.roll(waves[m["b"]], int(rng.integers(0, n))), m["snr"])
    rows = []
    for spec in specs + mixes:
        fname = f"wav/{spec['id']}.wav"
        sf.write(out / fname, finish(waves[spec["id"]], spec["gain_db"], spec["label"]), SR, subtype="PCM_16")
        rows.append({k: spec[k] for k in ("caption", "label", "kind", "words", "split")} | {"file": fname})
    with open(out / "captions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "caption", "label", "kind", "words", "split"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} clips + captions.csv to {out} in {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
