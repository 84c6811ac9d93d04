"""Workload definitions of the stp benchmark, and their deterministic data.

W1 and W2 share one source table (events: 10,000 keys, event time spread
over one hour); W3 has its own (events3: 2,000,000 keys).  Every row is
made in SQL from generate_series and a fixed setseed, so every run of the
benchmark aggregates the same data.

For each workload this module also writes the SQL of the baselines:
V1 (a plain-SQL incremental rollup: one INSERT ... ON CONFLICT DO UPDATE
per id range, committed per batch by a PL/pgSQL procedure) and the row
trigger used by the writer-overhead and freshness measurements.
"""

import re

from common import connect, log, q, q1

BASE_TS = "2024-01-01 00:00:00+00"

# Result-column merges for ON CONFLICT DO UPDATE, by aggregate kind.
# "r" is the result table's alias, EXCLUDED the batch's partial row.
MERGE = {
    "count": "{c} = r.{c} + EXCLUDED.{c}",
    "sum": "{c} = r.{c} + EXCLUDED.{c}",
    "min": "{c} = LEAST(r.{c}, EXCLUDED.{c})",
    "max": "{c} = GREATEST(r.{c}, EXCLUDED.{c})",
}


class Workload:
    """One GROUP BY job over one source table.

    aggs is a list of (output name, kind, argument, SQL type); kind is
    count, sum, min, max or avg.  avg keeps sum/count state columns in the
    baselines' result tables, as stp keeps _stp_<name>_sum/_count.
    """

    def __init__(self, name, table, keys, groups, aggs, title):
        self.name = name
        self.table = table
        self.keys = keys
        self.groups = groups        # list of (output name, expr, SQL type)
        self.aggs = aggs
        self.title = title

    # --- the job's query ---------------------------------------------------
    def agg_expr(self, kind, arg):
        return "count(*)" if kind == "count" else "%s(%s)" % (kind, arg)

    def query(self, table=None, where=None):
        """The job's SELECT, over table (default: the workload's source)."""
        cols = []
        for gname, gexpr, _ in self.groups:
            cols.append(gname if gexpr == gname else "%s AS %s" % (gexpr, gname))
        for oname, kind, arg, _ in self.aggs:
            cols.append("%s AS %s" % (self.agg_expr(kind, arg), oname))
        sql = "SELECT %s FROM %s" % (", ".join(cols), table or self.table)
        if where:
            sql += " WHERE " + where
        if not self.groups:
            return sql              # one group: no GROUP BY
        return sql + " GROUP BY " + ", ".join(g[0] for g in self.groups)

    # --- baseline result tables ------------------------------------------
    def result_columns(self):
        """(name, type) of a baseline result table, state columns last."""
        cols = [(g[0], g[2]) for g in self.key_columns()]
        state = []
        for oname, kind, arg, typ in self.aggs:
            cols.append((oname, typ))
            if kind == "avg":
                state += [("_%s_sum" % oname, "float8"),
                          ("_%s_cnt" % oname, "bigint")]
        return cols + state

    def key_columns(self):
        """The baselines' key columns: a constant one for a query without
        GROUP BY, so that its one row can be upserted like any other."""
        return self.groups or [("_g", "true", "bool")]

    def create_result_sql(self, name):
        cols = ", ".join("%s %s" % c for c in self.result_columns())
        pk = ", ".join(g[0] for g in self.key_columns())
        return "CREATE TABLE %s (%s, PRIMARY KEY (%s))" % (name, cols, pk)

    def partial_select(self, source_cols):
        """Select-list of one partial row per group, state columns last.

        source_cols maps the group/agg argument to its SQL: a batch
        aggregates over rows (grouped), a trigger over the NEW row alone.
        """
        grouped = source_cols is None
        out = []
        for gname, gexpr, _ in self.key_columns():
            out.append(gexpr if grouped or not self.groups
                       else source_cols[gname])
        state = []
        for oname, kind, arg, _ in self.aggs:
            if grouped:
                out.append(self.agg_expr(kind, arg))
            elif kind == "count":
                out.append("1")
            else:
                out.append(source_cols[arg])
            if kind == "avg":
                if grouped:
                    state += ["sum(%s)" % arg, "count(%s)" % arg]
                else:
                    a = source_cols[arg]
                    state += [a, "CASE WHEN %s IS NULL THEN 0 ELSE 1 END" % a]
        return out + state

    def merge_set(self):
        """SET list of ON CONFLICT DO UPDATE merging a partial row."""
        sets = []
        for oname, kind, arg, _ in self.aggs:
            if kind == "avg":
                s, c = "_%s_sum" % oname, "_%s_cnt" % oname
                sets.append(MERGE["sum"].format(c=s))
                sets.append(MERGE["sum"].format(c=c))
                sets.append("%s = (r.%s + EXCLUDED.%s) / NULLIF(r.%s + EXCLUDED.%s, 0)"
                            % (oname, s, s, c, c))
            else:
                sets.append(MERGE[kind].format(c=oname))
        return ", ".join(sets)

    def upsert_sql(self, result, select_list, from_where_group):
        pk = ", ".join(g[0] for g in self.key_columns())
        return ("INSERT INTO %s AS r SELECT %s %s ON CONFLICT (%s) DO UPDATE SET %s"
                % (result, ", ".join(select_list), from_where_group, pk,
                   self.merge_set()))

    # --- V1: plain-SQL incremental rollup ---------------------------------
    def v1_setup(self, conn, result, proc):
        """Create V1's result table, offset row and batch procedure."""
        q(conn, "DROP TABLE IF EXISTS %s" % result)
        q(conn, self.create_result_sql(result))
        q(conn, "CREATE TABLE IF NOT EXISTS bench_v1_offset "
                "(name text PRIMARY KEY, upto bigint NOT NULL)")
        q(conn, "INSERT INTO bench_v1_offset VALUES (%s, 0) "
                "ON CONFLICT (name) DO UPDATE SET upto = 0", (result,))
        batch_from = ("FROM %s WHERE id > lo AND id <= lo + p_batch" % self.table)
        if self.groups:
            batch_from += " GROUP BY " + ", ".join(g[1] for g in self.groups)
        upsert = self.upsert_sql(result, self.partial_select(None), batch_from)
        q(conn, """
CREATE OR REPLACE PROCEDURE %s(p_hi bigint, p_batch bigint)
LANGUAGE plpgsql AS $proc$
DECLARE
    lo bigint;
BEGIN
    SELECT upto INTO lo FROM bench_v1_offset WHERE name = '%s';
    WHILE lo < p_hi LOOP
        %s;
        UPDATE bench_v1_offset SET upto = lo + p_batch WHERE name = '%s';
        lo := lo + p_batch;
        COMMIT;
    END LOOP;
END
$proc$""" % (proc, result, upsert, result))

    # --- row trigger baseline ---------------------------------------------
    def trigger_setup(self, conn, source, result):
        """Result table plus an AFTER INSERT row trigger that upserts into it."""
        q(conn, "DROP TABLE IF EXISTS %s" % result)
        q(conn, self.create_result_sql(result))
        cols = {g[0]: re.sub(r"\b(ts|key|v)\b", r"NEW.\1", g[1])
                for g in self.groups}
        cols["v"] = "NEW.v"
        upsert = self.upsert_sql(result, self.partial_select(cols), "")
        fn = "%s_trg" % result
        q(conn, """
CREATE OR REPLACE FUNCTION %s() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    %s;
    RETURN NULL;
END
$fn$""" % (fn, upsert))
        q(conn, "CREATE TRIGGER %s AFTER INSERT ON %s FOR EACH ROW "
                "EXECUTE FUNCTION %s()" % (fn, source, fn))


