"""Writer overhead and freshness: what a job costs writers, how fresh it is.

Writer overhead: pgbench, 4 clients, single-row INSERTs into a fresh
events table, synchronous_commit = off, in three variants run in turn:
  (a) no job, (b) an stp job (W1's query, 1 partition) running alongside,
  (c) an AFTER INSERT row trigger doing W1's aggregation by upsert.
TPS of (b) and (c) is reported as a ratio to (a).

Freshness: a steady insert rate (pgbench --rate, 10 rows a transaction)
while a job runs; meanwhile one connection inserts marker rows, each with
its own new key (-1, -2, ...) and a client-side timestamp, and another
polls the result table until each marker's group appears.  The latency
is from the marker's commit returning to the first poll that sees it.
The row trigger is measured too, as the floor of the method (its result
is visible at commit, so what it shows is the polling granularity).
"""

import datetime
import threading
import time

import psycopg2
import psycopg2.errors

from common import connect, log, pgbench_finish, percentile, q, q1, summary
from workloads import create_source

FRESH_ROWS_PER_XACT = 10
MARKER_INTERVAL = 0.02      # one marker every 20 ms
POLL_INTERVAL = 0.002       # poll the result table every 2 ms
MARKER_TIMEOUT = 10.0       # a marker not visible by then is "missing"
                            # (at most the run's length, at least 3 s)


def start_stp(conn, job, w, source, result, batch):
    q(conn, "SELECT stp_start_job(%s, %s, %s, partitions => 1, "
            "batch_size => %s)", (job, w.query(table=source), result, batch))


def drop_stp(conn, job, stp_ok=True):
    """Drop a job and its result table, if stp is there and the job exists."""
    if stp_ok and q1(conn, "SELECT count(*) FROM stp.job_status "
                           "WHERE job_name = %s", (job,)):
        q(conn, "SELECT stp_drop_job(%s, true)", (job,))


def stp_behind(conn, job):
    return q1(conn, "SELECT sum(rows_behind) FROM stp.job_status "
                    "WHERE job_name = %s", (job,))


def check_result(conn, source, result):
    """Does the result table count exactly the source's rows?"""
    n = q1(conn, "SELECT count(*) FROM %s" % source)
    got = q1(conn, "SELECT coalesce(sum(cnt), 0) FROM %s" % result)
    return int(got) == int(n), int(n), int(got)


# --- writer overhead -------------------------------------------------------
def writer_overhead(env, args, w, stp_ok):
    """Run variants a/b/c args.runs times each, interleaved; return records."""
    script = env.write_script("writer.sql", (
        "\\set k random(1, %d)\n"
        "INSERT INTO events_w (ts, key, v) VALUES (now(), :k, random() * 1000);\n"
        % w.keys))
    variants = ["a", "b", "c"] if stp_ok else ["a", "c"]
    names = {"a": "(a) no job", "b": "(b) stp job, 1 partition",
             "c": "(c) row trigger upsert"}
    res = {v: {"name": names[v], "tps": [], "errors": [], "extra": []}
           for v in variants}
    conn = connect()
    log("writer overhead: variants %s, %d run(s) of %d s, 4 clients"
        % (", ".join(variants), args.runs, args.pgbench_secs))
    for _ in range(args.runs):
        for v in variants:
            rec = res[v]
            drop_stp(conn, "bench_writer", stp_ok)
            q(conn, "DROP TABLE IF EXISTS bench_writer_r")
            create_source(conn, "events_w")
            try:
                if v == "b":
                    start_stp(conn, "bench_writer", w, "events_w",
                              "bench_writer_r", args.batch_size)
                elif v == "c":
                    w.trigger_setup(conn, "events_w", "bench_writer_r")
                q(conn, "CHECKPOINT")
                pb = pgbench_finish(env.pgbench_start(script, 4, 2,
                                                      args.pgbench_secs))
                rec["tps"].append(pb["tps"])
                extra = {"tps": pb["tps"], "failed": pb["failed"]}
                if v == "b":
                    extra["rows_behind_at_end"] = stp_behind(conn,
                                                             "bench_writer")
                    t0 = time.monotonic()
                    extra["caught_up"] = q1(
                        conn, "CALL stp_await('bench_writer', '5 minutes')")
                    extra["catch_up_s"] = time.monotonic() - t0
                if v in ("b", "c"):
                    ok, n, got = check_result(conn, "events_w",
                                              "bench_writer_r")
                    extra["result_ok"] = ok
                    if not ok:
                        rec["errors"].append("result counts %d of %d rows"
                                             % (got, n))
                rec["extra"].append(extra)
                log("writer %-26s %9.0f tps" % (names[v], pb["tps"] or 0))
            except Exception as e:
                rec["errors"].append(str(e).strip())
                log("writer %s failed: %s" % (names[v], str(e).strip()))
            drop_stp(conn, "bench_writer", stp_ok)
            q(conn, "DROP TABLE IF EXISTS bench_writer_r")
            q(conn, "DROP TABLE IF EXISTS events_w CASCADE")
    conn.close()
    base = summary(res["a"]["tps"])
    for v in variants:
        res[v]["tps_summary"] = summary(res[v]["tps"])
        s = res[v]["tps_summary"]
        res[v]["ratio"] = (s["median"] / base["median"]
                           if s and base and base["median"] else None)
    return res


