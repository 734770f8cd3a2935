"""``python -m hiercls.data locate [--no-download]``: print the CIFAR-100 folder a run without
``--data-dir`` reads (stdout: the path alone; stderr: where it came from). Exit 0, 2 when no place holds
the data or the shared archive is bad (one line naming each place tried), 3 when extracting failed on
an OS error (e.g. no space left)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hiercls.data.locate import DataNotFoundError, find_cifar100
from hiercls.storage import EXIT_INPUT, EXIT_OK, EXIT_WRITE, StorageError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 found, 2 not found or a bad archive, 3 a failed write)."""
    parser = argparse.ArgumentParser(prog="python -m hiercls.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    locate = sub.add_parser("locate", help="print the CIFAR-100 folder a run without --data-dir reads")
    locate.add_argument("--no-download", action="store_true", help="never download through torchvision")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        found = find_cifar100(download=not args.no_download)
    except StorageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_WRITE
    except (DataNotFoundError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    print(f"CIFAR-100 from {found.source}: {found.path}", file=sys.stderr)
    print(found.path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
