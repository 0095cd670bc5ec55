"""Command-line interface: thin argparse subcommands over the library."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import CodecConfig, TrainConfig


def _parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """`key=value` pairs -> (CodecConfig overrides, TrainConfig overrides)."""
    codec_fields = {f.name: f for f in dataclasses.fields(CodecConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    codec_kw, train_kw = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got '{item}'")
        field = codec_fields.get(key) or train_fields.get(key)
        if field is None:
            raise ValueError(f"unknown config key '{key}'")
        default = getattr(CodecConfig() if key in codec_fields else TrainConfig(), key)
        if isinstance(default, tuple):
            parsed = tuple(type(default[0])(v) for v in value.split(","))
        elif isinstance(default, bool):
            parsed = value.lower() in ("1", "true", "yes")
        else:
            parsed = type(default)(value)
        (codec_kw if key in codec_fields else train_kw)[key] = parsed
    return codec_kw, train_kw


def cmd_train(args) -> int:
    from .train import train

    codec_kw, train_kw = _parse_overrides(args.set or [])
    if args.steps:
        train_kw["steps"] = args.steps
    path = train(args.data, args.out, valid=args.valid, cfg=CodecConfig(**codec_kw),
                 tc=TrainConfig(**train_kw), resume=args.resume, init=args.init,
                 max_minutes=args.max_minutes)
    print(f"checkpoint: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speechcodec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a codec on a manifest or folder of speech")
    t.add_argument("--data", required=True, help="training manifest (.csv) or folder")
    t.add_argument("--valid", help="validation manifest or folder (periodic metrics)")
    t.add_argument("--out", required=True, help="run folder: checkpoints, logs")
    t.add_argument("--steps", type=int, help="total optimizer steps")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--init", help="warm-start weights: a shipped model name or a file")
    t.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this long")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a CodecConfig or TrainConfig field (repeatable)")
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
