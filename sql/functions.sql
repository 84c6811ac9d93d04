-- Every SQL function of stp, and the status view.
CREATE TABLE clicks (id bigserial PRIMARY KEY, page text, ms int);
INSERT INTO clicks (page, ms) SELECT 'p' || (g % 5), g FROM generate_series(1, 1000) g;

-- stp_start_job with defaults returns the job id.
SELECT stp_start_job('clicks_per_page',
                     $$SELECT page, count(*) AS n, sum(ms) AS total FROM clicks GROUP BY page$$,
                     'clicks_per_page') > 0 AS started;
SELECT stp_wait('clicks_per_page');
SELECT * FROM clicks_per_page ORDER BY page;
SELECT stp_test_diff('clicks_per_page', 'page, n, total',
       'SELECT page, count(*), sum(ms) FROM clicks GROUP BY page');

-- The catalog row and the status view.
SELECT job_name, source, order_column, sequence, result_table, partitions,
       batch_size, poll_interval, key_names, key_exprs, agg_names, agg_kinds, agg_args, state
FROM stp.jobs;
SELECT job_name, partition, pid IS NOT NULL AS has_pid, state IN ('idle', 'running') AS alive,
       processed_upto, rows_processed, rows_behind, last_batch_at IS NOT NULL AS batched, last_error
FROM stp.job_status;

-- New rows are picked up.
INSERT INTO clicks (page, ms) VALUES ('p1', 5), ('p9', 7);
SELECT stp_wait('clicks_per_page', '30 s');
SELECT * FROM clicks_per_page WHERE page IN ('p1', 'p9') ORDER BY page;

-- Stop: workers leave, progress stays.
SELECT stp_stop_job('clicks_per_page');
SELECT state, pid FROM stp.job_status WHERE job_name = 'clicks_per_page';
SELECT stp_stop_job('clicks_per_page');
INSERT INTO clicks (page, ms) VALUES ('p9', 100);
SELECT * FROM clicks_per_page WHERE page = 'p9';
SELECT stp_wait('clicks_per_page', '1 s');

-- Resume: the rows inserted while stopped are counted once.
SELECT stp_resume_job('clicks_per_page');
SELECT stp_wait('clicks_per_page', '30 s');
SELECT * FROM clicks_per_page WHERE page = 'p9';
SELECT stp_test_diff('clicks_per_page', 'page, n, total',
       'SELECT page, count(*), sum(ms) FROM clicks GROUP BY page');

-- Every option spelled out: order column, start 'now', small batches, 2 partitions.
INSERT INTO clicks (page, ms) VALUES ('before', 1);
SELECT stp_start_job(job_name => 'recent_clicks',
                     query => $$SELECT page, count(*) AS n FROM clicks GROUP BY page$$,
                     result_table => 'public.recent_clicks',
                     partitions => 2,
                     order_column => 'id',
                     start_from => 'now',
                     batch_size => 3,
                     poll_interval => '10 ms') > 0 AS started;
INSERT INTO clicks (page, ms) SELECT 'after' || (g % 2), g FROM generate_series(1, 20) g;
SELECT stp_wait('recent_clicks', '30 s');
SELECT * FROM recent_clicks ORDER BY page;
SELECT sum(rows_processed) AS rows, count(*) AS partitions FROM stp.job_status WHERE job_name = 'recent_clicks';

-- Drop keeps the result table unless asked.
SELECT stp_drop_job('recent_clicks');
SELECT count(*) FROM stp.jobs WHERE job_name = 'recent_clicks';
SELECT count(*) FROM stp.partitions p WHERE NOT EXISTS (SELECT 1 FROM stp.jobs j WHERE j.job_id = p.job_id);
SELECT count(*) FROM recent_clicks;
SELECT stp_drop_job('clicks_per_page', drop_result => true);
SELECT to_regclass('clicks_per_page');
SELECT count(*) FROM stp.jobs;

-- The workers of dropped jobs are gone.
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' AND datname = current_database();

DROP TABLE recent_clicks, clicks;
