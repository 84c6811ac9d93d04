
# Copyright (c) stp authors

# 003_out_of_order.pl: ids that commit out of order, and the job's life
# cycle.
#
# A sequence hands out ids in order, but transactions commit in any order.
# A writer that drew id N and has not committed yet must hold the workers
# back: rows with ids above N that committed meanwhile must not be counted
# before N is settled, and N must be counted exactly once when it commits
# (or never, when it rolls back).  Then: stop and resume, drop of a job,
# DROP EXTENSION and DROP DATABASE while jobs run.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $node =
  StpTest::new_node('out_of_order', extra => 'max_prepared_transactions = 5');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION stp;
CREATE TABLE events (id bigserial PRIMARY KEY, k int, v int);
});

my $query = q{SELECT k, count(*) AS cnt, sum(v) AS s, min(v) AS mn, max(v) AS mx, avg(v) AS a
FROM events GROUP BY k};
my $cols = 'k::text, cnt::text, s::text, mn::text, mx::text, a::text';

my $job_id = $node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 3)");

# Rows committed by "B" writers: $n rows over keys 0..9 and a NULL key.
sub insert_rows
{
	my ($n) = @_;
	$node->safe_psql('postgres',
		"INSERT INTO events (k, v) SELECT nullif(i % 11, 10), i FROM generate_series(1, $n) i"
	);
}

sub stp_wait
{
	my ($timeout, $job) = @_;
	$job //= 'j';
	return $node->safe_psql('postgres', "SELECT stp_wait('$job', '$timeout')");
}

