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
