"""Entry point of the stp benchmark's measurements (called by bench/run).

bench/run has built the extension and started the cluster; this script
loads the workloads, runs the chosen sections (drain throughput with
memory, writer overhead, freshness), then writes results/latest.json,
results/latest.md and the PNG plots.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import psycopg2

sys.dont_write_bytecode = True     # leave no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Env, connect, log, q, q1          # noqa: E402
from drain import DrainBench                          # noqa: E402
from workloads import make_workloads, prepare_sources  # noqa: E402
import shapes                                         # noqa: E402
import waits                                          # noqa: E402
import writers                                        # noqa: E402
import slot                                           # noqa: E402
import report                                         # noqa: E402


def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int)
    p.add_argument("--runs", type=int)
    p.add_argument("--batch-size", type=int, default=1000000)
    p.add_argument("--sections", default="drain,wait,shapes,writer,freshness")
    p.add_argument("--wait-rows", type=int)
    p.add_argument("--open-secs", type=int)
    p.add_argument("--workloads", default="w1,w2,w3,w1h,w3h,g4,g1")
    p.add_argument("--partitions")
    p.add_argument("--pgbench-secs", type=int)
    p.add_argument("--fresh-secs", type=int)
    p.add_argument("--rates", default="5000,20000")
    p.add_argument("--wait-timeout")
    p.add_argument("--wait-mode", choices=["await", "stp_wait", "poll"],
                   default="await")
    p.add_argument("--out")
    p.add_argument("--route-compare", action="store_true")
    p.add_argument("--stp-ok", type=int, default=0)
    p.add_argument("--stp-reason", default="")
    p.add_argument("--repo", default=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--pgbin", default="/usr/lib/postgresql/15/bin")
    p.add_argument("--scratch", default="/tmp/stpbench")
    p.add_argument("--os-user", default="")
    a = p.parse_args()
    quick = a.quick
    a.rows = a.rows or (1000000 if quick else 10000000)
    a.runs = a.runs or (1 if quick else 3)
    a.pgbench_secs = a.pgbench_secs or (5 if quick else 15)
    a.fresh_secs = a.fresh_secs or (5 if quick else 20)
    a.rates = int_list(a.rates)
    a.wait_rows = a.wait_rows or (500000 if quick else 2000000)
    a.open_secs = a.open_secs or (10 if quick else 60)
    a.wait_timeout = a.wait_timeout or ("2 minutes" if quick else "1 hour")
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    a.workloads = [s.strip().lower() for s in a.workloads.split(",")
                   if s.strip()]
    ncpu = os.cpu_count() or 1
    a.partitions = sorted(set(int_list(a.partitions) if a.partitions
                              else [1, 2, ncpu]))
    a.out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "results")
    return a


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git(repo, *cmd):
    try:
        return subprocess.run(["git", "-C", repo] + list(cmd), check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def enable_stp(args):
    """CREATE EXTENSION stp; return (ok, reason, version)."""
    if not args.stp_ok:
        return False, args.stp_reason, None
    conn = connect()
    try:
        q(conn, "CREATE EXTENSION IF NOT EXISTS stp")
        ver = q1(conn, "SELECT extversion FROM pg_extension "
                       "WHERE extname = 'stp'")
        return True, "", ver
    except psycopg2.Error as e:
        return False, "CREATE EXTENSION stp failed: %s" % str(e).strip(), None
    finally:
        conn.close()


def loadavg():
    """The 1-minute load average: other work on the machine skews figures."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def machine_info(args, stp_version):
    conn = connect()
    settings = dict(q(conn, """
SELECT name, current_setting(name) FROM pg_settings
WHERE name IN ('shared_buffers', 'jit', 'max_worker_processes',
               'max_parallel_workers_per_gather', 'synchronous_commit',
               'max_wal_size', 'checkpoint_timeout', 'shared_preload_libraries',
               'autovacuum', 'fsync')"""))
    pgver = q1(conn, "SHOW server_version")
    conn.close()
    rev = git(args.repo, "rev-parse", "--short", "HEAD")
    dirty = git(args.repo, "status", "--porcelain", "--untracked-files=no")
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc)
                .strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(), "cpu_model": cpu_model(),
        "mem_gib": round(mem_kb / 1048576, 1),
        "postgres": pgver, "stp": stp_version,
        "git": (rev + ("+dirty" if dirty else "")) if rev else "no commit yet",
        "settings": settings,
        "loadavg_start": loadavg(),
    }


def main():
    args = parse_args()
    env = Env(args)
    t_start = time.monotonic()
    stp_ok, stp_reason, stp_version = enable_stp(args)
    if not stp_ok:
        log("stp unavailable (%s): baseline contenders only" % stp_reason)
    info = machine_info(args, stp_version)
    all_w = make_workloads(args.rows)
    chosen = [all_w[n] for n in args.workloads if n in all_w]
    res = {"info": info, "quick": args.quick, "rows": args.rows,
           "runs": args.runs, "batch_size": args.batch_size,
           "wait_mode": args.wait_mode,
           "partitions": args.partitions, "stp_ok": stp_ok,
           "stp_reason": stp_reason, "sections": args.sections,
           "workloads": {w.name: {"title": w.title, "query": w.query(),
                                  "keys": w.keys} for w in chosen},
           "pgbench_secs": args.pgbench_secs, "fresh_secs": args.fresh_secs}

    if "drain" in args.sections and chosen:
        res["source_sizes"] = prepare_sources(chosen, args.rows)
        res["drain"] = DrainBench(args, chosen, stp_ok,
                                  args.partitions).run()
    if "wait" in args.sections:
        res["wait"] = waits.run(args, stp_ok)
    if "shapes" in args.sections:
        res["shapes"] = shapes.run(args, stp_ok)
    if "writer" in args.sections:
        res["writer"] = writers.writer_overhead(env, args, all_w["w1"], stp_ok)
    if "freshness" in args.sections:
        res["freshness"] = writers.freshness(env, args, all_w["w1"], stp_ok)
    if "slot" in args.sections:
        res["slot"] = slot.run(args, stp_ok)
        res["slot"]["writer"] = slot.writer_overhead(env, args, all_w["w1"], stp_ok)
        res["slot"]["freshness"] = slot.freshness(env, args, all_w["w1"], stp_ok)
    res["elapsed_s"] = time.monotonic() - t_start
    info["loadavg_end"] = loadavg()

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    plots = []
    try:
        import plot
        plots = plot.make_plots(res, args.out)
    except Exception as e:          # a report without plots is still useful
        log("plots failed: %s" % e)
    md = report.render(res, plots)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(md)
    log("wrote %s (%.0f s)" % (os.path.join(args.out, "latest.md"),
                               res["elapsed_s"]))
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