# The result table equals the batch query, as multisets of text rows.
sub result_equals_batch
{
	my ($label, $db, $result, $q, $c) = @_;
	$db //= 'postgres';
	$result //= 'r';
	$q //= $query;
	$c //= $cols;
	my ($missing_in_batch, $missing_in_result) =
	  StpTest::result_vs_batch_sql($result, $q, $c);
	is( $node->safe_psql(
			$db, "SELECT ($missing_in_batch) || ' ' ||
			($missing_in_result) || ' ' ||
			(SELECT count(*) FROM $result) - (SELECT count(*) FROM ($q) z)"),
		'0 0 0',
		"$label: result equals the batch query");
}

# Keep a copy of the result table, to show later that it did not change.
sub snapshot_result
{
	$node->safe_psql('postgres',
		"DROP TABLE IF EXISTS snap; CREATE TABLE snap AS SELECT $cols FROM r");
}

sub result_equals_snapshot
{
	my ($label) = @_;
	is( $node->safe_psql(
			'postgres', "SELECT (SELECT count(*) FROM (SELECT $cols FROM r EXCEPT ALL SELECT * FROM snap) x) || ' ' ||
			(SELECT count(*) FROM (SELECT * FROM snap EXCEPT ALL SELECT $cols FROM r) y)"),
		'0 0',
		"$label: result did not change");
}

# How many processes are partition workers of job $id in database $db.
sub workers_of
{
	my ($id, $db) = @_;
	$db //= 'postgres';
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' "
		  . "AND datname = '$db' AND application_name LIKE 'stp job $id partition %'");
}

insert_rows(1000);
is(stp_wait('60 s'), 't', 'initial rows: stp_wait returns true');
result_equals_batch('initial rows');

# 1. A late writer that commits.
{
	snapshot_result();
	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	my $n = $a->query_safe(
		'INSERT INTO events (k, v) VALUES (-1, 1000000) RETURNING id');
	insert_rows(500);
	insert_rows(500);
	is( $node->safe_psql(
			'postgres', "SELECT min(id) > $n FROM events WHERE id <> $n AND id > $n - 1"),
		't',
		'commit: the rows committed after the open writer have higher ids');
	is(stp_wait('1 s'), 'f',
		'commit: stp_wait returns false while the writer with the lower id is open');
	result_equals_snapshot('commit, writer open');
	is( $node->safe_psql(
			'postgres',
			"SELECT bool_and(processed_upto < $n) FROM stp.job_status WHERE job_name = 'j'"),
		't',
		'commit: no partition went past the open id');

	$a->query_safe('COMMIT');
	$a->quit;
	is(stp_wait('60 s'), 't', 'commit: stp_wait returns true once it committed');
	result_equals_batch('commit');
	is($node->safe_psql('postgres', 'SELECT cnt || \' \' || s FROM r WHERE k = -1'),
		'1 1000000', 'commit: the late row is counted exactly once');
}

# 2. A late writer that rolls back.
{
	snapshot_result();
	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	my $n = $a->query_safe(
		'INSERT INTO events (k, v) VALUES (-2, 1) RETURNING id');
	insert_rows(700);
	is(stp_wait('1 s'), 'f',
		'rollback: stp_wait returns false while the writer is open');
	result_equals_snapshot('rollback, writer open');

	$a->query_safe('ROLLBACK');
	$a->quit;
	is(stp_wait('60 s'), 't', 'rollback: stp_wait returns true once it rolled back');
	result_equals_batch('rollback');
	is($node->safe_psql('postgres', 'SELECT count(*) FROM r WHERE k = -2'),
		'0', 'rollback: the rolled back row is not counted');
}

# 3. Two late writers that commit in the opposite order of their ids, one
# of them with a subtransaction that rolled back.
{
	snapshot_result();
	my $a1 = $node->background_psql('postgres');
	my $a2 = $node->background_psql('postgres');
	$a1->query_safe('BEGIN');
	$a1->query_safe('INSERT INTO events (k, v) VALUES (-3, 3)');
	$a2->query_safe('BEGIN');
	$a2->query_safe('SAVEPOINT s');
	$a2->query_safe('INSERT INTO events (k, v) VALUES (-4, 4)');
	$a2->query_safe('ROLLBACK TO SAVEPOINT s');
	$a2->query_safe('INSERT INTO events (k, v) VALUES (-5, 5)');
	insert_rows(300);
	$a2->query_safe('COMMIT');
	$a2->quit;
	is(stp_wait('1 s'), 'f',
		'reverse order: stp_wait returns false while the lower id is open');
	result_equals_snapshot('reverse order, lower id open');

	$a1->query_safe('COMMIT');
	$a1->quit;
	is(stp_wait('60 s'), 't', 'reverse order: stp_wait returns true');
	result_equals_batch('reverse order');
	is( $node->safe_psql(
			'postgres',
			'SELECT string_agg(k || \':\' || cnt, \',\' ORDER BY k) FROM r WHERE k IN (-3, -4, -5)'),
		'-5:1,-3:1',
		'reverse order: both rows counted once, the rolled back subtransaction not at all');
}

# 4. A prepared transaction holds its id until COMMIT PREPARED.
{
	snapshot_result();
	$node->safe_psql('postgres',
		"BEGIN; INSERT INTO events (k, v) VALUES (-6, 6); PREPARE TRANSACTION 'p1'");
	insert_rows(200);
	is(stp_wait('1 s'), 'f',
		'prepared: stp_wait returns false while the transaction is prepared');
	result_equals_snapshot('prepared');
	$node->safe_psql('postgres', "COMMIT PREPARED 'p1'");
	is(stp_wait('60 s'), 't', 'prepared: stp_wait returns true after COMMIT PREPARED');
	result_equals_batch('prepared');
	is($node->safe_psql('postgres', 'SELECT cnt FROM r WHERE k = -6'),
		'1', 'prepared: the prepared row is counted once');
}

# 5. Stop and resume, the stop while the workers wait for an open writer.
{
	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	$a->query_safe('INSERT INTO events (k, v) VALUES (-7, 7)');
	insert_rows(100);
	is(stp_wait('1 s'), 'f', 'stop: the workers wait for the open writer');

	# The stop's transaction stays open for a few launcher rounds.  The
	# launcher, which sees the job running until it commits, starts the
	# workers again, and they wait for the open writer: the commit must
	# stop them as well.
	my $log_offset = -s $node->logfile;
	$node->safe_psql('postgres',
		"BEGIN; SELECT stp_stop_job('j'); SELECT pg_sleep(2.5); COMMIT;");
	my $restarted = () = slurp_file($node->logfile, $log_offset) =~ /stp job "j" partition \d+ started/g;
	note("stop: $restarted workers started while the stop was not committed");
	ok($node->poll_query_until('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' "
			  . "AND application_name LIKE 'stp job $job_id partition %'", '0'),
		'stop: the workers of the job exit');
	is( $node->safe_psql(
			'postgres',
			"SELECT string_agg(DISTINCT state, ',') || ' ' || count(pid) FROM stp.job_status WHERE job_name = 'j'"),
		'stopped 0',
		'stop: every partition shows stopped and no pid');

	$a->query_safe('COMMIT');
	$a->quit;
	insert_rows(400);
	snapshot_result();
	my $progress = $node->safe_psql('postgres',
		"SELECT string_agg(processed_upto::text, ',' ORDER BY partition) FROM stp.job_status WHERE job_name = 'j'");

	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', "SELECT stp_wait('j', '1 s')");
	isnt($ret, 0, 'stop: stp_wait fails on a stopped job');
	like($stderr, qr/job "j" is stopped/, 'stop: stp_wait says the job is stopped');

	# Several launcher rounds: nothing restarts the stopped job.
	usleep(2_000_000);
	is(workers_of($job_id), '0', 'stop: no worker came back');
	result_equals_snapshot('stopped');
	is( $node->safe_psql(
			'postgres',
			"SELECT string_agg(processed_upto::text, ',' ORDER BY partition) FROM stp.job_status WHERE job_name = 'j'"),
		$progress,
		'stop: no partition made progress');

	$node->safe_psql('postgres', "SELECT stp_resume_job('j')");
	is(stp_wait('60 s'), 't', 'resume: stp_wait returns true');
	result_equals_batch('resume');
	is(workers_of($job_id), '3', 'resume: three workers run');
	is($node->safe_psql('postgres', 'SELECT cnt FROM r WHERE k = -7'),
		'1', 'resume: the row of the writer open at the stop is counted once');
}

# 6. An id drawn with nextval() before the INSERT, in the same transaction
# (as ORMs do).  The transaction holds no lock on the source while it holds
# the id, but its row must not be skipped either.  Its own source and job,
# so that the other checks do not depend on it.
{
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE events_nv (id bigserial PRIMARY KEY, k int, v int);
SELECT stp_start_job('jnv', 'SELECT k, count(*) AS cnt, sum(v) AS s FROM events_nv GROUP BY k', 'rnv', partitions => 2);
});
	$node->safe_psql('postgres',
		'INSERT INTO events_nv (k, v) SELECT i % 5, i FROM generate_series(1, 100) i');
	is(stp_wait('60 s', 'jnv'), 't', 'nextval first: initial rows processed');

	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	my $n = $a->query_safe("SELECT nextval('events_nv_id_seq')");
	$node->safe_psql('postgres',
		'INSERT INTO events_nv (k, v) SELECT i % 5, i FROM generate_series(1, 100) i');
	is(stp_wait('1 s', 'jnv'), 'f',
		'nextval first: stp_wait returns false while the transaction holding an id is open');
	$a->query_safe("INSERT INTO events_nv (id, k, v) VALUES ($n, -1, 1)");
	$a->query_safe('COMMIT');
	$a->quit;
	is(stp_wait('60 s', 'jnv'), 't', 'nextval first: stp_wait returns true');
	result_equals_batch('nextval first', 'postgres', 'rnv',
		'SELECT k, count(*) AS cnt, sum(v) AS s FROM events_nv GROUP BY k',
		'k, cnt, s');
	is($node->safe_psql('postgres', 'SELECT cnt FROM rnv WHERE k = -1'),
		'1', 'nextval first: the row is counted once');
	$node->safe_psql('postgres', "SELECT stp_drop_job('jnv', drop_result => true)");
}

