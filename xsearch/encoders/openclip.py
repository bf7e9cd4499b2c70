"""``openclip:`` encoders: open_clip CLIP models (text + image) from local weights only.

Accepted arguments (the part after ``openclip:``):

- ``<arch>/<tag>``            built-in architecture + pretrained tag, e.g. ``ViT-B-32/laion2b_s34b_b79k``: taken from
                              the Hugging Face / open_clip cache, else downloaded there on first use by open_clip
                              (with its progress bar); offline (``HF_HUB_OFFLINE=1``, ``xsearch --offline``,
                              ``offline=True``) a missing file fails at once with a one-line "how to get it",
- ``<arch>/<checkpoint>``     built-in architecture + a local checkpoint file (.pt/.bin/.pth/.safetensors), e.g.
                              ``ViT-B-32//abs/path/model.pt`` or ``RN50/weights/rn50.pt`` (relative to the cwd),
- ``<config.json>/<checkpoint>``  a custom architecture: an open_clip model config JSON (``embed_dim``,
                              ``vision_cfg``, ``text_cfg``) + checkpoint, e.g. ``/m/tiny.json//m/tiny.pt``,
- ``<folder>``                a folder holding ``open_clip_config.json`` + ``open_clip_model.safetensors`` (or .bin),
                              the layout open_clip pushes to the hub (open_clip's ``local-dir:``),
- ``hf-hub:<org>/<repo>``     such a folder from the Hugging Face cache (downloaded on first use unless offline).

The encoder id is ``openclip:`` + the argument with every path made absolute, so it recreates the same model
from any working directory.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import BadInput, MissingDependency, ModelLoadError
from .base import Encoder, l2_normalize, pick_device

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

PREFIX = "openclip:"
HUB_PREFIX = "hf-hub:"
LOCAL_CONFIG = "open_clip_config.json"
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")  # what a pretrained tag may override
OFFLINE_ENV = "HF_HUB_OFFLINE"  # huggingface_hub's own switch; `xsearch --offline` sets it
TRUE_VALUES = ("1", "true", "yes", "on")
HF_URL = "https://huggingface.co/{repo}/resolve/main/{file}"


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``HF_HUB_OFFLINE`` is set to a true value."""
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in TRUE_VALUES


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise MissingDependency("openclip: encoders need open_clip_torch: pip install open_clip_torch") from None
    return open_clip


@dataclass(frozen=True)
class Plan:
    """How to build one model with open_clip, resolved to local files (picklable, cheap)."""

    id: str
    model_name: str  # open_clip model name: built-in / registered config name, or 'local-dir:<folder>'
    checkpoint: str | None = None  # local weights file (None: the local-dir folder holds them)
    config_file: str | None = None  # custom config JSON to register with open_clip before building
    quick_gelu: bool = False
    preprocess: dict[str, Any] = field(default_factory=dict)  # a pretrained tag's PREPROCESS_KEYS values

    def model_config(self) -> dict[str, Any]:
        """The architecture config (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
        open_clip = _open_clip()
        if self.model_name.startswith("local-dir:"):
            return _read_json(Path(self.model_name[len("local-dir:"):]) / LOCAL_CONFIG).get("model_cfg", {})
        return open_clip.get_model_config(self.model_name) or {}


# ---- argument parsing ---------------------------------------------------------------------------
def resolve(arg: str, offline: bool | None = None) -> Plan:
    """Turn the text after ``openclip:`` into a :class:`Plan` of local files, downloading a pretrained tag's or hub
    repo's weights on first use unless offline; ``ModelLoadError`` (one line) if impossible."""
    arg = arg.strip()
    if arg.startswith(HUB_PREFIX):
        return Plan(PREFIX + arg, "local-dir:" + _hub_folder(arg[len(HUB_PREFIX):], arg, is_offline(offline)))
    if arg.startswith("local-dir:"):
        arg = arg[len("local-dir:"):]
    if Path(arg).is_dir():
        return _folder_plan(Path(arg))
    lower = arg.lower()
    if ".json/" in lower:
        cut = lower.index(".json/") + len(".json")
        return _config_plan(Path(arg[:cut]), arg[cut + 1:], arg)
    if lower.endswith(".json"):
        raise ModelLoadError(f"openclip:{arg}: a config JSON needs weights: openclip:<config.json>/<checkpoint path>")
    arch, sep, weights = arg.partition("/")
    if not sep or not weights:
        raise ModelLoadError(f"openclip:{arg}: expected <architecture>/<pretrained tag or checkpoint path>, "
                             f"a config .json/<checkpoint> or a folder with {LOCAL_CONFIG}")
    return _builtin_plan(arch, weights, arg, is_offline(offline))


