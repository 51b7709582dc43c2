"""Write a contact sheet of phantoms: `python -m aurad_models.phantom [OUT.png] [--n 32] [--size 256] [--seed 0]`."""

from __future__ import annotations

import argparse
import logging

from aurad_models.phantom.contact_sheet import write_contact_sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aurad_models.phantom", description=__doc__)
    parser.add_argument("out", nargs="?", default="phantom_contact_sheet.png", help="PNG to write")
    parser.add_argument("--n", type=int, default=32, help="number of phantoms")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (64..1024)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--ncols", type=int, default=8, help="tiles per row (each phantom takes two)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_contact_sheet(args.out, n=args.n, size=args.size, seed=args.seed, ncols=args.ncols)


if __name__ == "__main__":
    main()
