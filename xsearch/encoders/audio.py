"""Audio tower: resampling and log-mel features in plain torch, a small CNN into the shared 384-d space.

``AudioTower`` loads the weights shipped in ``xsearch/encoders/weights/audio_tower.safetensors`` (trained by
``benchmarks/train_audio.py`` against frozen MiniLM caption embeddings) and embeds clips of any length:
the clip is resampled to 16 kHz, cut into overlapping windows, each window embedded, the window embeddings
mean-pooled and L2-normalised.

When the config has ``lite0_rows`` > 0, each window is also seen by the frozen ImageNet EfficientNet-Lite0 that
xsearch-mini ships for images: its log-mel, resized to a ``lite0_rows``-row "image", goes through Lite0, the pooled
feature maps through a small trained head (``Lite0Head``, ``benchmarks/lite0_audio.py``), and the window vector is
``normalise(w * tower + (1 - w) * head)`` with ``w`` the head's ``tower_weight`` (both unit vectors).
"""
from __future__ import annotations

import json
import math
import threading
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
    lite0_rows: int = 0  # > 0: the EfficientNet-Lite0 branch sees the log-mel resized to this many rows (0: none)
    lite0_hidden: int = 1024  # its head's hidden width

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
        self.lite0_head = Lite0Head(LITE0_FEATURES, cfg.lite0_hidden, cfg.dim) if cfg.lite0_rows > 0 else None

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) log-mel -> (batch, dim) unnormalised embeddings."""
        x = self.blocks(self.stem(self.bn0(mel)))
        return self.head(torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1))


# ---- the EfficientNet-Lite0 branch ---------------------------------------------------------------
LITE0_STAGE = 10  # the block (112 channels, stride 16) whose output is pooled besides the final 1280-channel map
LITE0_FEATURES = 2 * 1280 + 2 * 112
LITE0_TOP_DB = 80.0  # dynamic range of the mel image


def mel_image(mel: torch.Tensor, rows: int) -> torch.Tensor:
    """(b, n_mels, t) natural-log mels -> (b, 3, rows, t) in [-1, 1] (Lite0's input range): the top 80 dB of each
    window, low bands at the bottom, replicated to 3 channels (channels-last, as Lite0 is laid out)."""
    x = mel.float()
    if rows != x.shape[1]:
        x = F.interpolate(x[:, None], size=(rows, x.shape[2]), mode="bilinear", align_corners=False)[:, 0]
    top = x.amax(dim=(1, 2), keepdim=True)
    x = ((x - top) / (LITE0_TOP_DB * math.log(10) / 10)).clamp(-1, 0) * 2 + 1
    return x.flip(1)[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


def _pool_map(x: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, 2c): mean over frequency, then mean and max over time."""
    x = x.mean(dim=2)
    return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1)


def lite0_features(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Frozen Lite0 (eval mode) on mel images -> (b, ``LITE0_FEATURES``): pooled head map, then pooled block 10."""
    x = model._swish(model._bn0(model._conv_stem(img)))
    mid = img
    for idx, block in enumerate(model._blocks):
        x = block(x, drop_connect_rate=None)
        if idx == LITE0_STAGE:
            mid = _pool_map(x)
    x = model._swish(model._bn1(model._conv_head(x)))
    return torch.cat([_pool_map(x), mid], dim=1)


class Lite0Head(nn.Module):
    """Standardised pooled Lite0 features -> MLP -> ``dim``; ``tower_weight`` is the TC-ResNet's share in the fusion."""

    def __init__(self, d_in: int, hidden: int, dim: int, dropout: float = 0.2, tower_weight: float = 0.5):
        super().__init__()
        self.register_buffer("mu", torch.zeros(d_in))
        self.register_buffer("sd", torch.ones(d_in))
        self.register_buffer("tower_weight", torch.tensor(float(tower_weight)))  # saved (and fingerprinted) with the weights
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats.float() - self.mu) / self.sd)


# ---- the wrapper ---------------------------------------------------------------------------------
class AudioTower:
    """Embeds audio clips with a trained ``AudioNet``; windows long clips and mean-pools their embeddings."""

    def __init__(self, net: AudioNet, device: str = "cpu"):
        self.net = net.to(device).eval()
        self.cfg = net.cfg
        self.device = device
        self.dim = net.cfg.dim
        self._lite0: nn.Module | None = None  # the frozen EfficientNet-Lite0, loaded on the first window
        self._lock = threading.Lock()

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
                out[chunk] = self.embed_mels(log_mel(batch, self.cfg)).cpu().numpy()
        return l2_normalize(out)

    @torch.inference_mode()
    def embed_mels(self, mel: torch.Tensor) -> torch.Tensor:
        """(b, n_mels, frames) log-mels -> (b, dim) unit vectors: the tower, fused with the Lite0 branch when configured."""
        vec = F.normalize(self.net(mel).float(), dim=-1)
        head = self.net.lite0_head
        if head is None:
            return vec
        side = F.normalize(head(lite0_features(self.lite0(), mel_image(mel, self.cfg.lite0_rows))), dim=-1)
        w = head.tower_weight.float()
        return F.normalize(w * vec + (1 - w) * side, dim=-1)

    def __getstate__(self) -> dict:
        """Pickle without the lock and the (re-loadable) Lite0 backbone."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_lite0")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lite0=None, _lock=threading.Lock())

    def lite0(self) -> nn.Module:
        """The frozen EfficientNet-Lite0 of xsearch-mini's image path (its pip package), loaded once."""
        with self._lock:
            if self._lite0 is None:
                from .mini import load_efficientnet

                self._lite0 = load_efficientnet(self.device)
            return self._lite0

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
