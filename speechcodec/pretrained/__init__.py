"""Shipped model weights: a registry of release files and their SHA-256 hashes.

A release file is loaded only if its hash matches the one recorded here, so a corrupted or
substituted weights file is refused instead of producing wrong audio.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGISTRY = HERE / "registry.json"
DEFAULT_MODEL = "speechcodec-base-v20"


class ModelError(Exception):
    """A model that cannot be found, or whose file does not match its recorded hash."""


def registry() -> dict:
    if not REGISTRY.exists():
        return {}
    return json.loads(REGISTRY.read_text())


def model_path(name: str) -> tuple[Path, str | None]:
    """(file, expected SHA-256 or None) for a registered model name or a file path."""
    reg = registry()
    if name in reg:
        return HERE / reg[name]["file"], reg[name]["sha256"]
    path = Path(name)
    if path.exists():
        return path, None
    known = ", ".join(sorted(reg)) or "none"
    raise ModelError(f"unknown model '{name}' (shipped models: {known}; or give a file path)")


@lru_cache(maxsize=4)
def _load(name: str):
    from ..model import Codec

    path, expected = model_path(name)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror}") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ModelError(f"model file {path} is damaged or replaced: SHA-256 {digest[:16]}..., "
                         f"expected {expected[:16]}...")
    try:
        return Codec.from_release_bytes(data)
    except Exception as e:  # a file that is not a release at all
        raise ModelError(f"{path}: not a speechcodec model file ({e})") from None


def load_codec(name: str | None = None):
    """Load a shipped model by name (default: the base model) or a release file by path."""
    return _load(name or DEFAULT_MODEL)