# --- freshness -------------------------------------------------------------
class MarkerProbe:
    """Insert markers at a fixed interval and poll for their appearance."""

    def __init__(self, source, result, secs, timeout=MARKER_TIMEOUT):
        self.timeout = timeout
        self.source = source
        self.result = result
        self.secs = secs
        self.lock = threading.Lock()
        self.committed = {}     # marker -> monotonic time its commit returned
        self.seen = {}          # marker -> latency in seconds
        self.writing = True
        self.errors = []

    def writer(self):
        conn = connect(synchronous_commit="off")
        i = 0
        t_next = time.monotonic()
        t_end = t_next + self.secs
        try:
            while time.monotonic() < t_end:
                i += 1
                stamp = datetime.datetime.now(datetime.timezone.utc)
                q(conn, "INSERT INTO %s (ts, key, v) VALUES (%%s, %%s, 0)"
                  % self.source, (stamp, -i))
                done = time.monotonic()
                with self.lock:
                    self.committed[i] = done
                t_next += MARKER_INTERVAL
                time.sleep(max(0.0, t_next - time.monotonic()))
        except Exception as e:
            self.errors.append("marker writer: %s" % e)
        finally:
            self.writing = False
            conn.close()

    def poller(self):
        conn = connect()
        try:
            while True:
                with self.lock:
                    waiting = [m for m in self.committed if m not in self.seen]
                    now = time.monotonic()
                    waiting = [m for m in waiting
                               if now - self.committed[m] < self.timeout]
                if not waiting and not self.writing:
                    break
                if waiting:
                    lo, hi = min(waiting), max(waiting)
                    try:
                        rows = q(conn, "SELECT key FROM %s WHERE key BETWEEN "
                                       "%%s AND %%s" % self.result, (-hi, -lo))
                    except psycopg2.errors.UndefinedTable:
                        rows = []       # the job has not made it yet
                    now = time.monotonic()
                    with self.lock:
                        for (key,) in rows:
                            m = -key
                            if m in self.committed and m not in self.seen:
                                self.seen[m] = now - self.committed[m]
                time.sleep(POLL_INTERVAL)
        except Exception as e:
            self.errors.append("poller: %s" % e)
        finally:
            conn.close()

    def run(self):
        threads = [threading.Thread(target=self.writer, daemon=True),
                   threading.Thread(target=self.poller, daemon=True)]
        for t in threads:
            t.start()
        return threads

    def stats(self):
        lat = sorted(self.seen.values())
        return {"markers": len(self.committed), "seen": len(lat),
                "missing": len(self.committed) - len(lat),
                "p50_ms": ms(percentile(lat, 50)),
                "p90_ms": ms(percentile(lat, 90)),
                "p99_ms": ms(percentile(lat, 99)),
                "max_ms": ms(lat[-1] if lat else None),
                "latencies_ms": [round(x * 1000, 3) for x in lat]}


def ms(x):
    return None if x is None else x * 1000.0


def freshness(env, args, w, stp_ok):
    """Commit-to-visible latency of markers, for each insert rate."""
    script = env.write_script("fresh.sql", (
        "INSERT INTO events_f (ts, key, v) SELECT now(), "
        "1 + floor(random() * %d)::int, random() * 1000 "
        "FROM generate_series(1, %d);\n" % (w.keys, FRESH_ROWS_PER_XACT)))
    contenders = (["stp1"] if stp_ok else []) + ["trigger"]
    out = {}
    conn = connect()
    for rate in args.rates:
        for c in contenders:
            log("freshness %s at %d rows/s for %d s" % (c, rate,
                                                          args.fresh_secs))
            rec = out.setdefault(str(rate), {}).setdefault(c, {"errors": []})
            drop_stp(conn, "bench_fresh", stp_ok)
            q(conn, "DROP TABLE IF EXISTS bench_fresh_r")
            create_source(conn, "events_f")
            try:
                if c == "stp1":
                    start_stp(conn, "bench_fresh", w, "events_f",
                              "bench_fresh_r", args.batch_size)
                else:
                    w.trigger_setup(conn, "events_f", "bench_fresh_r")
                run_freshness(env, args, conn, script, rate, c, rec)
            except Exception as e:
                rec["errors"].append(str(e).strip())
                log("freshness %s failed: %s" % (c, str(e).strip()))
            drop_stp(conn, "bench_fresh", stp_ok)
            q(conn, "DROP TABLE IF EXISTS bench_fresh_r")
            q(conn, "DROP TABLE IF EXISTS events_f CASCADE")
    conn.close()
    return out


def run_freshness(env, args, conn, script, rate, contender, rec):
    """One rate and contender: pgbench at the rate, markers in the middle."""
    warmup = 1.0
    tps = max(1, int(round(rate / FRESH_ROWS_PER_XACT)))
    proc = env.pgbench_start(script, 4, 2, int(args.fresh_secs + 2 * warmup),
                             rate=tps)
    time.sleep(warmup)
    probe = MarkerProbe("events_f", "bench_fresh_r", args.fresh_secs,
                        timeout=min(MARKER_TIMEOUT, max(3.0, args.fresh_secs)))
    threads = probe.run()
    threads[0].join()
    pb = pgbench_finish(proc)
    if contender == "stp1":
        rec["rows_behind_at_end"] = stp_behind(conn, "bench_fresh")
    threads[1].join()
    rec.update(probe.stats())
    rec["target_rows_per_s"] = rate
    rec["achieved_rows_per_s"] = (pb["tps"] or 0) * FRESH_ROWS_PER_XACT
    rec["schedule_lag_ms"] = pb["schedule_lag_ms"]
    rec["errors"] += probe.errors
    log("freshness %s at %d rows/s: p50 %.1f ms, p99 %.1f ms, %d/%d markers"
        % (contender, rate, rec["p50_ms"] or -1, rec["p99_ms"] or -1,
           rec["seen"], rec["markers"]))
