"""Network subcommands: simulate, send, relay, receive.

``add_commands(subparsers)`` registers them on the main parser; each sets ``func``. Heavy
imports happen inside the commands, so ``relay`` starts without torch.

    speechcodec simulate talk.wav out.wav --kbps 3 --loss 10% --burst 3 --jitter 30ms --seed 1
    speechcodec receive out.wav --listen 127.0.0.1:5004
    speechcodec relay --listen 127.0.0.1:5005 --to 127.0.0.1:5004 --loss 5% --jitter 20ms
    speechcodec send talk.wav --to 127.0.0.1:5005 --kbps 3

With ``--key-file FILE`` (or the ``SPEECHCODEC_KEY`` environment variable) at both ends, every
packet carries an authentication tag. A key is never taken from the command line.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys

from .cliutil import UserError, check_kbps, check_output, print_json
from .packet import MAX_FEC_DEPTH

__all__ = ["add_commands", "build_channel", "format_ignored", "parse_duration",
           "parse_fraction"]

# Kept in sync with receiver.CONCEALMENTS (not imported: that module needs torch).
CONCEALMENTS = ("interpolate", "repeat", "none")
RECEIVER_PORT = 5004
RELAY_PORT = 5005


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


def parse_fraction(text: str, what: str = "value") -> float:
    """``"10%"`` or ``"0.1"`` -> 0.1."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            value = float(t[:-1]) / 100.0
        else:
            value = float(t)
            if value > 1.0:
                raise UserError(f"{what} '{text}': give a percentage like 10% or a fraction "
                                "like 0.1")
    except ValueError:
        raise UserError(f"{what} '{text}': expected a percentage like 10% or a fraction "
                        "like 0.1") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{what} '{text}' must be between 0% and 100%")
    return value


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*$")


