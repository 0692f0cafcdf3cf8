"""Cold start: wall time of ``imagespace search`` on an existing collection, from process
start to answer, against ``python -c pass`` (the interpreter alone) run in turn with it."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ._common import IMAGESPACE, FLOWERS12, PYTHON, flowers12_split, header, need, row, run_cli, spread


def _wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def run(quick: bool = False) -> None:
    header("cold start: imagespace search, process start to answer")
    need(FLOWERS12)
    db = tempfile.mkdtemp(prefix="imagespace-bench-cold-")
    try:
        run_cli(["index", str(FLOWERS12 / "train"), "--db", db, "--json"])
        test, _ = flowers12_split("test")
        train, _ = flowers12_split("train")
        commands = {
            "python -c pass (baseline)": [PYTHON, "-c", "pass"],
            "python -c 'import imagespace.cli'": [PYTHON, "-c", "import imagespace.cli"],
            "imagespace search IMAGE (decode + model + index)": [*IMAGESPACE, "search", test[0], "--db", db, "--json"],
            "imagespace search --like PATH (stored vector)": [*IMAGESPACE, "search", "--like", train[0], "--db", db, "--json"],
            "imagespace search IMAGE --where 'tag ~ daisy'": [*IMAGESPACE, "search", test[0], "--db", db, "--json",
                                                             "--where", "tag ~ daisy"],
        }
        out = subprocess.run(commands["imagespace search IMAGE (decode + model + index)"], check=True,
                             capture_output=True, text=True).stdout
        assert json.loads(out)["results"], out
        repeats = 3 if quick else 7
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(repeats):  # in turn, so each ratio compares the same machine state
            for name, cmd in commands.items():
                times[name].append(_wall(cmd))
        base = times["python -c pass (baseline)"]
        for name in commands:
            extra = [t - b for t, b in zip(times[name], base)]
            row(name, f"{spread(times[name], '{:.3f}')} s", f"+{statistics.median(extra):.3f} s over the interpreter")
        mods = subprocess.run(
            [PYTHON, "-c", "import sys, runpy; sys.argv=['imagespace','search','--like',%r,'--db',%r,'--json'];\n"
             "import imagespace.cli as c\ntry: c.main()\nexcept SystemExit: pass\n"
             "heavy=[m for m in ('torch','sklearn','scipy','cv2','pandas','pyarrow','transformers','ray','faiss','umap','onnxruntime') if m in sys.modules]\n"
             "print(','.join(heavy) or 'none', file=sys.stderr)" % (train[0], db)],
            capture_output=True, text=True).stderr.strip().splitlines()[-1]
        row("heavy modules a --like search imports", mods)
    finally:
        shutil.rmtree(db, ignore_errors=True)


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
