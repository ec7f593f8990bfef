"""lsrcnn-upscale IN... --out DIR [--scale S | --width W | --height H] [--model auto|NAME]
[--kind auto|clean|photo] [--format png|jpeg|webp] [--quality Q] [--url URL | --local]

Upscales files, folders (recursively, keeping their subfolders) and globs (`**` recursive)
into DIR, through a running service's jobs API (`--url`, default the local one) or
in-process with `--local`. Files whose result exists and is newer are skipped, so a rerun
resumes. Exit status 1 if any file failed, with a summary of which and why; 2 for a
command line that names nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from app.cli import client, files


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lsrcnn-upscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IN", help="files, folders or globs")
    p.add_argument("--out", required=True, type=Path, help="folder for the results")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="2, 3, 4, or fractional up to 4 "
                      "(default: the service's default scale)")
    size.add_argument("--width", type=int, help="target width (with --height: exact size)")
    p.add_argument("--height", type=int, help="target height")
    p.add_argument("--model", default="auto", help="auto, or a model by name (the service's "
                   "GET /v1/models lists them)")
    p.add_argument("--kind", default="auto", choices=("auto", "clean", "photo"))
    p.add_argument("--format", choices=("png", "jpeg", "webp"), default=None,
                   help="output format (default: the input's where writable, else png)")
    p.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality, 1-100")
    p.add_argument("--strip-metadata", action="store_true", help="drop EXIF and XMP")
    p.add_argument("--name", default=files.DEFAULT_NAME, help="output name pattern with "
                   "{stem}, {size} (x2, x1.5, w1920, 1920x1080) and {ext} "
                   f"(default {files.DEFAULT_NAME})")
    p.add_argument("--overwrite", action="store_true", help="redo files already done")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default=os.environ.get("LSRCNN_URL", "http://127.0.0.1:8000"),
                       help="the service (default $LSRCNN_URL or http://127.0.0.1:8000)")
    where.add_argument("--local", action="store_true", help="run the bundled models in this "
                       "process, no service needed (needs the cpu extra)")
    p.add_argument("--jobs", type=int, default=4, help="files in flight at once")
    p.add_argument("--api-key", default=os.environ.get("LSRCNN_API_KEY"),
                   help="bearer token, where the service has one ($LSRCNN_API_KEY)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.scale is not None and args.height is not None:
        p.error("give --scale, or --width and/or --height, not both")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def query_of(args: argparse.Namespace) -> dict[str, str]:
    """The jobs API's query for every file."""
    q = {"kind": args.kind}
    for key in ("scale", "width", "height", "format", "quality"):
        value = getattr(args, key)
        if value is not None:
            q[key] = f"{value:g}" if isinstance(value, float) else str(value)
    if args.model != "auto":
        q["model"] = args.model
    if args.strip_metadata:
        q["metadata"] = "strip"
    return q


async def _main(args: argparse.Namespace, tasks: list[files.Task],
                progress: client.Progress) -> None:
    connect = client.local() if args.local else client.remote(args.url, args.api_key)
    async with connect as http:
        await client.run(http, tasks, query_of(args), args.jobs, progress)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse(argv)
    found, missing = files.expand(args.inputs)
    for arg in missing:
        print(f"lsrcnn-upscale: {arg}: no such file, folder or matching image",
              file=sys.stderr)
    if not found:
        print("lsrcnn-upscale: no images to upscale", file=sys.stderr)
        return 2
    size = files.size_label(args.scale, args.width, args.height)
    tasks = files.plan(found, args.out, args.name, size, args.format)
    todo = [t for t in tasks if args.overwrite or not files.up_to_date(t)]
    skipped = len(tasks) - len(todo)
    bar = tqdm(total=0, unit="tile", desc=f"{len(todo)} files", disable=args.quiet,
               dynamic_ncols=True)
    progress = client.Progress(bar)
    try:
        if todo:
            asyncio.run(_main(args, todo, progress))
    except client.Failed as err:  # the in-process models did not load
        progress.failures = {str(t.source): str(err) for t in todo}
    except KeyboardInterrupt:
        bar.close()
        print("lsrcnn-upscale: interrupted; rerun to resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    failed = progress.failures
    print(f"{progress.written} written, {skipped} already done, {len(failed)} failed "
          f"-> {args.out}", file=sys.stderr)
    for source, why in sorted(failed.items()):
        print(f"  failed {source}: {why}", file=sys.stderr)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
