"""A stage stand-in for the store's contention and crash tests: publishes one version of a kind.

Writes FILES files of ~64 KiB each, sleeping between them, and touches MARKER once the build has begun.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gpt2cli.artifacts import Store
from gpt2cli.errors import Gpt2Error


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True)
    parser.add_argument("--kind", default="corpus")
    parser.add_argument("--param", default="a")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--marker")
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--resumable", action="store_true")
    args = parser.parse_args()

    def build(draft):
        if args.marker:
            Path(args.marker).write_text("resumed" if draft.resumed else "fresh")
        done = sorted(p.name for p in draft.dir.glob("part-*"))
        for i in range(args.files):
            name = f"part-{i:03d}"
            if name in done:
                continue
            time.sleep(args.sleep)
            (draft.dir / name).write_bytes(bytes([i % 256]) * 65536)
        return {"files_written": args.files - len(done), "param": args.param}

    try:
        result = Store(args.home).produce(
            args.kind,
            params={"param": args.param},
            inputs=[],
            build=build,
            force=args.force,
            wait=args.wait,
            resumable=args.resumable,
        )
    except Gpt2Error as e:
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    print(result.artifact.ref, "reused" if result.reused else "built")


if __name__ == "__main__":
    main()
