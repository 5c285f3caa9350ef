"""``bnlab data`` (also ``python -m bnlab.lab.data``): list, fetch and verify the datasets.

    bnlab data list                      where each dataset is (or would be) read from
    bnlab data fetch NAME [--data-dir D] [--base-url U]   download + verify (HTTPS)
    bnlab data verify NAME [--data-dir D]                 check the files on disk, no network
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import local
from .errors import DataError
from .paths import resolve_data_dir, system_dirs
from .registry import dataset_info, dataset_names, load_dataset


def _where(name: str, data_dir) -> str:
    """Where ``name`` is read from now: a folder, the cache, or "not found"."""
    info = dataset_info(name)
    root = resolve_data_dir(data_dir)
    if not info.files:
        return f"{root} (cache, built on first use)"
    folder = local.find_folder(name, info.files, root)
    if folder is None:
        looked = ", ".join(str(p) for p in (root / name, *system_dirs(name)))
        return f"not found (looked in {looked})"
    return str(folder)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the rest of the CLI's style), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ls = sub.add_parser("list", help="list the datasets and where their files are read from")
    for cmd, text in (("fetch", "download (if missing) and verify a dataset's official files"),
                      ("download", "same as fetch"),
                      ("verify", "verify the files on disk (no network)")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("name", choices=dataset_names())
        p.add_argument("--data-dir", default=None,
                       help="data directory (default: env BNLAB_DATA, else the user cache dir)")
        if cmd != "verify":
            p.add_argument("--base-url", default=None, help="download from this base URL instead")
    ls.add_argument("--data-dir", default=None, help="data directory to look in")
    return parser


def main(argv: list[str] | None = None, prog: str = "bnlab data") -> int:
    """Run the command; returns the exit status (0 ok, 1 a data problem, 2 usage via argparse)."""
    args = _parser(prog).parse_args(argv)
    if args.command == "list":
        for name in dataset_names():
            info = dataset_info(name)
            print(f"{name:15s} {info.description}\n{'':15s} -> {_where(name, args.data_dir)}")
        return 0
    download = args.command in ("fetch", "download")
    try:
        for split in ("train", "test"):
            x, y = load_dataset(args.name, split, data_dir=args.data_dir, download=download,
                                dtype=torch.uint8, base_url=getattr(args, "base_url", None))
            print(f"{args.name} {split}: {tuple(x.shape)} images, {y.numel()} labels, "
                  f"{torch.bincount(y).numel()} classes: verified")
    except DataError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    if args.name in ("mnist", "fashion-mnist"):
        print(f"read from {_where(args.name, args.data_dir)}")  # data dir or system copy
    return 0