# 7. stp_drop_job ends the job's workers; they do not come back.
{
	my $id2 = $node->safe_psql(
		'postgres', qq{
CREATE TABLE events2 (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, k int);
INSERT INTO events2 (k) SELECT i % 7 FROM generate_series(1, 1000) i;
SELECT stp_start_job('j2', 'SELECT k, count(*) AS cnt FROM events2 GROUP BY k', 'r2', partitions => 2);
});
	is(stp_wait('60 s', 'j2'), 't', 'drop: second job processed its rows');
	ok($node->poll_query_until('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' "
			  . "AND application_name LIKE 'stp job $id2 partition %'", '2'),
		'drop: the second job has two workers');

	$node->safe_psql('postgres', "SELECT stp_drop_job('j2')");
	ok($node->poll_query_until('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' "
			  . "AND application_name LIKE 'stp job $id2 partition %'", '0'),
		'drop: the workers of the dropped job exit');
	usleep(2_000_000);
	is(workers_of($id2), '0', 'drop: no worker of the dropped job came back');
	is( $node->safe_psql(
			'postgres',
			"SELECT (SELECT count(*) FROM stp.jobs WHERE job_id = $id2) + (SELECT count(*) FROM stp.partitions WHERE job_id = $id2)"),
		'0',
		'drop: the job is gone from the catalog');
	is($node->safe_psql('postgres', 'SELECT sum(cnt) FROM r2'),
		'1000', 'drop: the result table stays without drop_result');
	is(workers_of($job_id), '3', 'drop: the other job keeps its workers');

	insert_rows(100);
	is(stp_wait('60 s'), 't', 'drop: the other job still runs');
	result_equals_batch('after dropping another job');
}