def _folder_plan(folder: Path) -> Plan:
    folder = folder.resolve()
    if not (folder / LOCAL_CONFIG).is_file():
        raise ModelLoadError(f"{folder}: not an open_clip model folder (no {LOCAL_CONFIG})")
    cfg = _read_json(folder / LOCAL_CONFIG)
    if "model_cfg" not in cfg:
        raise ModelLoadError(f"{folder / LOCAL_CONFIG}: no 'model_cfg' entry")
    if not any(any(folder.glob(ext)) for ext in ("*.safetensors", "*.bin", "*.pth")):
        raise ModelLoadError(f"{folder}: no weights (open_clip_model.safetensors / open_clip_pytorch_model.bin)")
    return Plan(PREFIX + str(folder), "local-dir:" + str(folder))


def _config_plan(config: Path, weights: str, arg: str) -> Plan:
    if not config.is_file():
        raise ModelLoadError(f"{config}: open_clip model config not found (from openclip:{arg})")
    cfg = _read_json(config)
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelLoadError(f"{config}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    open_clip = _open_clip()
    name = config.stem
    known = open_clip.get_model_config(name)
    if known is not None and known != cfg:
        raise ModelLoadError(f"{config}: name '{name}' clashes with another open_clip architecture; rename the file")
    ckpt = _checkpoint(weights, arg)
    config = config.resolve()
    return Plan(f"{PREFIX}{config}/{ckpt}", name, checkpoint=ckpt, config_file=str(config))


def _builtin_plan(arch: str, weights: str, arg: str, offline: bool) -> Plan:
    open_clip = _open_clip()
    if open_clip.get_model_config(arch) is None:
        raise ModelLoadError(f"openclip:{arg}: unknown open_clip architecture '{arch}' "
                             f"(see open_clip.list_models(), or pass a config .json)")
    tag_cfg = open_clip.get_pretrained_cfg(arch, weights)
    if tag_cfg:
        local = _cached_tag_weights(tag_cfg) or _download_tag_weights(tag_cfg, arch, weights, arg, offline)
        preprocess = {k: tag_cfg[k] for k in PREPROCESS_KEYS if tag_cfg.get(k) is not None}
        return Plan(PREFIX + arg, arch, checkpoint=local, quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                    preprocess=preprocess)
    ckpt = _checkpoint(weights, arg, arch)
    return Plan(f"{PREFIX}{arch}/{ckpt}", arch, checkpoint=ckpt)


def _checkpoint(weights: str, arg: str, arch: str | None = None) -> str:
    path = Path(weights).expanduser()
    if not path.is_file():
        tags = ""
        if arch is not None:
            known = _open_clip().list_pretrained_tags_by_model(arch)
            listed = ", ".join(known[:5]) + (f", ... ({len(known)} in all)" if len(known) > 5 else "")
            tags = f" nor a pretrained tag of {arch} ({listed or 'none'})"
        raise ModelLoadError(f"openclip:{arg}: checkpoint '{weights}' is not a file{tags}")
    return str(path.resolve())


def _cached_tag_weights(tag_cfg: dict[str, Any]) -> str | None:
    """Local file of a pretrained tag's weights (HF cache, then open_clip's URL cache), never downloading."""
    if tag_cfg.get("file"):
        return str(tag_cfg["file"]) if os.path.isfile(tag_cfg["file"]) else None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        names = [filename]
        if filename == "open_clip_pytorch_model.bin":  # open_clip prefers the safetensors twin, as here
            names.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = tag_cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


def _tag_source(tag_cfg: dict[str, Any]) -> tuple[str, str]:
    """(where a pretrained tag's weights come from, the file name to look for there)."""
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # "org/repo/" (trailing slash): open_clip's default file name
        filename = filename or "open_clip_pytorch_model.bin"
        return HF_URL.format(repo=repo, file=filename), filename
    url = tag_cfg.get("url", "")
    return url, os.path.basename(url)


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url``'s server cannot be reached (one quick HEAD, proxies honoured), or None if it answers at all.

    huggingface_hub retries a refused connection for ~25 s per file; this probe makes "no network" fail at once."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # the server answered (401/404/...): the network works, the download decides
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return " ".join(str(getattr(exc, "reason", exc)).split())[:120] or type(exc).__name__
    return None


def _download_tag_weights(tag_cfg: dict[str, Any], arch: str, tag: str, arg: str, offline: bool) -> str:
    """Download a pretrained tag's weights into the HF / open_clip cache with open_clip (progress bar on stderr)."""
    url, filename = _tag_source(tag_cfg)
    get_it = (f"download {url} and use openclip:{arch}//path/to/{filename}, or run once with network access "
              f"(without HF_HUB_OFFLINE / --offline) to fill the cache")
    if offline:
        raise ModelLoadError(f"openclip:{arg}: weights of pretrained tag '{tag}' are not in the local cache and "
                             f"downloads are off; {get_it}")
    unreachable = _unreachable(url)
    if unreachable:
        raise ModelLoadError(f"openclip:{arg}: weights of pretrained tag '{tag}' are not in the local cache and "
                             f"there is no network ({unreachable}); {get_it}")
    log.info("openclip:%s: downloading the weights of pretrained tag '%s' (first use)", arg, tag)
    try:
        path = _open_clip().pretrained.download_pretrained(tag_cfg)  # HF cache (or ~/.cache/clip), tqdm bar
    except Exception as exc:  # noqa: BLE001 - no network, HTTP errors, disk full: all one line for the user
        reason = " ".join(str(exc).split())[:200]
        raise ModelLoadError(f"openclip:{arg}: cannot download the weights of pretrained tag '{tag}' "
                             f"({type(exc).__name__}: {reason}); {get_it}") from None
    if not path or not os.path.isfile(path):
        raise ModelLoadError(f"openclip:{arg}: download of pretrained tag '{tag}' gave no file; {get_it}")
    return str(path)


def _hub_folder(repo: str, arg: str, offline: bool) -> str:
    """The local snapshot folder of an open_clip hub repo: from the HF cache, else downloaded unless offline."""
    from huggingface_hub import hf_hub_download, snapshot_download

    get_it = (f"download {LOCAL_CONFIG} and the weights from https://huggingface.co/{repo} into one folder and use "
              f"openclip:/path/to/that/folder, or run once with network access (without HF_HUB_OFFLINE / --offline)")
    try:
        folder = snapshot_download(repo, local_files_only=True)
    except Exception:  # noqa: BLE001 - any hub failure means "not cached"
        if offline:
            raise ModelLoadError(f"openclip:{arg}: not in the local Hugging Face cache and downloads are off; "
                                 f"{get_it}") from None
        unreachable = _unreachable(HF_URL.format(repo=repo, file=LOCAL_CONFIG))
        if unreachable:
            raise ModelLoadError(f"openclip:{arg}: not in the local Hugging Face cache and there is no network "
                                 f"({unreachable}); {get_it}") from None
        try:
            folder = os.path.dirname(hf_hub_download(repo, LOCAL_CONFIG))
            _open_clip().pretrained.download_pretrained_from_hf(repo)  # safetensors weights if the repo has them
        except Exception as exc:  # noqa: BLE001
            reason = " ".join(str(exc).split())[:200]
            raise ModelLoadError(f"openclip:{arg}: cannot download from the Hugging Face hub "
                                 f"({type(exc).__name__}: {reason}); {get_it}") from None
    return str(_folder_plan(Path(folder)).model_name[len("local-dir:"):])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


# ---- building -----------------------------------------------------------------------------------
def build(plan: Plan, device: str) -> tuple[Any, Any, Any]:
    """``(model in eval mode, eval image transform, tokenizer)`` for ``plan``; ``ModelLoadError`` on failure."""
    open_clip = _open_clip()
    if plan.config_file and open_clip.get_model_config(plan.model_name) is None:
        open_clip.add_model_config(plan.config_file)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            plan.model_name, pretrained=plan.checkpoint, device=device, force_quick_gelu=plan.quick_gelu,
            require_pretrained=True, pretrained_text=False, pretrained_image=False,
            **{f"image_{k}": v for k, v in plan.preprocess.items() if k in PREPROCESS_KEYS})
        tokenizer = open_clip.get_tokenizer(plan.model_name)
    except Exception as exc:  # noqa: BLE001 - any loader failure means unusable weights
        reason = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"{plan.id}: cannot load open_clip model ({type(exc).__name__}: {reason})") from None
    model.eval()
    return model, preprocess, tokenizer


