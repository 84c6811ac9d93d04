/* stp--1.1--1.2.sql: upgrade of the stp extension from 1.1 to 1.2 */

\echo Use "ALTER EXTENSION stp UPDATE TO '1.2'" to load this file. \quit

-- ==== hop: hopping windows with panes ====

-- The starts of the hopping windows of size "size", sliding by "slide"
-- from "origin", that hold ts: a row lies in the windows
-- [start, start + size) with start = origin + k * slide.  Written in FROM,
-- FROM events, stp.hop(ts, '1 minute', '10 seconds') AS w, and grouped by.
CREATE FUNCTION stp.hop(ts timestamptz, size interval, slide interval,
                        origin timestamptz DEFAULT '1970-01-01 00:00:00+00')
RETURNS SETOF timestamptz
AS 'MODULE_PATHNAME', 'stp_hop'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE ROWS 6;

CREATE FUNCTION stp.hop(ts timestamp, size interval, slide interval,
                        origin timestamp DEFAULT '1970-01-01 00:00:00')
RETURNS SETOF timestamp
AS 'MODULE_PATHNAME', 'stp_hop'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE ROWS 6;

-- The pane of ts: the bin of width gcd(size, slide) from origin, which a
-- job keeps per group and combines into windows when its result is read.
CREATE FUNCTION stp.hop_pane(ts timestamptz, size interval, slide interval,
                             origin timestamptz DEFAULT '1970-01-01 00:00:00+00')
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'stp_hop_pane'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION stp.hop_pane(ts timestamp, size interval, slide interval,
                             origin timestamp DEFAULT '1970-01-01 00:00:00')
RETURNS timestamp
AS 'MODULE_PATHNAME', 'stp_hop_pane'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Merges the float8 variance states {N, Sx, Sxx} of a window's panes.
CREATE AGGREGATE stp.float8_merge_state(float8[]) (
    SFUNC = pg_catalog.float8_combine,
    STYPE = pg_catalog.float8[],
    INITCOND = '{0,0,0}',
    COMBINEFUNC = pg_catalog.float8_combine,
    PARALLEL = SAFE
);

-- ==== end of hop ====
