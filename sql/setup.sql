-- Shared helpers for the regression tests.

-- stp_test_diff(result, cols, query) counts the rows in the symmetric
-- difference between the result table's columns and the batch query.
-- EXCEPT ALL treats NULLs as equal, as GROUP BY does.
CREATE FUNCTION stp_test_diff(result regclass, cols text, query text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM ((SELECT %s FROM %s EXCEPT ALL (%s)) '
                   'UNION ALL ((%s) EXCEPT ALL SELECT %s FROM %s)) d',
                   cols, result, query, query, cols, result) INTO n;
    RETURN n;
END $$;

-- The result types of a table's columns, for checking type fidelity.
CREATE FUNCTION stp_test_types(result regclass)
RETURNS TABLE (col name, type text) LANGUAGE sql AS $$
    SELECT attname, format_type(atttypid, atttypmod)
    FROM pg_attribute WHERE attrelid = result AND attnum > 0 AND NOT attisdropped
    ORDER BY attnum
$$;

-- Wait until a job's partitions are all failed; returns their last errors.
CREATE FUNCTION stp_test_failed(job text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..600 LOOP
        IF NOT EXISTS (SELECT 1 FROM stp.job_status WHERE job_name = job AND state <> 'failed') THEN
            RETURN QUERY SELECT DISTINCT last_error FROM stp.job_status WHERE job_name = job;
            RETURN;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RAISE EXCEPTION 'job % did not fail', job;
END $$;

SELECT extname FROM pg_extension WHERE extname = 'stp';
SHOW shared_preload_libraries;
