/* stp--1.0--1.1.sql: upgrade of the stp extension from 1.0 to 1.1 */

\echo Use "ALTER EXTENSION stp UPDATE TO '1.1'" to load this file. \quit

-- The creating session's values of the settings that change what a job's
-- expressions evaluate to.  Jobs created under 1.0 recorded only their
-- TimeZone, which stays in stp.jobs.timezone.
ALTER TABLE stp.jobs ADD COLUMN settings text[] NOT NULL DEFAULT '{}';

-- ---- Query shapes (FILTER, result views, more aggregates) ----

-- The FILTER condition of each aggregate in agg_names, NULL where it has
-- none; the whole column is NULL for jobs created without it.
ALTER TABLE stp.jobs ADD COLUMN agg_filters text[];

-- The view that presents the output of a job whose query computes with its
-- aggregates, filters (HAVING) or orders its groups, or has no GROUP BY;
-- result_table is then the table that keeps the state of its groups.  NULL
-- when the result table is the query's output itself.
ALTER TABLE stp.jobs ADD COLUMN result_view regclass;

-- The partial state of PostgreSQL's float8 variance and stddev aggregates,
-- {N, Sx, Sxx}: a job keeps it per group, merges it with float8_combine and
-- presents it with the aggregate's own final function.
CREATE AGGREGATE stp.float8_accum_state(float8) (
    SFUNC = pg_catalog.float8_accum,
    STYPE = pg_catalog.float8[],
    INITCOND = '{0,0,0}',
    COMBINEFUNC = pg_catalog.float8_combine,
    PARALLEL = SAFE
);
