"""Waiting for a job, and what a held snapshot costs it.

A client that waits for a job with one long `SELECT stp_wait(job, '1 hour')`
holds that statement's snapshot for the whole wait.  The xmin horizon
stays put, so the result table's dead row versions, which every merge of
a group leaves behind, cannot be pruned, and the merges walk ever longer
HOT chains.  `CALL stp_await(job, '1 hour')` commits between its looks at
the job's progress and sleeps without a snapshot.

This section drains the same backlog with one stp partition:

  wait     SELECT stp_wait(job, '1 hour'): one call, one snapshot;
  await    CALL stp_await(job, '1 hour'): no snapshot while it sleeps;

at batch sizes of 100,000 and 1,000,000 rows; and once more with await, at
batch size 100,000, while another session keeps a REPEATABLE READ
transaction (a snapshot) open for up to --open-secs seconds from the
job's start, as a report or a forgotten psql session would.  The backlog
is its own table, `waitsrc`, with --wait-rows rows over rows / 50 keys:
every batch of 100,000 rows merges into most groups again, as a job that
keeps up with live inserts does, so dead row versions pile up wherever a
snapshot keeps them.  Every result is checked against sum(cnt) = rows and
the batch query's group count.
"""

import threading
import time

from common import connect, log, q, q1


def prepare(rows):
    conn = connect()
    q(conn, "DROP TABLE IF EXISTS waitsrc")
    q(conn, "CREATE TABLE waitsrc (id bigserial PRIMARY KEY, key int, v float8)")
    q(conn, "SELECT setseed(0.42)")
    q(conn, "INSERT INTO waitsrc (key, v) SELECT (random() * %s)::int, random() "
            "FROM generate_series(1, %s)", (max(rows // 50, 1), rows))
    q(conn, "VACUUM ANALYZE waitsrc")
    groups = q1(conn, "SELECT count(DISTINCT key) FROM waitsrc")
    conn.close()
    return groups


QUERY = "SELECT key, count(*) AS cnt, sum(v) AS s FROM waitsrc GROUP BY key"


def hold_snapshot(stop, secs, opened, window):
    """Keep a REPEATABLE READ snapshot until stop is set or secs pass; if
    the job is still at work then, note the rows it processed so far."""
    conn = connect(autocommit=False)
    q(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    q(conn, "SELECT count(*) FROM pg_class")
    opened.set()
    t0 = time.monotonic()
    if not stop.wait(secs):
        other = connect()
        window["rows"] = q1(other, "SELECT sum(rows_processed) FROM stp.job_status "
                                   "WHERE job_name = 'bench_wait'")
        window["secs"] = time.monotonic() - t0
        other.close()
    conn.rollback()
    conn.close()


def drain(rows, groups, batch, mode, open_secs=0):
    """One drain; returns a record with secs, rows/s and the check."""
    conn = connect()
    job = "bench_wait"
    if q1(conn, "SELECT count(*) FROM stp.jobs WHERE job_name = %s", (job,)):
        q(conn, "SELECT stp_drop_job(%s, true)", (job,))
    q(conn, "DROP TABLE IF EXISTS bench_wait_r")
    q(conn, "CHECKPOINT")
    stop = threading.Event()
    opened = threading.Event()
    holder = None
    window = {}
    if open_secs:
        holder = threading.Thread(target=hold_snapshot,
                                  args=(stop, open_secs, opened, window))
        holder.start()
        opened.wait()
    t0 = time.monotonic()
    q(conn, "SELECT stp_start_job(%s, %s, 'bench_wait_r', batch_size => %s)",
      (job, QUERY, batch))
    if mode == "wait":
        ok = q1(conn, "SELECT stp_wait(%s, '1 hour')", (job,))
    else:
        ok = q(conn, "CALL stp_await(%s, '1 hour')", (job,))[0][0]
    secs = time.monotonic() - t0
    stop.set()
    if holder:
        holder.join()
    got_groups, total = q(conn, "SELECT count(*), sum(cnt) FROM bench_wait_r")[0]
    check = bool(ok) and int(total or 0) == rows and got_groups == groups
    q(conn, "SELECT stp_drop_job(%s, true)", (job,))
    conn.close()
    rec = {"mode": mode, "batch": batch, "open_secs": open_secs,
           "secs": secs, "rows_per_s": rows / secs, "check": check}
    if open_secs:
        # The rate while the transaction was open: over the whole drain if
        # it ended first, else up to the transaction's end.
        rec["open_rows_per_s"] = (int(window["rows"] or 0) / window["secs"]
                                  if window else rows / secs)
    log("wait %-5s batch %8d open %2d s: %7.2f s %10.0f rows/s%s%s"
        % (mode, batch, open_secs, secs, rows / secs,
           "; %.0f rows/s while open" % rec["open_rows_per_s"]
           if open_secs else "", "" if check else "  CHECK FAILED"))
    return rec


def run(args, stp_ok):
    if not stp_ok:
        return None
    rows = args.wait_rows
    log("wait: %d rows in waitsrc" % rows)
    groups = prepare(rows)
    out = {"rows": rows, "groups": groups, "open_secs": args.open_secs,
           "runs": []}
    for batch in (100000, 1000000):
        for mode in ("wait", "await"):
            out["runs"].append(drain(rows, groups, batch, mode))
    out["runs"].append(drain(rows, groups, 100000, "await",
                             open_secs=args.open_secs))
    conn = connect()
    q(conn, "DROP TABLE waitsrc")
    conn.close()
    return out