def make_workloads(rows):
    """The workloads; W3's key count scales with the row count.  G4 and G1
    (few groups, for row mode) are run only when --workloads names them."""
    keys3 = max(1, int(2000000 * rows / 10000000))
    w1 = Workload(
        "w1", "events", 10000,
        [("key", "key", "int")],
        [("cnt", "count", None, "bigint"), ("s", "sum", "v", "float8"),
         ("mn", "min", "v", "float8"), ("mx", "max", "v", "float8"),
         ("av", "avg", "v", "float8")],
        "W1: 10,000 keys; count, sum, min, max, avg")
    w2 = Workload(
        "w2", "events", 10000,
        [("key", "key", "int"),
         ("minute", "date_bin('1 minute', ts, 'epoch')", "timestamptz")],
        [("cnt", "count", None, "bigint"), ("s", "sum", "v", "float8")],
        "W2: key x minute over 1 hour (~600k groups); count, sum")
    w3 = Workload(
        "w3", "events3", keys3,
        [("key", "key", "int")],
        [("cnt", "count", None, "bigint"), ("s", "sum", "v", "float8")],
        "W3: %s keys; count, sum" % format(keys3, ","))
    # The same jobs over copies of their sources partitioned BY HASH (key)
    # into 8 leaves, which stp reads leaf by leaf.
    w1h = Workload(w1.name + "h", "events_h", w1.keys, w1.groups, w1.aggs,
                   w1.title.replace("W1:", "W1h: W1 on 8 hash leaves;"))
    w3h = Workload(w3.name + "h", "events3_h", w3.keys, w3.groups, w3.aggs,
                   w3.title.replace("W3:", "W3h: W3 on 8 hash leaves;"))
    w1h.name, w3h.name = "w1h", "w3h"
    g4 = Workload(
        "g4", "events", 10000,
        [("k4", "key % 4", "int")],
        [("cnt", "count", None, "bigint"), ("s", "sum", "v", "float8")],
        "G4: 4 groups (key % 4) of events; count, sum")
    g1 = Workload(
        "g1", "events", 10000, [],
        [("cnt", "count", None, "bigint"), ("s", "sum", "v", "float8")],
        "G1: one group (no GROUP BY) of events; count, sum")
    return {"w1": w1, "w2": w2, "w3": w3, "w1h": w1h, "w3h": w3h, "g4": g4, "g1": g1}


