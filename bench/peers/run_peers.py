#!/usr/bin/python3
"""Runs the peers (Celery, Dask distributed, RQ) on simq-bench's workloads and writes their
figures as JSON for `simq-bench --peer-json`.

It starts its own redis-server on a free loopback port (in a temp dir, no persistence) and the
peers' workers, each in a process group of its own, and stops all of them before it exits,
also on an error or Ctrl-C. Use Debian's /usr/bin/python3 (python3-celery,
python3-distributed, python3-rq, python3-redis).

Output: {"celery": {"throughput.jobs_per_s": ..., "throughput.jobs": ..., "latency.p50_ms":
..., "latency.p99_ms": ..., "latency.samples": ..., "cpu.points": [{"workers", "seconds",
"speedup", "efficiency"}], "cpu.speedup_2": ..., "cpu.efficiency_2": ..., "cpu.kernel": ...},
"dask": {...}, "rq": {...}}; a system or figure that failed is left out, with a note on stderr.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"
RUN_TIMEOUT = 900  # seconds, one peer script


def note(text):
    print(f"run_peers: {text}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Background processes, each in its own session, stopped (whole group) on exit."""

    def __init__(self):
        self.procs = []

    def start(self, argv, env, log):
        proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc, grace=10):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # The group's other members (Celery's pool, RQ's work horses) too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self):
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def run(argv, env):
    """Runs a peer script to completion; returns its stdout."""
    out = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT, start_new_session=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr[-2000:]}")
    note(out.stdout.strip())
    return out.stdout


def parse_throughput(text):
    m = re.search(r"throughput n=(\d+) (\d+) jobs/s", text)
    return {"throughput.jobs": int(m[1]), "throughput.jobs_per_s": float(m[2])}


def parse_latency(text):
    m = re.search(r"latency n=(\d+) p50=([\d.]+)ms p99=([\d.]+)ms", text)
    return {"latency.samples": int(m[1]), "latency.p50_ms": float(m[2]),
            "latency.p99_ms": float(m[3])}


def parse_seconds(text):
    seconds = float(re.search(r" ([\d.]+)s\s*$", text.strip())[1])
    if seconds <= 0:  # the scripts print 2 decimals
        raise RuntimeError(f"too short to time: {text.strip()}; use more or larger fib jobs")
    return seconds


def cpu_figures(seconds, fib_jobs, fib_n):
    """seconds: {workers: wall} -> the scaling points against one worker."""
    points = []
    for workers in sorted(seconds):
        speedup = seconds[1] / seconds[workers]
        points.append({"workers": workers, "seconds": seconds[workers], "speedup": speedup,
                       "efficiency": speedup / workers})
    figures = {"cpu.kernel": f"python fib({fib_n})", "cpu.jobs": fib_jobs, "cpu.points": points}
    # Times are not compared with simq's (another kernel): only speed-up and efficiency are.
    for p in points:
        if p["workers"] > 1:
            figures[f"cpu.speedup_{p['workers']}"] = p["speedup"]
            figures[f"cpu.efficiency_{p['workers']}"] = p["efficiency"]
    return figures


def measure(name, figures, step):
    """Runs one figure's step; a failure is noted and the figure left out."""
    try:
        figures.update(step())
    except Exception as e:  # noqa: BLE001 - a peer failing must not lose the others' figures
        note(f"{name}: failed: {e}")


def with_workers(procs, start, count, step):
    """Runs step() while `count` workers started by start(count) run; stops them after."""
    started = start(count)
    try:
        return step()
    finally:
        for w in started:
            procs.stop(w)


def pooled(name, script, start, procs, env, args, throughput_jobs, latency_jobs):
    """The figures of a peer whose workers run beside its client (Celery, RQ): throughput
    and latency on 2 workers, the fib sweep on each of --scaling-workers."""
    figures = {}
    if "throughput" in args.figures or "latency" in args.figures:
        def rates():
            if "throughput" in args.figures:
                measure(f"{name} throughput", figures, lambda: parse_throughput(
                    run(script + ["throughput", str(throughput_jobs)], env)))
            if "latency" in args.figures:
                measure(f"{name} latency", figures, lambda: parse_latency(
                    run(script + ["latency", str(latency_jobs)], env)))
        with_workers(procs, start, 2, rates)
    if "cpu" in args.figures:
        def scaling():
            fib = script + ["fib", str(args.fib_jobs), str(args.fib_n)]
            seconds = {count: with_workers(procs, start, count,
                                           lambda: parse_seconds(run(fib, env)))
                       for count in args.scaling_workers}
            return cpu_figures(seconds, args.fib_jobs, args.fib_n)
        measure(f"{name} cpu", figures, scaling)
    return figures


