"""The slot section of the stp benchmark: slot jobs' decoding throughput,
writer overhead and freshness.

A table with REPLICA IDENTITY FULL takes single-row transactions: N
inserts, then updates of 20% and deletes of 10% of the rows (1,000,000
inserts in the full run, 100,000 with --quick).  Before the writes, every
contender gets a logical replication slot: test_decoding and pgoutput,
read afterwards with pg_logical_slot_get_changes /
pg_logical_slot_get_binary_changes, and two stp slot jobs (1 and 2
partitions), created on the empty table and stopped at once.  After the
writes, each contender decodes the same WAL in turn, measured side by side
in one run: the SQL functions as one statement each, the stp jobs from
stp_resume_job until CALL stp_await returns.  Each stp result is checked
against the batch query.

Then, as for table jobs: pgbench single-row inserts (4 clients) into a
REPLICA IDENTITY FULL table with an index on the group key (which a slot
job reads each touched group by), without a job and with a slot job of 1
partition, and the commit-to-visible latency of marker rows at 5,000
rows/s.
"""

import time

from common import connect, log, q, q1

QUERY = ("SELECT key, count(*) AS cnt, sum(v) AS total FROM slotsrc "
         "GROUP BY key")
# The same over the numeric copy of v: a sum that cannot be subtracted
# exactly, so that job computes the groups an UPDATE or DELETE touches
# again from the source (see the README's Slot jobs).
QUERY_NUM = ("SELECT key, count(*) AS cnt, sum(w) AS total FROM slotsrc "
             "GROUP BY key")


