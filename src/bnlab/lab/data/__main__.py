"""``python -m bnlab.lab.data``: list the datasets, or download and verify one.

    python -m bnlab.lab.data list
    python -m bnlab.lab.data download mnist [--data-dir DIR] [--base-url URL]
"""
from __future__ import annotations

import argparse
import sys

import torch

from .errors import DataError
from .paths import resolve_data_dir
from .registry import dataset_info, dataset_names, load_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnlab.lab.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the datasets and where their files go")
    dl = sub.add_parser("download", help="download (or check) a dataset's official files")
    dl.add_argument("name", choices=dataset_names())
    dl.add_argument("--data-dir", default=None,
                    help="data directory (default: env BNLAB_DATA, else the user cache dir)")
    dl.add_argument("--base-url", default=None, help="download from this base URL instead")
    args = parser.parse_args(argv)
    if args.command == "list":
        root = resolve_data_dir(None)
        for name in dataset_names():
            info = dataset_info(name)
            where = f"{root / name}" if info.files else f"{root} (cache)"
            print(f"{name:15s} {info.description}  [{where}]")
        return 0
    try:
        for split in ("train", "test"):
            x, y = load_dataset(args.name, split, data_dir=args.data_dir, download=True,
                                dtype=torch.uint8, base_url=args.base_url)
            print(f"{args.name} {split}: {tuple(x.shape)} images, {y.numel()} labels")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