class OpenClipEncoder(Encoder):
    """An open_clip CLIP model: text and images in its ``embed_dim`` space."""

    modalities = frozenset({"text", "image"})

    def __init__(self, plan: Plan, device: str | None = None) -> None:
        self.plan = plan
        self.id = plan.id
        self.device_pref = device
        self._lock = threading.RLock()
        self._model, self.preprocess, self._tokenizer = build(plan, self.device)
        self.dim = int(plan.model_config().get("embed_dim") or self._probe_dim())

    @property
    def device(self) -> str:
        return pick_device(self.device_pref)

    def _probe_dim(self) -> int:
        return int(self._encode_tokens(self._tokenizer([""])).shape[1])

    def _parts(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:  # unpickled copy: reload lazily
                self._model, self.preprocess, self._tokenizer = build(self.plan, self.device)
            return self._model, self._tokenizer

    # ---- text -------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str) or any(not isinstance(t, str) for t in texts):
            raise BadInput("encode_text takes a list of strings")
        _, tokenizer = self._parts()
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            out.append(self._encode_tokens(tokenizer(list(texts[start : start + batch_size]))))
        return l2_normalize(np.concatenate(out))

    def _encode_tokens(self, tokens: "torch.Tensor") -> np.ndarray:
        import torch

        model, _ = self._parts()
        with torch.no_grad():
            return model.encode_text(tokens.to(self.device)).float().cpu().numpy()

    # ---- images -----------------------------------------------------------------------------
    def preprocess_image(self, image: "Image.Image") -> "torch.Tensor":
        return self.preprocess(image)

    def encode_image_batch(self, batch: "torch.Tensor") -> np.ndarray:
        import torch

        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BadInput(f"image batch must be (n, 3, H, W), got {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        model, _ = self._parts()
        with torch.no_grad():
            out = model.encode_image(batch.to(self.device, dtype=torch.float32))
        return l2_normalize(out.float().cpu().numpy())

    # ---- pickling (decode workers get the transform, not the weights) -------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan, "id": self.id, "dim": self.dim, "device_pref": self.device_pref,
                "preprocess": self.preprocess}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._model = self._tokenizer = None


def load(arg: str, device: str | None = None, offline: bool | None = None) -> OpenClipEncoder:
    """Build the encoder ``openclip:<arg>`` (see the module docstring for the forms of ``arg``); ``offline=True``
    (default: ``HF_HUB_OFFLINE``) never downloads."""
    _open_clip()
    return OpenClipEncoder(resolve(arg, offline), device)
