"""``python -m benchmarks [--quick] [--cifar10] [--only NAME ...]``: run the benchmarks in turn.

The speed suite (indexing, model, search, cold start) always runs; other benchmark modules
in this folder run only when listed in EXTRA_MODULES (or named with --only). ``--quick``
runs each with short settings; ``--cifar10`` adds the long peak-memory run over the 50,000
cifar10 training images.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import traceback

from ._common import Skip

SPEED = ["bench_indexing", "bench_model", "bench_search", "bench_coldstart"]
# Other benchmark modules to run with `make bench`: each has run(quick: bool).
EXTRA_MODULES: list[str] = []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short settings (for development)")
    ap.add_argument("--cifar10", action="store_true", help="also index the 50,000 cifar10 images (long): peak memory")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these modules (e.g. bench_search)")
    args = ap.parse_args(argv)
    names = args.only or SPEED + EXTRA_MODULES
    print(f"imagespace benchmarks: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"Python {platform.python_version()}, {platform.machine()}"
          f"{', quick settings' if args.quick else ''}", flush=True)
    failed = 0
    for name in names:
        t = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            if name == "bench_indexing":
                module.run(quick=args.quick, cifar10=args.cifar10)
            else:
                module.run(quick=args.quick)
        except Skip as e:
            print(f"  skipped {name}: {e}", flush=True)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            failed += 1
            traceback.print_exc()
        print(f"  ({name}: {time.perf_counter() - t:.0f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