HASH_LEAVES = 8


def create_hash_source(conn, table):
    """An empty source of the benchmark's shape, PARTITION BY HASH (key)
    into HASH_LEAVES leaves; the bigserial default and its sequence are the
    parent's, and every leaf inherits them."""
    q(conn, "DROP TABLE IF EXISTS %s CASCADE" % table)
    q(conn, "CREATE TABLE %s (id bigserial, ts timestamptz, key int, v float8) "
            "PARTITION BY HASH (key)" % table)
    for i in range(HASH_LEAVES):
        q(conn, "CREATE TABLE %s_%d PARTITION OF %s FOR VALUES WITH "
                "(MODULUS %d, REMAINDER %d)" % (table, i, table, HASH_LEAVES, i))


def create_source(conn, table, with_pk=True):
    """An empty source table of the benchmark's shape (bigserial, CACHE 1)."""
    q(conn, "DROP TABLE IF EXISTS %s CASCADE" % table)
    q(conn, "CREATE TABLE %s (id bigserial%s, ts timestamptz, key int, v float8)"
      % (table, " PRIMARY KEY" if with_pk else ""))


def load_source(conn, table, rows, keys, seed):
    """Fill a source table with rows rows over keys keys, deterministically.

    Event time covers one hour, in id order.  Ids are given explicitly
    (1..rows) and the sequence is then set past them: the same rows as
    inserting through the default, much faster.
    """
    hashed = table.endswith("_h")
    if hashed:
        create_hash_source(conn, table)
    else:
        create_source(conn, table, with_pk=False)
    q(conn, "SELECT setseed(%s)", (seed,))
    q(conn, """
INSERT INTO {t} (id, ts, key, v)
SELECT i,
       timestamptz '{base}' + make_interval(secs => (i - 1) * 3600.0 / {n}),
       1 + floor(random() * {k})::int,
       round((random() * 1000)::numeric, 3)::float8
FROM generate_series(1, {n}) AS i""".format(t=table, base=BASE_TS, n=rows,
                                               k=keys))
    # A partitioned table's primary key must contain its partition key: each
    # leaf gets an index on id instead, as the plain table's key.
    if hashed:
        q(conn, "CREATE INDEX %s_id ON %s (id)" % (table, table))
    else:
        q(conn, "ALTER TABLE %s ADD PRIMARY KEY (id)" % table)
    q(conn, "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
      (table, rows))
    q(conn, "VACUUM (FREEZE, ANALYZE) %s" % table)


def prepare_sources(workloads, rows):
    """Load every source table the chosen workloads need; prewarm them."""
    conn = connect()
    q(conn, "CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    # A hash-partitioned copy holds the same rows as its plain table.
    seeds = {"events": 0.42, "events3": 0.43, "events_h": 0.42,
             "events3_h": 0.43}
    done = set()
    for w in workloads:
        if w.table in done:
            continue
        log("loading %s: %s rows over %s keys" % (w.table, format(rows, ","),
                                                   format(w.keys, ",")))
        load_source(conn, w.table, rows, w.keys, seeds[w.table])
        if w.table.endswith("_h"):
            q(conn, "SELECT pg_prewarm(c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "OR c.oid IN (SELECT indexrelid FROM pg_index "
                    "WHERE indrelid = i.inhrelid) "
                    "WHERE i.inhparent = %s::regclass", (w.table,))
        else:
            q(conn, "SELECT pg_prewarm(%s), pg_prewarm(%s)",
              (w.table, w.table + "_pkey"))
        done.add(w.table)
    sizes = {t: q1(conn, "SELECT pg_size_pretty(pg_total_relation_size(%s))",
                   (t,)) for t in done}
    conn.close()
    return sizes
