"""speechcodec: a causal neural speech codec with a simulated network between its two ends.

The public API is imported lazily, so torch-free modules (`speechcodec.bitstream`,
`speechcodec.packet`) can be used without importing torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_codec": ("speechcodec.pretrained", "load_codec"),
    "Codec": ("speechcodec.model", "Codec"),
    "CodecConfig": ("speechcodec.config", "CodecConfig"),
    "encode_file": ("speechcodec.api", "encode_file"),
    "decode_file": ("speechcodec.api", "decode_file"),
    "encode_samples": ("speechcodec.pipeline", "encode_samples"),
    "decode_codes": ("speechcodec.pipeline", "decode_codes"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'speechcodec' has no attribute '{name}'")