def parse_duration(text: str, what: str = "duration") -> float:
    """``"30ms"``, ``"0.03s"`` or ``"30"`` (milliseconds) -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise UserError(f"{what} '{text}': expected a time like 30ms or 0.03s")
    value = float(m.group(1))
    return value if m.group(2) == "s" else value / 1000.0


def _address(text: str):
    from .transport import parse_address

    try:
        return parse_address(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def _add_channel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("channel")
    g.add_argument("--loss", default="0%", help="mean packet loss, e.g. 10%% (default 0%%)")
    g.add_argument("--burst", type=float, default=1.0,
                   help="mean loss burst in packets; 1 = independent losses, more = "
                        "Gilbert-Elliott bursts (default 1)")
    g.add_argument("--pattern", help="fixed loss pattern instead of --loss: x = lost, . = kept, "
                                     "e.g. '....xx..x' (repeats)")
    g.add_argument("--delay", default="0ms", help="fixed network delay (default 0ms)")
    g.add_argument("--jitter", default="0ms",
                   help="extra delay drawn uniformly from [0, JITTER]; reorders packets")
    g.add_argument("--duplicate", default="0%", help="probability a packet arrives twice")
    g.add_argument("--ber", type=float, default=0.0, help="bit error rate, e.g. 1e-4")
    g.add_argument("--seed", type=int, default=0, help="random seed of the channel (default 0)")


def build_channel(args):
    """The channel the ``--loss/--burst/--pattern/--delay/--jitter/...`` options describe."""
    from .channel import Chain, FixedPattern, make_channel

    delay = parse_duration(args.delay, "--delay")
    jitter = parse_duration(args.jitter, "--jitter")
    try:
        if args.pattern:
            rest = make_channel(0.0, 1.0, delay, jitter,
                                parse_fraction(args.duplicate, "--duplicate"), args.ber,
                                args.seed)
            return Chain(FixedPattern(args.pattern, repeat=True), rest)
        loss = parse_fraction(args.loss, "--loss")
        if loss >= 1.0:
            raise UserError("--loss must be below 100%")
        return make_channel(loss, args.burst, delay, jitter,
                            parse_fraction(args.duplicate, "--duplicate"), args.ber, args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None


def _add_codec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="shipped model name or model file (default: the base model)")
    p.add_argument("--kbps", type=float, default=3.0, help="payload bitrate (default 3)")
    p.add_argument("--fec", type=int, default=0, metavar="C",
                   help="forward error correction: carry the first C codebooks of the previous "
                        "packet (default 0: off)")
    p.add_argument("--fec-depth", type=int, default=1, metavar="D",
                   help="with --fec: copy the previous D packets, not only the last one, so a "
                        "burst of D losses is recovered (default 1, at most "
                        f"{MAX_FEC_DEPTH}; the playout delay must cover D packets)")
    p.add_argument("--frames-per-packet", type=int, default=1, metavar="F",
                   help="20 ms frames per packet (default 1)")


def _add_key_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", metavar="FILE",
                   help="authenticate packets with the pre-shared key in FILE (at least 16 "
                        "bytes, e.g. from 'openssl rand -hex 32'); without it, the key in the "
                        "SPEECHCODEC_KEY environment variable, if set")
    # Never a key on the command line (other users see it in the process list): refused.
    p.add_argument("--key", dest="key_on_command_line", help=argparse.SUPPRESS)


def _key(args) -> bytes | None:
    """The key from --key-file or the environment (and say which), or None."""
    from .transport import KEY_ENV, load_key

    if getattr(args, "key_on_command_line", None) is not None:
        raise UserError("--key: a key on the command line can be read by other users (process "
                        f"list, shell history); put it in a file for --key-file, or in the "
                        f"{KEY_ENV} environment variable")
    try:
        key, where = load_key(args.key_file)
    except ValueError as e:
        raise UserError(str(e)) from None
    if key is not None:
        _say(f"authenticating packets with the key from the {where}")
    return key


def _add_receiver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--playout-delay", default="40ms",
                   help="jitter buffer delay (default 40ms); packets later than this are dropped")
    p.add_argument("--concealment", choices=CONCEALMENTS, default="interpolate",
                   help="lost frames: interpolate towards a later frame already in the jitter "
                        "buffer, else repeat (default); repeat the last latents, fading to "
                        "silence; or none (silence)")


def _codec(args):
    import torch

    from .pretrained import load_codec

    torch.set_num_threads(1)  # one frame at a time: threads cost more than they bring
    return load_codec(args.model)


def _stream_params(codec, args) -> tuple[int, int, int, int]:
    """(codebooks, FEC codebooks, FEC depth, frames per packet), checked."""
    (k,) = check_kbps(codec, args.kbps)
    if not 0 <= args.fec <= k:
        raise UserError(f"--fec must be between 0 and the {k} codebooks sent, got {args.fec}")
    if not 1 <= args.fec_depth <= MAX_FEC_DEPTH:
        raise UserError(f"--fec-depth must be in 1..{MAX_FEC_DEPTH}, got {args.fec_depth}")
    if args.fec_depth > 1 and not args.fec:
        raise UserError("--fec-depth needs --fec C (the codebooks each copy carries)")
    if not 1 <= args.frames_per_packet <= 255:
        raise UserError("--frames-per-packet must be in 1..255")
    return k, args.fec, args.fec_depth, args.frames_per_packet


def _load(path):
    from .audio import load_audio

    return load_audio(path)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _signals_as_interrupt() -> None:
    """Let SIGTERM end a call the way Ctrl-C does, so outputs are finished properly. SIGINT is
    set back to Python's Ctrl-C handler too: a shell's background job inherits SIGINT ignored,
    and `kill -INT` would otherwise leave the call running."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread
        pass


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_simulate(args) -> int:
    from .audio import resample_to_length, write_wav
    from .receiver import format_report, simulate

    out = check_output(args.output, args.force)
    channel = build_channel(args)
    key = _key(args)
    audio = _load(args.input)
    codec = _codec(args)
    k, fec, depth, fpp = _stream_params(codec, args)
    playout = parse_duration(args.playout_delay, "--playout-delay")
    reach = depth * fpp * codec.cfg.frame_size / codec.cfg.sample_rate
    if fec and playout < reach - 1e-9:
        _say(f"note: the oldest FEC copies arrive {reach * 1000:.0f} ms after their frame; "
             f"with --playout-delay {playout * 1000:.0f}ms some come too late to be used")
    result = simulate(codec, audio.samples, channel=channel, num_codebooks=k, fec_codebooks=fec,
                      fec_depth=depth, frames_per_packet=fpp, playout_delay=playout,
                      concealment=args.concealment, key=key)
    y, rate = result.samples, codec.cfg.sample_rate
    if audio.original_sample_rate != rate:
        y = resample_to_length(y, rate, audio.original_sample_rate, audio.original_num_samples)
        rate = audio.original_sample_rate
    write_wav(out, y, rate)
    if args.json:
        d = result.as_dict()
        d.update(input=str(args.input), output=str(out), output_samples=len(y),
                 output_sample_rate=rate)
        print_json(d)
    else:
        print(format_report(result))
        print(f"wrote        {out} ({len(y)} samples at {rate} Hz)")
    return 0


