"""Fetch an official GMA checkpoint into place (rule `gma_checkpoint`), checking that it loads strictly.

The file is downloaded beside its destination, loaded with pipeline.gma.load_gma (strict keys, shapes,
weights_only) and only then renamed into place. Offline or on any failure, the error names the file,
the source URL and the destination, so it can be put there by hand.

CLI: python -m pipeline.gma_checkpoint --dest weights/gma-sintel.pth [--url URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.flow import GMA_CHECKPOINTS, checkpoint_url, missing_checkpoint_message
from pipeline.io import atomic_file, setup_logging


class CheckpointUnavailable(RuntimeError):
    """The checkpoint could not be fetched or did not load; the message says what to do by hand."""


def fetch_checkpoint(url: str, dest: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` atomically after a strict load with load_gma; returns dest."""
    from pipeline.gma import load_gma
    dest = Path(dest)
    by_hand = f"download {url} yourself and put it at {dest.resolve()}"
    with atomic_file(dest) as tmp:
        try:
            with open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as err:
            raise CheckpointUnavailable(f"GMA checkpoint {dest.name}: could not download {url} "
                                        f"({err}); the machine may be offline: {by_hand}") from err
        try:
            load_gma(tmp)
        except (ValueError, FileNotFoundError) as err:
            raise CheckpointUnavailable(f"GMA checkpoint {dest.name} downloaded from {url} does not load "
                                        f"strictly into pipeline.gma.GMA: {err}; {by_hand}") from err
    return dest


def main(argv: list[str] | None = None) -> None:
    """CLI of rule `gma_checkpoint`."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", required=True, help="where the checkpoint goes (config flow.gma.checkpoint)")
    ap.add_argument("--url", help="source (default: the official repository's file of the same name)")
    args = ap.parse_args(argv)
    log = setup_logging()
    if not args.url and Path(args.dest).name not in GMA_CHECKPOINTS:
        raise CheckpointUnavailable(missing_checkpoint_message(args.dest))
    url = args.url or checkpoint_url(Path(args.dest).name)
    log.info("fetching %s -> %s", url, args.dest)
    fetch_checkpoint(url, args.dest)
    log.info("%s loads strictly; installed at %s", Path(args.dest).name, args.dest)


if __name__ == "__main__":
    main()
