
# Copyright (c) stp authors

# 013_row_merge.pl: row mode, two partitions merging into the same result
# rows at the same time.
#
# In row mode (strategy 'rows') every partition may merge into every
# group.  Two partitions that insert the same new group at once must end
# with one row that counts both; two that merge into the same existing
# groups must wait for each other in key order, never deadlock; and a
# partition killed while it holds row locks and waits for another must
# lose nothing and count nothing twice after the crash restart.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $node = StpTest::new_node('row_merge', extra => 'restart_after_crash = on');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION stp;
CREATE TABLE events (id bigserial PRIMARY KEY, k int, v int);
});

my $query = q{SELECT k, count(*) AS cnt, sum(v) AS s, min(v) AS mn, max(v) AS mx, avg(v) AS a
FROM events GROUP BY k};
my $cols = 'k::text, cnt::text, s::text, mn::text, mx::text, a::text';

# Two partitions, ranges of 100 ids: ids 1-100 are partition 0's, 101-200
# partition 1's, and so on.
$node->safe_psql('postgres',
	"SELECT stp_start_job('rm', \$\$$query\$\$, 'r', partitions => 2, batch_size => 200, strategy => 'rows')"
);
is($node->safe_psql('postgres', "SELECT strategy FROM stp.jobs WHERE job_name = 'rm'"),
	'rows', 'the job runs in row mode');

sub insert_rows
{
	my ($n, $keys) = @_;
	$node->safe_psql('postgres',
		"INSERT INTO events (k, v) SELECT $keys, i FROM generate_series(1, $n) i");
}

sub result_equals_batch
{
	my ($label) = @_;
	my ($missing_in_batch, $missing_in_result) =
	  StpTest::result_vs_batch_sql('r', $query, $cols);
	is( $node->safe_psql(
			'postgres', "SELECT ($missing_in_batch) || ' ' ||
			($missing_in_result) || ' ' ||
			(SELECT count(*) FROM r) - (SELECT count(*) FROM ($query) z)"),
		'0 0 0',
		"$label: result equals the batch query");
}

# Both workers wait for a lock that $pid holds.
sub both_workers_wait_for
{
	my ($label, $pid) = @_;
	ok( $node->poll_query_until(
			'postgres', qq{SELECT count(*) FROM pg_stat_activity
			WHERE backend_type = 'stp worker' AND $pid = ANY (pg_blocking_pids(pid))}, '2'),
		"$label: both partitions wait for the session");
}

# Every partition read exactly its own ranges, and none has an error.
sub partitions_read_own_ranges
{
	my ($label) = @_;
	is( $node->safe_psql(
			'postgres', q{SELECT string_agg(partition || ':' ||
				(rows_processed = (SELECT count(*) FROM events WHERE ((id - 1) / 100) % 2 = s.partition))::text
				|| ':' || coalesce(last_error, 'ok'), ' ' ORDER BY partition)
			FROM stp.job_status s WHERE job_name = 'rm'}),
		'0:true:ok 1:true:ok',
		"$label: each partition aggregated exactly the rows of its own ranges, without an error");
}

insert_rows(1000, 'i % 4');
is($node->safe_psql('postgres', "SELECT stp_wait('rm', '60 s')"), 't', 'initial rows: caught up');
result_equals_batch('initial rows');
partitions_read_own_ranges('initial rows');

# 1. Both partitions insert the same new group at once.  A session holds an
# uncommitted insert of group 42 into the result table, so that both
# partitions' upserts of group 42 wait for it; when it rolls back, both
# race to insert the group: one inserts it, the other merges into it.
{
	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	my $pid = $a->query_safe('SELECT pg_backend_pid()');
	$a->query_safe('INSERT INTO r (k, cnt, s, mn, mx, a, _stp_a_sum, _stp_a_count) VALUES (42, 0, 0, 0, 0, 0, 0, 0)');
	insert_rows(400, '42');    # ids 1001-1400: two ranges of each partition
	both_workers_wait_for('new group', $pid);
	$a->query_safe('ROLLBACK');
	$a->quit;
	is($node->safe_psql('postgres', "SELECT stp_wait('rm', '60 s')"), 't', 'new group: caught up');
	is($node->safe_psql('postgres', 'SELECT cnt || \' \' || s FROM r WHERE k = 42'),
		'400 80200', 'new group: one row counts the rows of both partitions once');
	result_equals_batch('new group');
	partitions_read_own_ranges('new group');
}

# 2. Both partitions merge into the same existing groups, which a session
# holds locked: the one that gets the lowest key first takes the others in
# key order; the other waits, and neither deadlocks.
{
	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	my $pid = $a->query_safe('SELECT pg_backend_pid()');
	$a->query_safe('SELECT 1 FROM r WHERE k = 3 FOR UPDATE');
	insert_rows(600, 'i % 4');    # ids 1401-2000
	ok( $node->poll_query_until(
			'postgres', qq{SELECT count(*) >= 1 FROM pg_stat_activity
			WHERE backend_type = 'stp worker' AND $pid = ANY (pg_blocking_pids(pid))}),
		'existing groups: a partition waits for the session');
	usleep(500_000);
	$a->query_safe('COMMIT');
	$a->quit;
	is($node->safe_psql('postgres', "SELECT stp_wait('rm', '60 s')"), 't',
		'existing groups: caught up');
	result_equals_batch('existing groups');
	partitions_read_own_ranges('existing groups');
	ok(!$node->log_contains(qr/ERROR/), 'existing groups: no error in the server log');
}

# 3. A partition is killed while it holds row locks of its merge and waits
# for the other, which waits for a session: after the crash restart
# nothing is lost and nothing counted twice.
{
	my $a = $node->background_psql('postgres');
	$a->query_safe('BEGIN');
	my $pid = $a->query_safe('SELECT pg_backend_pid()');
	$a->query_safe('SELECT 1 FROM r WHERE k = 2 FOR UPDATE');
	insert_rows(400, 'i % 4');    # ids 2001-2400
	# One partition holds groups 0 and 1 and waits for the session; the
	# other waits for group 0, for the first partition.
	ok( $node->poll_query_until(
			'postgres', qq{SELECT count(*) FILTER (WHERE $pid = ANY (pg_blocking_pids(pid))) || ' ' ||
			count(*) FILTER (WHERE cardinality(pg_blocking_pids(pid)) > 0)
			FROM pg_stat_activity WHERE backend_type = 'stp worker'}, '1 2'),
		'crash: one partition waits for the session, the other for it');
	my $victim = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'stp worker' AND $pid = ANY (pg_blocking_pids(pid))");
	my $log_offset = -s $node->logfile;
	kill 'KILL', $victim;
	StpTest::wait_for_crash_restart($node, 'stp worker', $victim, $log_offset, 'a waiting partition');
	eval { $a->quit };
	StpTest::wait_for_workers($node, 'crash', 2);
	is($node->safe_psql('postgres', "SELECT stp_wait('rm', '60 s')"), 't', 'crash: caught up');
	result_equals_batch('crash');
	partitions_read_own_ranges('crash');
	is( $node->safe_psql('postgres', 'SELECT sum(rows_processed) FROM stp.job_status WHERE job_name = \'rm\''),
		'2400', 'crash: the partitions counted every row once');
}

ok(!$node->log_contains(qr/deadlock detected/), 'no deadlock in the log');

$node->stop;
done_testing();