# 8. DROP EXTENSION ends the workers of its database.
{
	$node->safe_psql('postgres', 'CREATE DATABASE dbx');
	my $idx = $node->safe_psql(
		'dbx', q{
CREATE EXTENSION stp;
CREATE TABLE ev (id bigserial PRIMARY KEY, k int);
INSERT INTO ev (k) SELECT i % 3 FROM generate_series(1, 1000) i;
SELECT stp_start_job('jx', 'SELECT k, count(*) AS cnt FROM ev GROUP BY k', 'rx', partitions => 2);
});
	is($node->safe_psql('dbx', "SELECT stp_wait('jx', '60 s')"),
		't', 'drop extension: the job in dbx runs');
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' AND datname = 'dbx'",
			'2'),
		'drop extension: dbx has two workers');

	$node->safe_psql('dbx', 'DROP EXTENSION stp');
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' AND datname = 'dbx'",
			'0'),
		'drop extension: the workers of dbx exit');
	usleep(2_000_000);
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' AND datname = 'dbx'"),
		'0',
		'drop extension: no worker came back in dbx');
	is($node->safe_psql('dbx', 'SELECT sum(cnt) FROM rx'),
		'1000', 'drop extension: the result table stays');
	is(workers_of($job_id), '3', 'drop extension: the job in postgres keeps its workers');
}

# 9. DROP DATABASE while a job runs in it, with a backlog to work on.
{
	$node->safe_psql('postgres', 'CREATE DATABASE dby');
	$node->safe_psql(
		'dby', q{
CREATE EXTENSION stp;
CREATE TABLE ev (id bigserial PRIMARY KEY, k int);
SELECT stp_start_job('jy', 'SELECT k, count(*) AS cnt FROM ev GROUP BY k', 'ry', partitions => 2, batch_size => 100);
});
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' AND datname = 'dby'",
			'2'),
		'drop database: dby has two workers');
	$node->safe_psql('dby',
		'INSERT INTO ev (k) SELECT i FROM generate_series(1, 200000) i');

	my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE dby');
	is($ret, 0, 'drop database: DROP DATABASE succeeds while the job runs');
	is($stderr, '', 'drop database: without an error');
	is( $node->safe_psql(
			'postgres', "SELECT count(*) FROM pg_database WHERE datname = 'dby'"),
		'0',
		'drop database: the database is gone');
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'stp%' AND datname = 'dby'",
			'0'),
		'drop database: no stp process is left in it');
	usleep(2_000_000);
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp launcher'"),
		'1',
		'drop database: the launcher is still there');

	# The job in postgres still works, and a database with the same name
	# can be created and used again.
	insert_rows(100);
	is(stp_wait('60 s'), 't', 'drop database: the job in postgres still runs');
	result_equals_batch('after DROP DATABASE');

	$node->safe_psql('postgres', 'CREATE DATABASE dby');
	$node->safe_psql(
		'dby', q{
CREATE EXTENSION stp;
CREATE TABLE ev (id bigserial PRIMARY KEY, k int);
INSERT INTO ev (k) SELECT i % 4 FROM generate_series(1, 1000) i;
SELECT stp_start_job('jy', 'SELECT k, count(*) AS cnt FROM ev GROUP BY k', 'ry', partitions => 2);
});
	is($node->safe_psql('dby', "SELECT stp_wait('jy', '60 s')"),
		't', 'drop database: a new job in a new database of the same name runs');
	result_equals_batch('new database', 'dby', 'ry',
		'SELECT k, count(*) AS cnt FROM ev GROUP BY k', 'k, cnt');
}

$node->stop;
done_testing();
