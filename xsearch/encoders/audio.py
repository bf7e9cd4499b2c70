"""Audio tower: resampling and log-mel features in plain torch, a small CNN into the shared 384-d space.

``AudioTower`` loads the weights shipped in ``xsearch/encoders/weights/audio_tower.safetensors`` (trained by
``benchmarks/train_audio.py`` against frozen MiniLM caption embeddings) and embeds clips of any length:
the clip is resampled to 16 kHz, cut into overlapping windows, each window embedded, the window embeddings
mean-pooled and L2-normalised.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput, ModelLoadError
from .base import AudioInput, l2_normalize

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "audio_tower.safetensors"
CONFIG_FILE = WEIGHTS_DIR / "audio_tower.json"


@dataclass(frozen=True)
class AudioConfig:
    """Feature and tower hyper-parameters (saved as JSON beside the weights)."""

    sample_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8_000.0
    target_rms: float = 0.05  # each window is scaled to this RMS (loudness invariance)
    channels: tuple[int, ...] = (96, 96, 128, 192)
    hidden: int = 512
    dim: int = 384
    window_s: float = 4.0  # inference windows for long clips
    hop_s: float = 2.0
    min_s: float = 3.0  # shorter clips are centred in this much audio, as the (3 s) training clips were
    pad_floor_db: float = -40.0  # ... over a faint noise floor this far below the clip (training clips are never silent)
    max_windows: int = 256  # longer recordings (> ~8.5 min) are sampled at this many evenly spaced windows

    @classmethod
    def from_json(cls, text: str) -> "AudioConfig":
        raw = json.loads(text)
        raw["channels"] = tuple(raw.get("channels", cls.channels))
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---- signal processing ---------------------------------------------------------------------------
MAX_KERNEL = 1 << 20  # polyphase kernel elements (4 MB); rate pairs that would need more use a close ratio
RATIO_TOLERANCE = 1e-3  # ... within 0.1% of the exact one (a pitch shift of under 2 cents)


def resample(wave: np.ndarray, orig_sr: int, new_sr: int, zeros: int = 16) -> np.ndarray:
    """Band-limited resampling with a Hann-windowed sinc kernel (polyphase, via conv1d), memory bounded by
    ``MAX_KERNEL`` whatever the two rates are."""
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == new_sr or wave.size == 0:
        return wave
    up, down = resample_ratio(int(orig_sr), int(new_sr), zeros)
    kernel, width = _sinc_kernel(up, down, zeros)
    x = torch.from_numpy(wave)[None, None]
    x = F.pad(x, (width, width + down))
    y = F.conv1d(x, kernel, stride=down)  # (1, up, frames)
    y = y.transpose(1, 2).reshape(-1)
    n_out = int(math.ceil(up * wave.size / down))
    return y[:n_out].numpy().astype(np.float32)


def resample_ratio(orig_sr: int, new_sr: int, zeros: int = 16) -> tuple[int, int]:
    """(up, down): the exact ratio when its kernel fits ``MAX_KERNEL``, else the simplest fraction within
    ``RATIO_TOLERANCE`` of it (odd rates such as 4001 or 44101 Hz would need kernels of gigabytes)."""
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    if _kernel_size(up, down, zeros) <= MAX_KERNEL:
        return up, down
    exact = Fraction(new_sr, orig_sr)
    best, limit = (1, max(1, round(orig_sr / new_sr))), 1
    while limit <= down:
        approx = exact.limit_denominator(limit)
        limit *= 2
        if approx.numerator == 0:
            continue
        if _kernel_size(approx.numerator, approx.denominator, zeros) > MAX_KERNEL:
            break
        best = approx.numerator, approx.denominator
        if abs(approx / exact - 1) <= RATIO_TOLERANCE:
            break
    return best


def _kernel_size(up: int, down: int, zeros: int) -> int:
    cutoff = min(1.0, up / down) * 0.97
    return up * (2 * int(math.ceil(zeros / cutoff)) + down + 1)


@lru_cache(maxsize=16)
def _sinc_kernel(up: int, down: int, zeros: int) -> tuple[torch.Tensor, int]:
    """One low-pass sinc filter per output phase, shape (up, 1, taps), and the left padding (input samples) it needs."""
    cutoff = min(1.0, up / down) * 0.97  # fraction of the input Nyquist kept, small guard band
    width = int(math.ceil(zeros / cutoff))
    taps = 2 * width + down + 1
    phase = torch.arange(up, dtype=torch.float64)[:, None] * down / up
    t = phase + width - torch.arange(taps, dtype=torch.float64)[None]  # output time minus input time
    window = torch.where(t.abs() <= width, torch.cos(math.pi * t / (2 * width)) ** 2, torch.zeros_like(t))
    kernel = cutoff * torch.sinc(cutoff * t) * window
    return kernel.to(torch.float32)[:, None], width


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_filterbank(cfg: AudioConfig) -> torch.Tensor:
    """Triangular HTK-mel filters, shape (n_fft // 2 + 1, n_mels), area-normalised (Slaney style)."""
    freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    mel_pts = np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2)
    hz = _mel_to_hz(mel_pts)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    fb = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (upper - lower))
    return torch.from_numpy(fb.T.astype(np.float32))


