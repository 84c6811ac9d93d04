"""Drain throughput and worker memory: how fast each contender eats a backlog.

The source table is preloaded; each contender turns all of it into the
workload's GROUP BY result, timed from start to finish:

  limit  one batch GROUP BY over the whole table (CREATE TABLE AS), one
         process, no parallel query: the single-threaded ceiling;
  limitN on a hash-partitioned source, for each N > 1 of --partitions:
         N backends at once, each running the same CREATE TABLE AS over
         every N-th leaf.  limitN / limit is what N processes doing the
         same split of the work gain on this machine, the ceiling for
         stpN / stp1 in mode leaves;
  V1     plain-SQL incremental rollup: a PL/pgSQL procedure that upserts
         one id range of batch_size rows at a time, committing each batch
         together with its offset (synchronous_commit = off);
  stpN   stp_start_job(..., partitions => N, batch_size) then
         CALL stp_await(job, '1 hour'), timed from start to its return
         (--wait-timeout; 2 minutes in quick mode).

Every run starts from a CHECKPOINT and a fresh result table, and every
result is checked: as many groups as the limit's, and sum(cnt) equal to
the row count.  While a contender runs, its processes' memory is sampled
(/proc/<pid>/status): the driver's backend for limit and V1, every
partition worker (stp.job_status.pid) for stp.  So is their CPU time
(/proc/<pid>/stat, user plus system): the backend's from the start of the
run, the workers' whole.  On a shared machine, where other tenants stretch
wall times, the CPU time of a single-process contender is the steadier
measure of the work it does.
"""

import threading
import time

from common import MemSampler, connect, log, q, q1, summary
from workloads import HASH_LEAVES


