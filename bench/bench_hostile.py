"""CPU per hostile message class and size: the pipeline (parse + every stage) and the SMTP-time readers.

Issue 18 item 5: any message <= 1 MB must cost < 1 s of CPU in the pipeline and < 100 ms in the SMTP
process, and the cost must grow linearly with size. Each class (tests/hostile.py) is measured at n, 2n
and 4n; ``ratio`` is cost(4n)/cost(n): ~4 is linear, ~16 quadratic. Each class runs in its own
process with a timeout, so a quadratic one on old code cannot hold the run up.

    python bench/bench_hostile.py                 # all classes
    python bench/bench_hostile.py from_quotes mime_parts --stages   # with the per-stage breakdown
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def measure(name: str, scale: float) -> dict:
    from tests.hostile import CLASSES, pipeline_context, pipeline_cost, smtp_cost
    gen, n = CLASSES[name]
    ctx = pipeline_context()
    out: dict = {"class": name, "sizes": []}
    for k in (1, 2, 4):
        raw = gen(max(1, int(n * k * scale)))
        stages: dict[str, float] = {}
        readers: dict[str, float] = {}
        p = min(pipeline_cost(raw, ctx, stages) for _ in range(2))
        s = min(smtp_cost(raw, readers) for _ in range(2))
        out["sizes"].append({"bytes": len(raw), "pipeline": p, "smtp": s,
                             "stages": {k2: v for k2, v in stages.items() if v >= 0.005},
                             "readers": {k2: v for k2, v in readers.items() if v >= 0.001}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("classes", nargs="*")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every class's n (default 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per class (default 60)")
    ap.add_argument("--stages", action="store_true", help="print the stages/readers that cost >= 5/1 ms")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.scale)))
        return
    from tests.hostile import CLASSES
    names = args.classes or list(CLASSES)
    print(f"{'class':<20} {'size':>9} {'pipeline s':>11} {'smtp ms':>8}   (sizes n, 2n, 4n)  ratio 4n/n")
    for name in names:
        try:
            res = subprocess.run([sys.executable, __file__, "--one", name, "--scale", str(args.scale)],
                                 capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            print(f"{name:<20} over {args.timeout:.0f} s: super-linear (or a very slow machine)")
            continue
        if res.returncode:
            print(f"{name:<20} failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(res.stdout)
        sz = r["sizes"]
        for i, s in enumerate(sz):
            ratio = ""
            if i == 2:
                rp = s["pipeline"] / max(sz[0]["pipeline"], 1e-4)
                rs = s["smtp"] / max(sz[0]["smtp"], 1e-4)
                ratio = f"   x{rp:5.1f} / x{rs:5.1f}"
            print(f"{name if i == 0 else '':<20} {s['bytes']:>9} {s['pipeline']:>11.3f} {s['smtp'] * 1000:>8.1f}{ratio}")
            if args.stages and (s["stages"] or s["readers"]):
                print(f"{'':<31} " + " ".join(f"{k}={v:.3f}" for k, v in {**s["stages"], **s["readers"]}.items()))


if __name__ == "__main__":
    main()
