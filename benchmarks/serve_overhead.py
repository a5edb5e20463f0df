"""The server's own CPU per request: `cvzoo serve`'s app with an engine that answers zeros at once, loaded by wrk with
one preprocessed FP32 tensor per request (KServe v2: Triton's binary format, or JSON numbers with --request json).
Two servers take turns, round by round, so that each round's ratio cancels the machine's drifts: by default uvicorn's
two HTTP implementations (httptools + uvloop, which `cvzoo[serve]` installs, and the pure-Python h11 + asyncio that
uvicorn falls back to without them); with --against REV, this tree's server against the one at git revision REV (both
on httptools + uvloop).

    python benchmarks/serve_overhead.py --out benchmarks/results/serve_overhead.json [--model NAME_OR_ARTIFACT]
    python benchmarks/serve_overhead.py --against 88e2bfe --out benchmarks/results/serve_overhead_vs_88e2bfe.json

The server runs pinned to one core and wrk to another (on a 1-core machine both share it); the server's CPU is read
from /proc over each measured run. Needs Debian's `wrk`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from paired_rounds import median_interval  # this folder is on sys.path when the script runs
from serve_bodies import TENSOR_BODIES
from serve_throughput import port, stat_cpu_s, wait_ready, wrk

IMPLEMENTATIONS = {"httptools": "uvloop", "h11": "asyncio"}  # uvicorn's http= and the loop= it pairs with


def serve_zeros(model: str, http: str, p: int) -> None:
    """The child: the real app and batcher, an engine that returns zeros."""
    import numpy as np
    import uvicorn

    from cvzoo.serve import Served, create_app, resolve
    from cvzoo.serve.batcher import Batcher

    class Zeros:
        def run(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((len(x), 1000), np.float32)

    art = resolve([model], random_init=True)[0]
    app = create_app([Served("m", art, Batcher([Zeros()], 8, 2.0))])
    uvicorn.run(app, host="127.0.0.1", port=p, log_level="warning", http=http, loop=IMPLEMENTATIONS[http])


def one_round(args, variant: dict, size: int, cores: list[int], tmp: Path) -> dict:
    p = port()
    server = subprocess.Popen([sys.executable, __file__, "--child", variant["http"], "--model", args.model,
                               "--port", str(p)], env={**os.environ, "PYTHONPATH": variant["tree"]},
                              preexec_fn=lambda: os.sched_setaffinity(0, cores[:1]))
    url = f"http://127.0.0.1:{p}"
    try:
        wait_ready(server, url)
        body = [TENSOR_BODIES[args.request](size)]
        wrk(url, "m", body, args.connections, args.warmup, tmp, "warm")
        before = stat_cpu_s(Path(f"/proc/{server.pid}/stat"))
        r = wrk(url, "m", body, args.connections, args.seconds, tmp, "run")
        cpu = stat_cpu_s(Path(f"/proc/{server.pid}/stat")) - before
    finally:
        server.terminate()
        server.wait(30)
    if r["failures"]:
        raise RuntimeError(f"{variant['label']}: {r['failures']} of {r['requests']} requests failed")
    return {**r, "server_cpu_s": round(cpu, 2), "server_cpu_ms_per_request": round(1000 * cpu / r["requests"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ese_vovnet19b_dw",
                    help="an artifact or zoo name (random init is fine: only its manifest is served)")
    ap.add_argument("--against", metavar="REV", help="compare with the server at this git revision")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--request", choices=("binary", "json"), default="binary",
                    help="the tensor in Triton's binary format or as JSON numbers")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        serve_zeros(args.model, args.child, args.port)
        return

    from cvzoo import __version__
    from cvzoo.artifact import versions
    from cvzoo.serve import resolve
    size = resolve([args.model], random_init=True)[0].preprocessing.input_size
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:  # wrk (a child of this process) on the second core, the server on the first
        os.sched_setaffinity(0, cores[1:2])
    here = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as d:
        if args.against:
            subprocess.run(["git", "-C", here, "worktree", "add", "-q", "--detach", f"{d}/rev", args.against],
                           check=True)
            variants = [{"label": "this tree", "http": "httptools", "tree": here},
                        {"label": args.against, "http": "httptools", "tree": f"{d}/rev"}]
        else:
            variants = [{"label": http, "http": http, "tree": here} for http in IMPLEMENTATIONS]
        rounds: dict[str, list[dict]] = {v["label"]: [] for v in variants}
        try:
            for i in range(args.rounds):
                for v in variants:
                    r = one_round(args, v, size, cores, Path(d))
                    rounds[v["label"]].append(r)
                    print(f"round {i + 1} {v['label']:10s} {r['requests_per_s']:8.1f} req/s  "
                          f"{r['server_cpu_ms_per_request']:.3f} ms of server CPU per request  p50 {r['p50_ms']} ms")
        finally:
            if args.against:
                subprocess.run(["git", "-C", here, "worktree", "remove", "--force", f"{d}/rev"], check=False)
    first, second = (v["label"] for v in variants)
    per_round = [b["server_cpu_ms_per_request"] / a["server_cpu_ms_per_request"]
                 for a, b in zip(rounds[first], rounds[second])]
    report = {"model": args.model, "input_size": size, "request": args.request, "connections": args.connections,
              "seconds": args.seconds,
              "pinned": len(cores) > 1, "cvzoo": __version__, "versions": versions("uvicorn", "starlette", "fastapi",
                                                                                   "httptools", "uvloop", "h11"),
              "variants": variants, "rounds": rounds,
              "median_cpu_ms_per_request": {k: round(statistics.median(r["server_cpu_ms_per_request"] for r in rs), 3)
                                            for k, rs in rounds.items()},
              f"{second}_over_{first}_per_round".replace(" ", "_"): [round(x, 2) for x in per_round],
              f"{second}_over_{first}_interval".replace(" ", "_"): [round(x, 3) for x in median_interval(per_round)]}
    if args.against:
        report["against"] = subprocess.run(["git", "-C", here, "rev-parse", args.against], capture_output=True,
                                           text=True).stdout.strip()
    print(json.dumps({k: v for k, v in report.items() if k.startswith(("median", second.replace(" ", "_")))}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