def mel_band_of(freq_hz: float, cfg: AudioConfig = AudioConfig()) -> int:
    """Index of the mel band whose centre is nearest ``freq_hz``."""
    centers = _mel_to_hz(np.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2))[1:-1]
    return int(np.argmin(np.abs(centers - freq_hz)))


def log_mel(waves: torch.Tensor, cfg: AudioConfig = AudioConfig()) -> torch.Tensor:
    """(batch, samples) float waveforms at ``cfg.sample_rate`` -> (batch, n_mels, frames) natural-log mel energies."""
    if waves.dim() == 1:
        waves = waves[None]
    window = torch.hann_window(cfg.win_length, device=waves.device)
    spec = torch.stft(
        waves, cfg.n_fft, cfg.hop_length, cfg.win_length, window, center=True, pad_mode="reflect", return_complex=True
    )
    power = spec.real**2 + spec.imag**2  # (batch, freq, frames)
    mel = torch.einsum("bft,fm->bmt", power, mel_filterbank(cfg).to(waves.device))
    return torch.log(mel + 1e-6)


def normalize_loudness(wave: np.ndarray, target_rms: float) -> np.ndarray:
    """Scale to ``target_rms`` (near-silent input is scaled by at most 50x so noise floors stay quiet)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    gain = target_rms / max(rms, target_rms / 50.0)
    return (wave * gain).astype(np.float32)


# ---- the network ---------------------------------------------------------------------------------
class ResBlock1d(nn.Module):
    """Two temporal convolutions (the first strided) with batch norm and a projected skip connection."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 9, stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, 1, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.skip = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class AudioNet(nn.Module):
    """Log-mel -> temporal CNN (mel bands as channels, TC-ResNet style) -> mean+max over time -> MLP to ``dim``."""

    def __init__(self, cfg: AudioConfig = AudioConfig()):
        super().__init__()
        self.cfg = cfg
        c0, *rest = cfg.channels
        self.bn0 = nn.BatchNorm1d(cfg.n_mels)
        self.stem = nn.Sequential(
            nn.Conv1d(cfg.n_mels, c0, 5, 2, 2, bias=False), nn.BatchNorm1d(c0), nn.ReLU(inplace=True)
        )
        blocks, c_in = [], c0
        for c_out in rest:
            blocks.append(ResBlock1d(c_in, c_out))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(2 * c_in, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Linear(cfg.hidden, cfg.dim)
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) log-mel -> (batch, dim) unnormalised embeddings."""
        x = self.blocks(self.stem(self.bn0(mel)))
        return self.head(torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1))


# ---- the wrapper ---------------------------------------------------------------------------------
class AudioTower:
    """Embeds audio clips with a trained ``AudioNet``; windows long clips and mean-pools their embeddings."""

    def __init__(self, net: AudioNet, device: str = "cpu"):
        self.net = net.to(device).eval()
        self.cfg = net.cfg
        self.device = device
        self.dim = net.cfg.dim

    @classmethod
    def load(
        cls, weights: str | Path = WEIGHTS_FILE, config: str | Path | None = None, device: str = "cpu"
    ) -> "AudioTower":
        """Build from a safetensors file and the JSON config beside it."""
        weights = Path(weights)
        config = Path(config) if config else weights.with_suffix(".json")
        try:
            from safetensors.torch import load_file

            cfg = AudioConfig.from_json(config.read_text())
            net = AudioNet(cfg)
            net.load_state_dict(load_file(str(weights)))
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{exc.filename}: audio tower file missing (run benchmarks/train_audio.py)") from None
        except Exception as exc:  # noqa: BLE001 - corrupt or mismatched weights
            raise ModelLoadError(f"{weights}: cannot load audio tower ({str(exc).splitlines()[0]})") from None
        return cls(net, device)

    def windows(self, wave: np.ndarray, sr: int) -> list[np.ndarray]:
        """Resample to the model rate and cut into loudness-normalised windows (the last one aligned to the end)."""
        cfg = self.cfg
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            wave = wave.mean(axis=-1) if wave.ndim == 2 else wave.reshape(-1)
        wave = resample(np.nan_to_num(wave), int(sr), cfg.sample_rate)
        return [normalize_loudness(w, cfg.target_rms) for w in split_windows(wave, cfg)]

    @torch.inference_mode()
    def embed_windows(self, windows: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Embed equal- or unequal-length windows (grouped by length), L2-normalised, in input order."""
        out = np.zeros((len(windows), self.dim), np.float32)
        by_len: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_len.setdefault(len(w), []).append(i)
        for idxs in by_len.values():
            for s in range(0, len(idxs), batch_size):
                chunk = idxs[s : s + batch_size]
                batch = torch.from_numpy(np.stack([windows[i] for i in chunk])).to(self.device)
                out[chunk] = self.net(log_mel(batch, self.cfg)).float().cpu().numpy()
        return l2_normalize(out)

    def encode(self, clips: Sequence[AudioInput], batch_size: int = 32) -> np.ndarray:
        """``(n, dim)`` float32 unit rows for clips given as ``(wave, sr)`` tuples or file paths.

        Windows of several clips are embedded together; pending windows are flushed every few batches so
        memory stays bounded by about one long clip.
        """
        from ..media import load_audio

        pooled = np.zeros((len(clips), self.dim), np.float32)
        pending: list[np.ndarray] = []
        owners: list[int] = []

        def flush() -> None:
            if pending:
                np.add.at(pooled, np.asarray(owners), self.embed_windows(pending, batch_size))
                pending.clear()
                owners.clear()

        for i, clip in enumerate(clips):
            wave, sr = load_audio(clip) if isinstance(clip, (str, Path)) else clip
            if sr is None or int(sr) <= 0:
                raise BadInput(f"audio clip {i}: invalid sample rate {sr!r}")
            ws = self.windows(wave, int(sr))
            pending.extend(ws)
            owners.extend([i] * len(ws))
            if len(pending) >= 4 * batch_size:
                flush()
        flush()
        return l2_normalize(pooled)