def celery(args, env, procs, logdir):
    def workers(concurrency):
        log = open(os.path.join(logdir, f"celery-{concurrency}.log"), "ab")
        return [procs.start([PYTHON, "-m", "celery", "-A", "celery_app", "worker",
                             f"--concurrency={concurrency}", "-P", "prefork",
                             "--loglevel=WARNING", "--without-heartbeat", "--without-gossip",
                             "--without-mingle"], env, log)]

    return pooled("celery", [PYTHON, "bench_celery.py"], workers, procs, env, args,
                  args.throughput_jobs, args.latency_jobs)


def dask(args, env, procs, logdir):
    figures = {}
    script = [PYTHON, "bench_dask.py"]
    if "throughput" in args.figures:
        measure("dask throughput", figures, lambda: parse_throughput(
            run(script + ["2", "throughput", str(args.throughput_jobs)], env)))
    if "latency" in args.figures:
        measure("dask latency", figures, lambda: parse_latency(
            run(script + ["2", "latency", str(args.latency_jobs)], env)))
    if "cpu" in args.figures:
        def scaling():
            seconds = {w: parse_seconds(run(script + [str(w), "fib", str(args.fib_jobs),
                                                      str(args.fib_n)], env))
                       for w in args.scaling_workers}
            return cpu_figures(seconds, args.fib_jobs, args.fib_n)
        measure("dask cpu", figures, scaling)
    return figures


def rq(args, env, procs, logdir):
    def workers(count):
        log = open(os.path.join(logdir, "rq.log"), "ab")
        return [procs.start([PYTHON, "-m", "rq.cli", "worker", "-u", env["PEER_REDIS"], "peer"],
                            env, log) for _ in range(count)]

    return pooled("rq", [PYTHON, "bench_rq.py"], workers, procs, env, args,
                  args.rq_throughput_jobs, args.rq_latency_jobs)


SYSTEMS = {"celery": celery, "dask": dask, "rq": rq}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="celery,dask,rq")
    parser.add_argument("--figures", default="throughput,latency,cpu")
    parser.add_argument("--throughput-jobs", type=int, default=20000,
                        help="no-op jobs for Celery and Dask (default 20000)")
    parser.add_argument("--rq-throughput-jobs", type=int, default=2000,
                        help="no-op jobs for RQ, which forks a process per job (default 2000)")
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rq-latency-jobs", type=int, default=200)
    parser.add_argument("--fib-jobs", type=int, default=40)
    parser.add_argument("--fib-n", type=int, default=27)
    parser.add_argument("--scaling-workers", default="1,2")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    args.figures = set(args.figures.split(","))
    args.scaling_workers = sorted({1, *(int(w) for w in args.scaling_workers.split(","))})

    procs = Processes()
    tmp = tempfile.mkdtemp(prefix="simq-peers-")
    results = {}
    try:
        port = free_port()
        redis = procs.start([args.redis_server, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", tmp],
                            os.environ.copy(), open(os.path.join(tmp, "redis.log"), "ab"))
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        env = os.environ.copy()
        env["PEER_REDIS"] = f"redis://127.0.0.1:{port}/0"
        env["PYTHONPATH"] = HERE
        note(f"redis-server on port {port}")
        for name in args.systems.split(","):
            note(f"{name}...")
            subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(port), "FLUSHALL"],
                           capture_output=True)
            results[name] = SYSTEMS[name](args, env, procs, tmp)
    except KeyboardInterrupt:
        note("interrupted")
        return 130
    finally:
        procs.stop_all()
        with open(args.out, "w") as out:
            json.dump(results, out, indent=2)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