def cmd_send(args) -> int:
    from .transport import send_udp

    to = _address(args.to)
    key = _key(args)
    audio = _load(args.input)
    codec = _codec(args)
    k, fec, depth, fpp = _stream_params(codec, args)
    mode = "as fast as possible" if args.fast else "in real time"
    _say(f"sending {args.input} to {to[0]}:{to[1]} at {args.kbps:g} kbps, {mode}")
    _signals_as_interrupt()
    try:
        r = send_udp(codec, audio.samples, k, to, fec_codebooks=fec, fec_depth=depth,
                     frames_per_packet=fpp, fast=args.fast,
                     original_sample_rate=audio.original_sample_rate,
                     original_num_samples=audio.original_num_samples, key=key)
    except OSError as e:
        raise UserError(f"cannot send to {to[0]}:{to[1]}: {e.strerror or e}") from None
    if args.json:
        print_json(r.as_dict())
    else:
        print(f"sent         {r.packets_sent} packets + END, {r.duration_s:.2f} s of audio in "
              f"{r.wall_s:.2f} s" + ("; interrupted, so END announced only that much"
                                     if r.interrupted else ""))
        print(f"rate         {_rate_text(r.payload_kbps, r.fec_kbps, r.auth_kbps)}; "
              f"packets {r.packet_kbps:.2f} kbps; RTP/UDP/IPv4 would add "
              f"{r.rtp_udp_ipv4_kbps:.2f} kbps")
    return 0


def _rate_text(payload: float, fec: float, auth: float) -> str:
    text = f"payload {payload:.2f} kbps + FEC {fec:.2f} kbps"
    return text + (f" + authentication {auth:.2f} kbps" if auth else "")


def cmd_relay(args) -> int:
    from .transport import relay_udp

    listen, to = _address(args.listen), _address(args.to)
    channel = build_channel(args)
    garbage = parse_fraction(args.garbage, "--garbage")
    _signals_as_interrupt()
    try:
        r = relay_udp(listen, to, channel, timeout=args.timeout, wait=args.wait,
                      stop_after_end=not args.keep_running, garbage=garbage, seed=args.seed,
                      on_ready=lambda a: _say(f"relay listening on {a[0]}:{a[1]}, forwarding "
                                              f"to {to[0]}:{to[1]} through {channel!r}"))
    except OSError as e:
        raise UserError(f"cannot listen on {listen[0]}:{listen[1]}: {e.strerror or e}") from None
    if args.json:
        print_json(r.as_dict())
    else:
        print(f"relayed      {r.packets_in} packets in, {r.packets_out} out: dropped "
              f"{r.packets_dropped}, duplicated {r.packets_duplicated}, corrupted "
              f"{r.packets_corrupted}; END forwarded {r.end_forwarded}x; stopped by "
              f"{r.stopped_by}")
        if r.garbage_sent:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(r.garbage_sent.items()))
            print(f"garbage      {sum(r.garbage_sent.values())} junk datagrams injected: {kinds}")
    return 0


def cmd_receive(args) -> int:
    import ipaddress
    import socket

    from .receiver import format_quality
    from .transport import parse_peer, receive_udp

    out = check_output(args.output, args.force)
    listen = _address(args.listen)
    key = _key(args)
    peer = None
    if args.peer:
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        try:
            peer = parse_peer(args.peer, family)
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        loopback = ipaddress.ip_address(listen[0]).is_loopback
    except ValueError:
        loopback = listen[0] == "localhost"
    if not loopback and key is None:
        _say(f"note: listening on {listen[0]}, beyond this machine, without a key: whoever "
             "sends the first valid packet becomes the peer (see --peer and --key-file)")
    codec = _codec(args)
    playout = parse_duration(args.playout_delay, "--playout-delay")
    ref = _load(args.ref) if args.ref else None
    _signals_as_interrupt()
    try:
        r = receive_udp(codec, listen, out, playout_delay=playout,
                        concealment=args.concealment, use_fec=not args.no_fec,
                        timeout=args.timeout, wait=args.wait, key=key, peer=peer,
                        on_ready=lambda a: _say(f"receiver listening on {a[0]}:{a[1]}, "
                                                f"writing {out}"))
    except OSError as e:
        if e.filename:
            raise UserError(f"{e.filename}: cannot write ({e.strerror or e})") from None
        raise UserError(f"cannot listen on {listen[0]}:{listen[1]}: {e.strerror or e}") from None
    if ref is not None and r.num_samples and r.num_codebooks:
        _score(codec, ref, r)
    s = r.stats
    if args.json:
        print_json(r.as_dict())
        return 0
    sent = "?" if r.packets_sent is None else r.packets_sent
    lost = "?" if r.packets_lost is None else r.packets_lost
    print(f"received     {s.packets_arrived} packets of {sent} sent; lost {lost}, late "
          f"{s.packets_late}, duplicated {s.packets_duplicated}, corrupted "
          f"{s.packets_corrupted}; stopped by {r.stopped_by}")
    print(f"ignored      {format_ignored(s)}")
    print(f"frames       {s.frames_played}: decoded {s.frames_decoded}, recovered by FEC "
          f"{s.frames_recovered_fec}, concealed {s.frames_concealed}")
    if r.rates:
        q = r.rates
        print(f"rate         {_rate_text(q['payload_kbps'], q['fec_kbps'], q['auth_kbps'])}; "
              f"packets {q['packet_kbps']:.2f} kbps; RTP/UDP/IPv4 would add "
              f"{q['rtp_udp_ipv4_kbps']:.2f} kbps")
    print(f"latency      {r.latency_ms:.0f} ms + network = codec {r.codec_latency_ms:.0f} + "
          f"packetization {r.packetization_ms:.0f} + playout {r.playout_delay_ms:.0f}")
    if r.quality is not None:
        print(f"vs original  {format_quality(r.quality)}")
        print(f"vs clean     {format_quality(r.quality_vs_clean)}")
    print(f"wrote        {out} ({r.num_samples} samples at {r.sample_rate} Hz)")
    return 0