def split_windows(wave: np.ndarray, cfg: AudioConfig) -> list[np.ndarray]:
    """Windows of ``window_s`` every ``hop_s`` (last aligned to the end, at most ``max_windows``); short clips padded."""
    win, hop = int(cfg.window_s * cfg.sample_rate), int(cfg.hop_s * cfg.sample_rate)
    min_len = int(cfg.min_s * cfg.sample_rate)
    if len(wave) <= win:
        return [pad_centred(wave, min_len, cfg.pad_floor_db) if len(wave) < min_len else wave]
    starts = list(range(0, len(wave) - win + 1, hop))
    if starts[-1] + win < len(wave):
        starts.append(len(wave) - win)
    if len(starts) > cfg.max_windows:  # very long recordings: evenly spaced windows
        starts = [starts[int(k)] for k in np.linspace(0, len(starts) - 1, cfg.max_windows)]
    return [wave[s : s + win] for s in starts]


def pad_centred(wave: np.ndarray, n: int, floor_db: float) -> np.ndarray:
    """``wave`` centred in ``n`` samples plus white noise ``floor_db`` below its active RMS (deterministic)."""
    out = np.zeros(n, np.float32)
    start = (n - len(wave)) // 2
    out[start : start + len(wave)] = wave
    peak = float(np.max(np.abs(wave))) if len(wave) else 0.0
    active = wave[np.abs(wave) > 0.05 * peak] if peak > 0 else wave[:0]
    if active.size:
        level = float(np.sqrt(np.mean(active.astype(np.float64) ** 2))) * 10 ** (floor_db / 20)
        out += level * np.random.default_rng(len(wave)).standard_normal(n).astype(np.float32)
    return out


_DEFAULT: AudioTower | None = None


def default_tower() -> AudioTower:
    """The shipped tower, loaded once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = AudioTower.load()
    return _DEFAULT
