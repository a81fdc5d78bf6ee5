"""Serve the emulator from the shell:

    python -m tests.fakehub --port PORT --root DIR --user NAME:TOKEN [--user NAME:TOKEN[:read][:org1,org2]] ...

It serves ``http://127.0.0.1:PORT`` until killed (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from tests.fakehub.auth import User
from tests.fakehub.server import Emulator


def parse_user(spec: str) -> User:
    """``NAME:TOKEN[:ROLE[:ORG,ORG...]]`` -> User."""
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected NAME:TOKEN, got {spec!r}")
    role = parts[2] if len(parts) > 2 and parts[2] else "write"
    orgs = tuple(o for o in parts[3].split(",") if o) if len(parts) > 3 else ()
    return User(parts[0], parts[1], role, orgs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakehub", description="Local Hugging Face Hub emulator.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True, help="folder holding repos, commits and Spaces")
    parser.add_argument("--user", type=parse_user, action="append", default=[], help="NAME:TOKEN[:ROLE[:ORGS]]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--switch-delay", type=float, default=1.0, help="seconds a Space hardware switch takes")
    args = parser.parse_args(argv)
    emulator = Emulator(args.root, host=args.host, port=args.port, users=args.user, switch_delay_s=args.switch_delay)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"fakehub serving {emulator.url} (root {args.root})", flush=True)
    try:
        emulator.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.spaces.close()
        emulator._server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
