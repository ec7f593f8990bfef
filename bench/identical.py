"""Answers before and after a change, byte for byte: the reliability corpus (status and body,
the request id aside) and Set5 at x2, x3 and x4 (the image bytes), through the in-process app.

    python -m bench.identical --out after.json
    python -m bench.identical --compare before.json after.json

Run it from another checkout (a git worktree of an older commit, with this file copied in)
to record the other side; `--compare` prints what differs and exits 1 if anything does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from pathlib import Path

from tests.helpers import make_app, running
from tests.reliability.corpus import cases

SET5 = Path(__file__).resolve().parent.parent / "tests" / "data" / "Set5"
MAX_BODY = 2_000_000


def _digest(status: int, content: bytes, ctype: str) -> str:
    if ctype.startswith("application/json"):
        body = json.loads(content)
        body.pop("request_id", None)
        content = json.dumps(body, sort_keys=True).encode()
    return f"{status} {hashlib.sha256(content).hexdigest()[:16]}"


async def record() -> dict[str, str]:
    out: dict[str, str] = {}
    async with running(make_app(max_body_bytes=MAX_BODY)) as c:
        for path in ("/upscale", "/v1/jobs"):
            for case in cases(MAX_BODY):
                if case.status < 400:
                    continue  # the corpus's good cases make jobs: ids differ each run
                r = await c.post(f"{path}?{case.query}", content=case.body, headers=case.headers)
                out[f"{path} {case.family}/{case.name}"] = _digest(
                    r.status_code, r.content, r.headers.get("content-type", ""))
        for image in sorted(SET5.glob("*.png")):
            for scale in (2, 3, 4):
                r = await c.post(f"/upscale?scale={scale}", content=image.read_bytes(),
                                 headers={"content-type": "image/png"})
                out[f"Set5 {image.name} x{scale}"] = _digest(
                    r.status_code, r.content, r.headers.get("content-type", ""))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", help="write this checkout's answers here")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = p.parse_args()
    if args.out:
        answers = asyncio.run(record())
        Path(args.out).write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
        print(f"{len(answers)} answers written to {args.out}")
    if args.compare:
        before, after = (json.loads(Path(f).read_text()) for f in args.compare)
        keys = sorted(set(before) | set(after))
        differ = [k for k in keys if before.get(k) != after.get(k)]
        for k in differ:
            print(f"DIFFERS {k}: {before.get(k)} -> {after.get(k)}")
        print(f"{len(keys) - len(differ)} of {len(keys)} answers identical")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