class DrainBench:
    """Runs the drain contenders of the chosen workloads."""

    def __init__(self, args, workloads, stp_ok, partitions):
        self.rows = args.rows
        self.runs = args.runs
        self.batch = args.batch_size
        self.wait_timeout = args.wait_timeout
        self.wait_mode = args.wait_mode
        self.workloads = workloads
        self.stp_ok = stp_ok
        self.partitions = partitions
        # With --route-scan both: every stpN again as stpNfn, with
        # stp.route_scan off (the function filter), right after it.
        self.route_compare = getattr(args, "route_compare", False)
        self.expected = {}          # workload -> (groups, rows)
        self.results = {}           # workload -> contender -> record
        self.sconn = connect()      # the memory sampler's connection

    def contenders(self):
        names = ["limit", "V1"]
        if self.stp_ok:
            for p in self.partitions:
                names += ["stp%d" % p] + (["stp%dfn" % p]
                                          if self.route_compare else [])
        return names

    def record(self, w, contender):
        return self.results.setdefault(w.name, {}).setdefault(
            contender, {"secs": [], "cpu": [], "mem": {}, "errors": [],
                        "checks": []})

    def check(self, conn, w, contender, table):
        """Compare a result table's group count and sum(cnt) with the limit's."""
        groups, total = q(conn, "SELECT count(*), sum(cnt) FROM %s" % table)[0]
        total = int(total or 0)
        if contender == "limit":
            self.expected[w.name] = (groups, total)
        exp = self.expected.get(w.name)
        ok = exp is not None and (groups, total) == exp and total == self.rows
        rec = self.record(w, contender)
        rec["checks"].append(ok)
        if not ok:
            msg = "result check failed: %d groups, sum(cnt) %d; expected %s" % (
                groups, total, exp)
            rec["errors"].append(msg)
            log("%s %s: %s" % (w.name, contender, msg))
        return ok

    def keep_mem(self, rec, peaks):
        for label, peak in peaks.items():
            cur = rec["mem"].setdefault(str(label), {"VmHWM": 0, "RssAnon": 0})
            for key in ("VmHWM", "RssAnon"):
                cur[key] = max(cur[key], peak[key])

    def timed(self, w, contender, conn, pid_source, body):
        """Run body() under the memory sampler (after a CHECKPOINT); keep
        secs, and the CPU seconds of the contender's processes."""
        sampler = MemSampler(pid_source)
        sampler.sample()        # the CPU times before body() starts
        sampler.start()
        t0 = time.monotonic()
        try:
            body()
        finally:
            secs = time.monotonic() - t0
            peaks = sampler.stop()
        rec = self.record(w, contender)
        rec["secs"].append(secs)
        rec["cpu"].append(sampler.cpu_secs())
        self.keep_mem(rec, peaks)
        log("%s %-6s %7.2f s  %10.0f rows/s  %6.2f CPU s"
            % (w.name, contender, secs, self.rows / secs, rec["cpu"][-1]))
        return secs

    # --- contenders -------------------------------------------------------
    def run_limit(self, w):
        conn = connect(max_parallel_workers_per_gather=0)
        pid = conn.get_backend_pid()
        q(conn, "DROP TABLE IF EXISTS bench_limit")
        q(conn, "CHECKPOINT")
        self.timed(w, "limit", conn, lambda: {"backend": pid},
                   lambda: q(conn, "CREATE TABLE bench_limit AS " + w.query()))
        self.check(conn, w, "limit", "bench_limit")
        q(conn, "DROP TABLE bench_limit")
        conn.close()

    def run_limit_split(self, w, n):
        """limitN: n backends at once, backend i running the limit's query
        over the leaves k with k % n == i of a hash-partitioned source."""
        contender = "limit%d" % n
        conns = [connect(max_parallel_workers_per_gather=0) for _ in range(n)]
        pids = {"backend%d" % i: c.get_backend_pid() for i, c in enumerate(conns)}
        for i, c in enumerate(conns):
            q(c, "DROP TABLE IF EXISTS bench_limit_%d" % i)
        q(conns[0], "CHECKPOINT")
        errors = []

        def one(i):
            src = " UNION ALL ".join("SELECT * FROM %s_%d" % (w.table, k)
                                     for k in range(HASH_LEAVES) if k % n == i)
            try:
                q(conns[i], "CREATE TABLE bench_limit_%d AS %s" % (
                    i, w.query(table="(%s) AS %s" % (src, w.table))))
            except Exception as e:      # reported after the join
                errors.append(e)

        def body():
            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]

        self.timed(w, contender, conns[0], lambda: pids, body)
        self.check(conns[0], w, contender, "(%s) AS parts" % " UNION ALL ".join(
            "SELECT * FROM bench_limit_%d" % i for i in range(n)))
        for i, c in enumerate(conns):
            q(c, "DROP TABLE bench_limit_%d" % i)
            c.close()

    def run_v1(self, w):
        conn = connect(synchronous_commit="off",
                       max_parallel_workers_per_gather=0)
        pid = conn.get_backend_pid()
        w.v1_setup(conn, "bench_v1", "bench_v1_drain")
        hi = q1(conn, "SELECT max(id) FROM %s" % w.table)
        q(conn, "CHECKPOINT")
        self.timed(w, "V1", conn, lambda: {"backend": pid},
                   lambda: q(conn, "CALL bench_v1_drain(%s, %s)",
                             (hi, self.batch)))
        self.check(conn, w, "V1", "bench_v1")
        q(conn, "DROP TABLE bench_v1")
        conn.close()

    def stp_await(self, conn, job):
        """CALL stp_await(job, timeout): it commits between its looks at the
        job's progress, so no snapshot is held across the drain and the
        result table's old row versions can be pruned while the job runs."""
        return q1(conn, "CALL stp_await(%s, %s)", (job, self.wait_timeout))

    def stp_wait_loop(self, conn, job):
        """stp_wait(job, '1 s') in a loop until it returns true: short
        statements, each holding a snapshot for a second at most."""
        deadline = time.monotonic() + q1(
            conn, "SELECT extract(epoch FROM %s::interval)::float8",
            (self.wait_timeout,))
        while time.monotonic() < deadline:
            if q1(conn, "SELECT stp_wait(%s, '1 s')", (job,)):
                return True
        return False

    def poll_wait(self, conn, job, w):
        """Client-side stp_wait: poll stp.job_status every 10 ms until every
        partition has processed up to the source's last id.  Unlike a long
        stp_wait() call, this holds no snapshot while the job runs."""
        hi = q1(conn, "SELECT max(id) FROM %s" % w.table)
        limit = time.monotonic() + float(q1(
            conn, "SELECT extract(epoch FROM %s::interval)::float8",
            (self.wait_timeout,)))
        while time.monotonic() < limit:
            done, failed = q(conn, "SELECT bool_and(processed_upto >= %s), "
                                   "bool_or(state = 'failed') "
                                   "FROM stp.job_status WHERE job_name = %s",
                             (hi, job))[0]
            if done or failed:
                return bool(done)
            time.sleep(0.01)
        return False

    def stp_pids(self, job, t0, seen):
        """Worker pids by partition; note when the first rows were merged."""
        rows = q(self.sconn, "SELECT partition, pid, rows_processed "
                             "FROM stp.job_status WHERE job_name = %s", (job,))
        if "first" not in seen and any(r[2] for r in rows or []):
            seen["first"] = time.monotonic() - t0
        return {"p%s" % part: pid for part, pid, _ in rows or []}

    def run_stp(self, w, parts, fn=False):
        contender = "stp%d%s" % (parts, "fn" if fn else "")
        job = "bench_%s_p%d" % (w.name, parts)
        result = "bench_stp_%s" % w.name
        conn = connect()
        drop_stp_job(conn, job)
        q(conn, "DROP TABLE IF EXISTS %s" % result)
        # The workers read the database's settings when they connect.
        q(conn, "ALTER DATABASE bench %s" % (
            "SET stp.route_scan = off" if fn else "RESET stp.route_scan"))
        q(conn, "CHECKPOINT")
        waited = {}

        def body():
            q(conn, "SELECT stp_start_job(%s, %s, %s, partitions => %s, "
                    "batch_size => %s)",
              (job, w.query(), result, parts, self.batch))
            if self.wait_mode == "poll":
                waited["ok"] = self.poll_wait(conn, job, w)
            elif self.wait_mode == "stp_wait":
                waited["ok"] = self.stp_wait_loop(conn, job)
            else:
                waited["ok"] = self.stp_await(conn, job)

        seen = {}
        t0 = time.monotonic()
        try:
            self.timed(w, contender, conn,
                       lambda: self.stp_pids(job, t0, seen), body)
            rec = self.record(w, contender)
            rec.setdefault("first_rows_s", []).append(seen.get("first"))
            status = q(conn, "SELECT partition, pid, state, processed_upto, "
                             "rows_processed, rows_behind, last_error "
                             "FROM stp.job_status WHERE job_name = %s "
                             "ORDER BY partition", (job,))
            rec["status"] = [list(map(str, r)) for r in status]
            strategy = q(conn, "SELECT strategy FROM stp.jobs "
                               "WHERE job_name = %s", (job,))
            rec["strategy"] = strategy[0][0] if strategy else "?"
            log("%s %s: strategy %s" % (w.name, contender, rec["strategy"]))
            if not waited.get("ok"):
                rec["errors"].append("wait (%s) returned %r; status %r"
                                     % (self.wait_mode, waited.get("ok"),
                                        rec["status"]))
            self.check(conn, w, contender, result)
        except Exception as e:
            self.record(w, contender)["errors"].append(str(e).strip())
            log("%s %s failed: %s" % (w.name, contender, str(e).strip()))
            conn.close()
            conn = connect()
        drop_stp_job(conn, job)
        q(conn, "DROP TABLE IF EXISTS %s" % result)
        q(conn, "ALTER DATABASE bench RESET stp.route_scan")
        conn.close()

    # --- driver -----------------------------------------------------------
    def run(self):
        for w in self.workloads:
            log("drain %s: contenders %s, %d run(s), batch %d"
                % (w.name, ", ".join(self.contenders()), self.runs, self.batch))
            for run in range(self.runs):
                self.run_limit(w)
                if w.table.endswith("_h"):
                    for p in self.partitions:
                        if p > 1:
                            self.run_limit_split(w, p)
                self.run_v1(w)
                if self.stp_ok:
                    for p in self.partitions:
                        # stpN and stpNfn take turns at going first.
                        order = [False, True] if self.route_compare else [False]
                        for fn in order[::-1] if run % 2 else order:
                            self.run_stp(w, p, fn=fn)
            for contender, rec in self.results[w.name].items():
                rec["secs_summary"] = summary(rec["secs"])
                rec["cpu_summary"] = summary(rec["cpu"])
                rec["rows_per_s"] = summary([self.rows / s for s in rec["secs"]])
                if "first_rows_s" in rec:
                    rec["first_rows_summary"] = summary(rec["first_rows_s"])
        self.sconn.close()
        return self.results


def drop_stp_job(conn, job):
    """Drop a job and its result table, if the job exists."""
    if q1(conn, "SELECT count(*) FROM stp.job_status WHERE job_name = %s",
          (job,)):
        q(conn, "SELECT stp_drop_job(%s, true)", (job,))