def prepare(conn, inserts):
    """The source, the writer procedure, and the contenders' slots."""
    q(conn, "DROP TABLE IF EXISTS slotsrc CASCADE")
    q(conn, "CREATE TABLE slotsrc (id bigint PRIMARY KEY, key int, v int, w numeric)")
    q(conn, "ALTER TABLE slotsrc REPLICA IDENTITY FULL")
    q(conn, """
CREATE OR REPLACE PROCEDURE slot_writes(n int) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM setseed(0.42);
    FOR i IN 1 .. n LOOP
        INSERT INTO slotsrc SELECT i, (random() * 1000)::int, x, x
        FROM (SELECT (random() * 100)::int AS x) r;
        COMMIT;
    END LOOP;
    FOR i IN 1 .. n / 5 LOOP
        UPDATE slotsrc SET key = (random() * 1000)::int, v = v + 1, w = w + 1 WHERE id = i * 5;
        COMMIT;
    END LOOP;
    FOR i IN 1 .. n / 10 LOOP
        DELETE FROM slotsrc WHERE id = i * 10 - 3;
        COMMIT;
    END LOOP;
END $$""")
    q(conn, "DROP PUBLICATION IF EXISTS slotpub")
    q(conn, "CREATE PUBLICATION slotpub FOR TABLE slotsrc")
    for name, plugin in (("bench_td", "test_decoding"), ("bench_po", "pgoutput")):
        q(conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s", (name,))
        q(conn, "SELECT pg_create_logical_replication_slot(%s, %s)", (name, plugin))


def stp_job(conn, name, partitions, query):
    """An stp slot job on the (still empty) source, stopped once built."""
    q(conn, "SELECT stp_start_job(%s, %s, %s, partitions => %s, source => 'slot')",
      (name, query, "r_" + name, partitions))
    q(conn, "CALL stp_await(%s, '10 min')", (name,))
    q(conn, "SELECT stp_stop_job(%s)", (name,))


def run(args, stp_ok):
    """Measure decoded changes per second of every contender."""
    inserts = 100_000 if args.quick else 1_000_000
    changes = inserts + inserts // 5 + inserts // 10
    conn = connect()
    res = {"inserts": inserts, "changes": changes, "rows": []}
    if q1(conn, "SHOW wal_level") != "logical":
        res["error"] = "wal_level is not logical"
        return res
    prepare(conn, inserts)
    jobs = []
    if stp_ok:
        for name, parts, query in (("slot_p1", 1, QUERY), ("slot_p2", 2, QUERY),
                                   ("slot_n1", 1, QUERY_NUM)):
            q(conn, "SELECT stp_drop_job(job_name, true) FROM stp.jobs WHERE job_name = %s",
              (name,))
            stp_job(conn, name, parts, query)
            jobs.append((name, parts, query))

    log("slot: %d single-row transactions (%d changes)" % (changes, changes))
    t0 = time.monotonic()
    q(conn, "CALL slot_writes(%s)", (inserts,))
    res["write_s"] = time.monotonic() - t0
    wal = q1(conn, "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots "
                   "WHERE slot_name = 'bench_td'")
    res["wal_bytes"] = int(wal)

    t0 = time.monotonic()
    n = q1(conn, "SELECT count(*) FROM pg_logical_slot_get_changes('bench_td', NULL, NULL) "
                 "WHERE data LIKE 'table public.slotsrc: %%'")
    secs = time.monotonic() - t0
    res["rows"].append({"who": "test_decoding, pg_logical_slot_get_changes",
                        "changes": n, "secs": secs, "check": n == changes})
    t0 = time.monotonic()
    n = q1(conn, "SELECT count(*) FROM pg_logical_slot_get_binary_changes('bench_po', NULL, NULL, "
                 "'proto_version', '1', 'publication_names', 'slotpub') "
                 "WHERE get_byte(data, 0) IN (73, 85, 68)")
    secs = time.monotonic() - t0
    res["rows"].append({"who": "pgoutput, pg_logical_slot_get_binary_changes",
                        "changes": n, "secs": secs, "check": n == changes})
    for name in ("bench_td", "bench_po"):
        q(conn, "SELECT pg_drop_replication_slot(%s)", (name,))

    for name, parts, query in jobs:
        t0 = time.monotonic()
        q(conn, "SELECT stp_resume_job(%s)", (name,))
        done = q(conn, "CALL stp_await(%s, '30 min')", (name,))[0][0]
        secs = time.monotonic() - t0
        bad = q1(conn, "SELECT count(*) FROM ((SELECT key, cnt, total FROM r_%s EXCEPT ALL "
                       "SELECT * FROM (%s) b) UNION ALL (SELECT * FROM (%s) b EXCEPT ALL "
                       "SELECT key, cnt, total FROM r_%s)) d" % (name, query, query, name))
        res["rows"].append({"who": "stp slot job, %d partition%s%s"
                                   % (parts, "s" if parts > 1 else "",
                                      ", sum of numeric (recomputes)" if query == QUERY_NUM else ""),
                            "changes": changes, "secs": secs,
                            "check": bool(done) and bad == 0})
        q(conn, "SELECT stp_drop_job(%s, true)", (name,))
    for r in res["rows"]:
        r["per_s"] = r["changes"] / r["secs"] if r["secs"] > 0 else None
        log("slot: %s: %d changes in %.2f s, %.0f changes/s%s"
            % (r["who"], r["changes"], r["secs"], r["per_s"] or 0,
               "" if r["check"] else " (CHECK FAILED)"))
    conn.close()
    return res


def writer_overhead(env, args, w, stp_ok):
    """pgbench single-row inserts into a REPLICA IDENTITY FULL table, with
    no job and with a running slot job of 1 partition, interleaved."""
    from common import pgbench_finish
    from workloads import create_source
    script = env.write_script("slot_writer.sql", (
        "\\set k random(1, %d)\n"
        "INSERT INTO events_sw (ts, key, v) VALUES (now(), :k, random() * 1000);\n"
        % w.keys))
    conn = connect()
    out = {"no job": [], "slot job, 1 partition": [], "check": True}
    for _ in range(args.runs):
        for variant in ("no job", "slot job, 1 partition"):
            if stp_ok:
                q(conn, "SELECT stp_drop_job(job_name, true) FROM stp.jobs "
                        "WHERE job_name = 'bench_slot_w'")
            create_source(conn, "events_sw")
            q(conn, "ALTER TABLE events_sw REPLICA IDENTITY FULL")
            # A slot job reads each touched group again: by this index.
            q(conn, "CREATE INDEX ON events_sw (key)")
            if variant != "no job":
                if not stp_ok:
                    continue
                q(conn, "SELECT stp_start_job('bench_slot_w', %s, 'bench_slot_wr', "
                        "source => 'slot')", (w.query(table="events_sw"),))
                q(conn, "CALL stp_await('bench_slot_w', '1 min')")
            q(conn, "CHECKPOINT")
            pb = pgbench_finish(env.pgbench_start(script, 4, 2, args.pgbench_secs))
            out[variant].append(pb["tps"])
            if variant != "no job":
                q(conn, "CALL stp_await('bench_slot_w', '5 min')")
                n = q1(conn, "SELECT count(*) FROM events_sw")
                got = q1(conn, "SELECT coalesce(sum(cnt), 0) FROM bench_slot_wr")
                out["check"] = out["check"] and int(n) == int(got)
                q(conn, "SELECT stp_drop_job('bench_slot_w', true)")
            log("slot writer %-22s %9.0f tps" % (variant, pb["tps"] or 0))
    q(conn, "DROP TABLE IF EXISTS events_sw CASCADE")
    conn.close()
    return out


def freshness(env, args, w, stp_ok, rate=5000):
    """Commit-to-visible latency of a slot job's result at rate rows/s."""
    from workloads import create_source
    from writers import run_freshness, FRESH_ROWS_PER_XACT
    script = env.write_script("slot_fresh.sql", (
        "INSERT INTO events_f (ts, key, v) SELECT now(), "
        "1 + floor(random() * %d)::int, random() * 1000 "
        "FROM generate_series(1, %d);\n" % (w.keys, FRESH_ROWS_PER_XACT)))
    rec = {"errors": []}
    if not stp_ok:
        return rec
    conn = connect()
    q(conn, "DROP TABLE IF EXISTS bench_fresh_r")
    create_source(conn, "events_f")
    q(conn, "ALTER TABLE events_f REPLICA IDENTITY FULL")
    q(conn, "CREATE INDEX ON events_f (key)")
    q(conn, "SELECT stp_start_job('bench_fresh', %s, 'bench_fresh_r', source => 'slot')",
      (w.query(table="events_f"),))
    q(conn, "CALL stp_await('bench_fresh', '1 min')")
    try:
        run_freshness(env, args, conn, script, rate, "slot1", rec)
    except Exception as e:
        rec["errors"].append(str(e).strip())
    q(conn, "SELECT stp_drop_job('bench_fresh', true)")
    q(conn, "DROP TABLE IF EXISTS events_f CASCADE")
    conn.close()
    return rec