def format_ignored(s) -> str:
    """The datagrams a receiver dropped besides late ones, by kind (a ReceiverStats)."""
    return (f"wrong peer {s.packets_wrong_peer}, oversized {s.packets_oversized}, failed "
            f"authentication {s.packets_auth_failed}, malformed {s.packets_malformed}, other "
            f"model {s.packets_rejected}, out of window {s.packets_out_of_window}, "
            f"replayed/duplicate {s.packets_duplicated}")


def _score(codec, ref, r) -> None:
    """Quality of the received file against the reference input and its lossless decode."""
    from .audio import load_audio
    from .metrics import compute_quality
    from .pipeline import roundtrip_samples

    got = load_audio(r.output).samples
    x = ref.samples
    clean = roundtrip_samples(codec, x, r.num_codebooks)
    rate = codec.cfg.sample_rate
    r.quality = compute_quality(x, got, rate)
    r.quality_vs_clean = compute_quality(clean, got, rate)


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


def _timeouts(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--timeout", type=float, default=5.0,
                   help=f"stop {what} this many seconds after the last packet (default 5)")
    p.add_argument("--wait", type=float,
                   help="give up if no packet arrives this many seconds after start "
                        "(default: wait)")


def add_commands(sub) -> None:
    """Register simulate, send, relay and receive on an argparse subparsers object."""
    p = sub.add_parser("simulate", help="send a file through a simulated lossy network",
                       description="Encode INPUT, packetize it, pass the packets through a "
                                   "seeded channel model and a receiver with jitter buffer, "
                                   "concealment and FEC, and write what arrives to OUTPUT.")
    p.add_argument("input", help="audio file to send")
    p.add_argument("output", help="WAV file to write (same rate and length as the input)")
    _add_codec_args(p)
    _add_receiver_args(p)
    _add_channel_args(p)
    _add_key_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUTPUT")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("send", help="send a file over UDP (the phone that talks)")
    p.add_argument("input", help="audio file to send")
    p.add_argument("--to", default=f"127.0.0.1:{RECEIVER_PORT}",
                   help=f"receiver or relay address (default 127.0.0.1:{RECEIVER_PORT})")
    _add_codec_args(p)
    p.add_argument("--fast", action="store_true",
                   help="send as fast as it encodes instead of in real time")
    _add_key_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("relay", help="forward UDP packets through a lossy channel model",
                       description="A network in a box: every packet received on --listen "
                                   "passes the channel model and is forwarded to --to.")
    p.add_argument("--listen", default=f"127.0.0.1:{RELAY_PORT}",
                   help=f"address to receive on (default 127.0.0.1:{RELAY_PORT})")
    p.add_argument("--to", default=f"127.0.0.1:{RECEIVER_PORT}",
                   help=f"address to forward to (default 127.0.0.1:{RECEIVER_PORT})")
    _add_channel_args(p)
    p.add_argument("--garbage", default="0%",
                   help="a hostile network: for this share of the packets also send the "
                        "receiver a junk datagram (random, oversized, malformed, replayed or "
                        "far-future), e.g. 1%% (default 0%%)")
    _timeouts(p, "relaying")
    p.add_argument("--keep-running", action="store_true",
                   help="keep relaying after the end of a stream")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_relay)

    p = sub.add_parser("receive", help="receive a UDP stream and write it as WAV (the phone "
                                       "that listens)")
    p.add_argument("output", help="WAV file, written as the audio plays")
    p.add_argument("--listen", default=f"127.0.0.1:{RECEIVER_PORT}",
                   help=f"address to receive on (default 127.0.0.1:{RECEIVER_PORT})")
    p.add_argument("--model", help="shipped model name or model file (default: the base model)")
    _add_receiver_args(p)
    p.add_argument("--no-fec", action="store_true", help="ignore FEC copies in the packets")
    p.add_argument("--peer", metavar="HOST[:PORT]",
                   help="accept packets only from this address (default: from the source of "
                        "the first valid packet)")
    _add_key_args(p)
    p.add_argument("--ref", help="the sender's input: also report quality against it")
    _timeouts(p, "receiving")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUTPUT")
    p.set_defaults(func=cmd_receive)
