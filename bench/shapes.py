"""count(DISTINCT) per key and minute, and a hopping window: stp1 against
the batch query, side by side in one run.

Section `shapes`.  Its own source table, `shapesrc` (--rows rows; ts spread
over one hour, 100 keys, 20,000 users), and two jobs:

  distinct  SELECT key, date_bin('1 minute', ts, 'epoch') AS minute,
                   count(DISTINCT uid) AS users, count(*) AS cnt
            FROM shapesrc GROUP BY key, minute
  hop       SELECT key, w AS win, count(*) AS cnt, sum(v) AS s
            FROM shapesrc, stp.hop(ts, '1 minute', '10 seconds') AS w
            GROUP BY key, w

Contenders, each from a CHECKPOINT:

  batch   CREATE TABLE AS the query: one process, no parallel query;
  stp1    stp_start_job(..., partitions => 1, batch_size) and
          CALL stp_await(job, timeout), timed to its return;
  read    after stp1, one read of the job's result view into a table
          (CREATE TABLE AS SELECT * FROM view): for the hopping window
          this is where the panes are combined into windows.

Every stp result is compared with the batch query's (EXCEPT ALL both
ways, sums of floats rounded), and the report gives stp1 / batch.
"""

import time

from common import connect, log, q, q1, summary

JOBS = {
    "distinct": ("SELECT key, date_bin('1 minute', ts, 'epoch') AS minute, "
                 "count(DISTINCT uid) AS users, count(*) AS cnt "
                 "FROM shapesrc GROUP BY key, minute",
                 "key, minute, users, cnt"),
    "hop": ("SELECT key, w AS win, count(*) AS cnt, sum(v) AS s "
            "FROM shapesrc, stp.hop(ts, '1 minute', '10 seconds') AS w "
            "GROUP BY key, w",
            "key, win, cnt, round(s::numeric, 6)"),
}


def prepare(rows):
    conn = connect()
    q(conn, "DROP TABLE IF EXISTS shapesrc")
    q(conn, "CREATE TABLE shapesrc (id bigserial PRIMARY KEY, ts timestamptz, "
            "key int, uid int, v float8)")
    q(conn, "SELECT setseed(0.17)")
    q(conn, "INSERT INTO shapesrc (ts, key, uid, v) "
            "SELECT timestamptz '2024-01-01 00:00:00+00' + random() * interval '1 hour', "
            "(random() * 99)::int, (random() * 19999)::int, random() "
            "FROM generate_series(1, %s)", (rows,))
    q(conn, "VACUUM ANALYZE shapesrc")
    conn.close()


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def run_batch(name):
    conn = connect(max_parallel_workers_per_gather=0)
    q(conn, "DROP TABLE IF EXISTS bench_shape_batch")
    q(conn, "CHECKPOINT")
    secs = timed(lambda: q(conn, "CREATE TABLE bench_shape_batch AS " + JOBS[name][0]))
    groups = q1(conn, "SELECT count(*) FROM bench_shape_batch")
    conn.close()
    return secs, groups


def run_stp(name, batch, wait_timeout):
    """stp1 drain and one read of its view; returns (drain s, read s, check)."""
    query, cols = JOBS[name]
    job = "bench_shape_%s" % name
    conn = connect()
    if q1(conn, "SELECT count(*) FROM stp.jobs WHERE job_name = %s", (job,)):
        q(conn, "SELECT stp_drop_job(%s, true)", (job,))
    q(conn, "DROP TABLE IF EXISTS bench_shape_read")
    q(conn, "CHECKPOINT")
    t0 = time.monotonic()
    q(conn, "SELECT stp_start_job(%s, %s, %s, partitions => 1, batch_size => %s)",
      (job, query, job, batch))
    ok = q(conn, "CALL stp_await(%s, %s)", (job, wait_timeout))[0][0]
    secs = time.monotonic() - t0
    read = timed(lambda: q(conn, "CREATE TABLE bench_shape_read AS SELECT * FROM %s" % job))
    diff = q1(conn, "SELECT count(*) FROM ((SELECT %s FROM bench_shape_read EXCEPT ALL "
                    "SELECT %s FROM bench_shape_batch) UNION ALL (SELECT %s FROM "
                    "bench_shape_batch EXCEPT ALL SELECT %s FROM bench_shape_read)) d"
              % (cols, cols, cols, cols))
    q(conn, "DROP TABLE bench_shape_read")
    q(conn, "SELECT stp_drop_job(%s, true)", (job,))
    conn.close()
    return secs, read, bool(ok) and diff == 0


def run(args, stp_ok):
    if not stp_ok:
        return None
    rows = args.rows
    log("shapes: %d rows in shapesrc" % rows)
    prepare(rows)
    out = {"rows": rows, "batch_size": args.batch_size, "jobs": {}}
    for name in JOBS:
        rec = {"query": JOBS[name][0], "batch": [], "stp1": [], "read": [],
               "checks": []}
        for _ in range(args.runs):
            bsecs, groups = run_batch(name)
            ssecs, rsecs, check = run_stp(name, args.batch_size, args.wait_timeout)
            rec["batch"].append(bsecs)
            rec["stp1"].append(ssecs)
            rec["read"].append(rsecs)
            rec["checks"].append(check)
            rec["groups"] = groups
            log("shapes %-8s batch %6.2f s, stp1 %6.2f s (+ read %5.2f s): "
                "stp1 / batch %.2f%s" % (name, bsecs, ssecs, rsecs, bsecs / ssecs,
                                         "" if check else "  CHECK FAILED"))
        for key in ("batch", "stp1", "read"):
            rec[key + "_summary"] = summary(rec[key])
        rec["ratio"] = summary([b / s for b, s in zip(rec["batch"], rec["stp1"])])
        out["jobs"][name] = rec
    conn = connect()
    q(conn, "DROP TABLE IF EXISTS bench_shape_batch")
    q(conn, "DROP TABLE shapesrc")
    conn.close()
    return out
