"""Command line (docs/contract.md §1): parse, load config, hand over."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__


def _print_errors(path: str, errors) -> None:
    for e in errors:
        print(f"{path}: {e}", file=sys.stderr)


def cmd_check(args) -> int:
    from .config import load_file, warnings_of
    from .state import policy_classes

    config, errors, text = load_file(args.config)
    if not errors:
        errors = policy_classes(config)[1]
    if errors:
        _print_errors(args.config, errors)
        print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    warnings = warnings_of(config, text)
    for w in warnings:
        print(f"{args.config}: warning: {w}", file=sys.stderr)
    print(f"{args.config}: ok ({len(config.routes)} routes, {len(config.upstreams)} upstreams"
          + (f", {len(warnings)} warning(s))" if warnings else ")"))
    return 0


def cmd_monitoring(args) -> int:
    """`tollhouse monitoring rules -c FILE [-o DIR]` (docs/monitoring.md)."""
    from .config import load_file
    from .monitoring.rules import write_rules

    config, errors, _ = load_file(args.config)
    if errors:
        _print_errors(args.config, errors)
        print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
        return 1
    for path in write_rules(config, args.output):
        print(path)
    return 0


def cmd_run(args) -> int:
    from .config import load_file, load_text, warnings_of
    from .server.lifecycle import run_gateway
    from .state import policy_classes

    config, errors, text = load_file(args.config)
    if not errors and args.workers:
        text = _text_with_workers(text, args.workers)
        config, errors = load_text(text)
    if not errors:
        errors = policy_classes(config)[1]
    if errors:
        _print_errors(args.config, errors)
        return 1
    for w in warnings_of(config, text):
        logging.getLogger("tollhouse.config").warning("%s: %s", args.config, w)
    return run_gateway(config, os.path.abspath(args.config), text)


def _text_with_workers(text: str, workers: int) -> str:
    """`--workers N` wins over the file; workers get the same text."""
    import re

    if re.search(r"(?m)^workers\s*:", text):
        return re.sub(r"(?m)^workers\s*:.*$", f"workers: {workers}", text)
    return text + f"\nworkers: {workers}\n"


def cmd_token(args) -> int:
    """Mint a signed JWT for development (docs/contract.md §1)."""
    from .policies.auth.tokens import mint

    try:
        print(mint(secret=args.secret, key_file=args.key, subject=args.sub, scope=args.scope, tier=args.tier,
                   ttl=args.ttl, issuer=args.iss, audience=args.aud, kid=args.kid, algorithm=args.alg,
                   roles=args.role))
    except (ValueError, OSError) as e:
        print(f"tollhouse token: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    from .demo.run import run_demo

    return run_demo()


def cmd_worker(args) -> int:
    from .server.lifecycle import worker_main

    return worker_main(int(args.index), int(args.fd), args.path)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("TOLLHOUSE_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="tollhouse", description="An API gateway in Python.")
    p.add_argument("--version", action="version", version=f"tollhouse {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the gateway from a config file")
    r.add_argument("-c", "--config", required=True)
    r.add_argument("--workers", type=int, default=None, help="override `workers` from the config")
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("check", help="validate a config file")
    c.add_argument("-c", "--config", required=True)
    c.set_defaults(func=cmd_check)
    t = sub.add_parser("token", help="mint a signed JWT for development")
    key = t.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret", help="HMAC secret (HS256 unless --alg)")
    key.add_argument("--key", help="PEM private key file (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA)")
    t.add_argument("--sub", required=True, help="subject: the consumer id")
    t.add_argument("--scope", default="", help="space-separated scopes")
    t.add_argument("--tier", default="", help="tier claim")
    t.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    t.add_argument("--ttl", default="1h", help="lifetime: 30s, 15m, 1h, 1d")
    t.add_argument("--iss", default="", help="issuer")
    t.add_argument("--aud", default="", help="audience")
    t.add_argument("--kid", default="", help="key id header")
    t.add_argument("--alg", default="", help="algorithm (default from the key)")
    t.set_defaults(func=cmd_token)
    m = sub.add_parser("monitoring", help="monitoring files from a config")
    msub = m.add_subparsers(dest="what", required=True)
    mr = msub.add_parser("rules", help="write Prometheus rules (SLOs, thresholds, escalation, anomalies) and a "
                                       "Grafana SLO dashboard")
    mr.add_argument("-c", "--config", required=True)
    mr.add_argument("-o", "--output", default=".", help="the directory to write them into (default: .)")
    mr.set_defaults(func=cmd_monitoring)
    d = sub.add_parser("demo", help="run the embedded demo (no Redis, no config needed)")
    d.set_defaults(func=cmd_demo)
    w = sub.add_parser("_worker", help=argparse.SUPPRESS)
    w.add_argument("index")
    w.add_argument("fd")
    w.add_argument("path", nargs="?", default="")
    w.set_defaults(func=cmd_worker)
    args = p.parse_args(argv)
    from .builtins import install

    install()   # the registry gets the built-in kinds, sections and protocols from here, the top
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 0
