-- A hostile role must not get the extension owner's rights through stp's
-- functions.  It puts an operator "=" for text and for integer first on
-- its search_path; whenever the operator runs as another role, it makes
-- the hostile role a superuser.  Each route is called, then the role must
-- still not be a superuser, and the functions must still work.

-- Whether the hostile role became a superuser, read with a pinned path.
CREATE FUNCTION sec_escalated() RETURNS boolean LANGUAGE sql STABLE
SET search_path = pg_catalog
AS $$SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_stp_evil'$$;

CREATE ROLE regress_stp_evil LOGIN;
CREATE SCHEMA regress_evil AUTHORIZATION regress_stp_evil;
CREATE TABLE sec_src (id bigserial, k int, t text);
INSERT INTO sec_src (k, t) SELECT g % 7, 't' || (g % 3) FROM generate_series(1, 500) g;
GRANT SELECT ON sec_src TO regress_stp_evil;

-- A job of another role, which the hostile role may wait for.
SELECT stp_start_job('sec_admin', $$SELECT k, count(*) AS n FROM sec_src GROUP BY k$$,
                     'sec_admin') > 0 AS started;

SET ROLE regress_stp_evil;
CREATE FUNCTION regress_evil.eq_text(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'regress_stp_evil' THEN
        EXECUTE 'ALTER ROLE regress_stp_evil SUPERUSER';
    END IF;
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE FUNCTION regress_evil.eq_int(int, int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'regress_stp_evil' THEN
        EXECUTE 'ALTER ROLE regress_stp_evil SUPERUSER';
    END IF;
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR regress_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_evil.eq_text);
CREATE OPERATOR regress_evil.= (LEFTARG = int, RIGHTARG = int, FUNCTION = regress_evil.eq_int);

-- The hostile role's own job, created before the operators are in its path.
SELECT stp_start_job('sec_mine', $$SELECT t, count(*) AS n, sum(k) AS s FROM public.sec_src GROUP BY t$$,
                     'regress_evil.sec_mine', partitions => 2) > 0 AS started;

SET search_path = regress_evil, pg_catalog, public;

-- stp_wait needs no ownership.
SELECT stp_wait('sec_admin', '30 s');
SELECT sec_escalated();
RESET ROLE;
ALTER ROLE regress_stp_evil NOSUPERUSER;
SET ROLE regress_stp_evil;

SELECT stp_wait('sec_mine', '30 s');
SELECT sec_escalated();
RESET ROLE;
ALTER ROLE regress_stp_evil NOSUPERUSER;
SET ROLE regress_stp_evil;

-- Stop and resume of one's own job.
SELECT stp_stop_job('sec_mine');
SELECT sec_escalated();
RESET ROLE;
ALTER ROLE regress_stp_evil NOSUPERUSER;
SET ROLE regress_stp_evil;

SELECT stp_resume_job('sec_mine');
SELECT sec_escalated();
RESET ROLE;
ALTER ROLE regress_stp_evil NOSUPERUSER;
SET ROLE regress_stp_evil;

-- The functions still work under the hostile path.
RESET ROLE;
INSERT INTO public.sec_src (k, t) SELECT g % 5, 't' || (g % 4) FROM generate_series(1, 300) g;
SET ROLE regress_stp_evil;
SELECT stp_wait('sec_mine', '30 s');
SELECT stp_test_diff('regress_evil.sec_mine', 't, n, s',
       'SELECT t, count(*), sum(k) FROM public.sec_src GROUP BY t');
SELECT sec_escalated();

-- TRUNCATE of one's own job's result table fails the job.
TRUNCATE regress_evil.sec_mine;
SELECT sec_escalated();
RESET ROLE;
ALTER ROLE regress_stp_evil NOSUPERUSER;
SET ROLE regress_stp_evil;
SELECT partition, state, last_error FROM stp.job_status WHERE job_name = 'sec_mine' ORDER BY partition;

-- Dropping and creating a job.
SELECT stp_drop_job('sec_mine', true);
SELECT sec_escalated();
RESET ROLE;
ALTER ROLE regress_stp_evil NOSUPERUSER;
SET ROLE regress_stp_evil;

SELECT stp_start_job('sec_mine2', $$SELECT t, count(*) AS n FROM public.sec_src WHERE k > 2 GROUP BY t$$,
                     'regress_evil.sec_mine2', partitions => 2) > 0 AS started;
SELECT sec_escalated();
RESET ROLE;
ALTER ROLE regress_stp_evil NOSUPERUSER;
SET ROLE regress_stp_evil;
SELECT stp_wait('sec_mine2', '30 s');
SELECT sec_escalated();
SELECT count(*) AS differences FROM (
    (SELECT t, n FROM regress_evil.sec_mine2
     EXCEPT SELECT t, count(*) FROM public.sec_src WHERE k > 2 GROUP BY t)
    UNION ALL
    (SELECT t, count(*) FROM public.sec_src WHERE k > 2 GROUP BY t
     EXCEPT SELECT t, n FROM regress_evil.sec_mine2)) d;
SELECT stp_drop_job('sec_mine2', true);

RESET ROLE;
RESET search_path;
SELECT sec_escalated();
SELECT stp_drop_job('sec_admin', true);
DROP SCHEMA regress_evil CASCADE;
DROP TABLE sec_src;
DROP ROLE regress_stp_evil;
DROP FUNCTION sec_escalated();
