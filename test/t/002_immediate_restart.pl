
# Copyright (c) stp authors

# 002_immediate_restart.pl: exactly once across immediate shutdowns.
#
# An immediate shutdown (SIGQUIT to every process, no checkpoint, WAL
# buffers not flushed) throws away the commits that workers made with
# synchronous_commit = off.  Their results and their progress are lost
# together, so the rows are simply processed again.  The server is stopped
# this way while a job backfills a preloaded backlog, right after a second
# job was created (before its workers ran), and while writers insert.
# Afterwards both jobs' result tables must equal their batch queries
# exactly.
#
# STP_SOAK=1 runs more restarts and more rows.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use POSIX ();

my $soak = ($ENV{STP_SOAK} // '') eq '1';

my $backlog_rows = $soak ? 2_000_000 : 1_000_000;
my $live_restarts = $soak ? 8 : 2;
my $writers = 2;
my $rows_per_tx = 20;

my $node = PostgreSQL::Test::Cluster->new('immediate_restart');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'stp'
max_worker_processes = 24
stp.launcher_naptime = 500
log_statement = none
});
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION stp');

# The source, as in 001: NULL-able keys and values; w and s tag each writer
# transaction.
$node->safe_psql(
	'postgres', q{
CREATE TABLE events (
	id bigserial PRIMARY KEY,
	k int,
	tag text,
	v int,
	n numeric,
	w int NOT NULL,
	s int NOT NULL
);
CREATE INDEX ON events (w, s);
});

sub insert_sql
{
	my ($w, $s, $rows) = @_;
	return qq{
INSERT INTO events (k, tag, v, n, w, s)
SELECT CASE WHEN random() < 0.1 THEN NULL ELSE (random() * 20000)::int END,
       (ARRAY['a', 'b', 'c', NULL])[1 + floor(random() * 4)::int],
       CASE WHEN random() < 0.2 THEN NULL ELSE (random() * 2e9 - 1e9)::int END,
       CASE WHEN random() < 0.1 THEN NULL ELSE round((random() * 1000 - 500)::numeric, 2) END,
       $w, $s
FROM generate_series(1, $rows)};
}

$node->safe_psql('postgres', insert_sql(0, 1, $backlog_rows));

# Job j: three partitions over many groups.  Job j2: two partitions over
# few groups, so that its upserts keep updating the same rows.
my $query = q{SELECT k, tag, count(*) AS cnt, count(v) AS cnt_v, sum(v) AS s,
       sum(n) AS sn, min(v) AS mn, max(n) AS mx, avg(v) AS a
FROM events GROUP BY k, tag};
my $query2 = q{SELECT tag, count(*) AS cnt, sum(n) AS sn, avg(n) AS an, min(n) AS mn
FROM events GROUP BY tag};

$node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 3, batch_size => 1000)");

my $workers_total = 3;

sub wait_for_workers
{
	my ($label) = @_;
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker'",
			$workers_total),
		"$label: $workers_total partition workers run");
}

my $restarts_done = 0;
my $inserted_extra = 0;    # rows inserted by hand, besides backlog and writers

# Stop the server in immediate mode and start it again.
sub immediate_restart
{
	my ($label) = @_;
	$node->stop('immediate');
	$node->start;
	$restarts_done++;
	wait_for_workers($label);
}

# Writers in forked processes, one psql per transaction (see 001): "ok"
# means committed, "maybe" is resolved at the end.
my $stopfile = $PostgreSQL::Test::Utils::tmp_check . "/002_stop_writers";
unlink $stopfile;
my $connstr = $node->connstr('postgres');
my $parent_pid = $$;
my @writer_pids;
my @writer_logs;

END
{
	if ($$ == $parent_pid)
	{
		kill 'TERM', @writer_pids if @writer_pids;
		waitpid($_, 0) for @writer_pids;
	}
}

sub start_writers
{
	for my $w (1 .. $writers)
	{
		my $log = $PostgreSQL::Test::Utils::tmp_check . "/002_writer_$w.log";
		unlink $log;
		push @writer_logs, $log;
		my $pid = fork();
		die "fork failed: $!" unless defined $pid;
		if ($pid == 0)
		{
			eval {
				open my $out, '>', $log or die;
				$out->autoflush(1);
				open STDOUT, '>', '/dev/null';
				open STDERR, '>', '/dev/null';
				my $s = 0;
				while (!-e $stopfile && getppid() == $parent_pid)
				{
					$s++;
					my $rc = system('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
						'-d', $connstr, '-c', insert_sql($w, $s, $rows_per_tx));
					if ($rc == 0)
					{
						print $out "ok $w $s\n";
					}
					else
					{
						print $out "maybe $w $s\n";
						usleep(50_000);
					}
				}
				close $out;
			};
			POSIX::_exit($@ ? 1 : 0);
		}
		push @writer_pids, $pid;
	}
}

# 1. Immediate shutdown during the backfill of the backlog.
wait_for_workers('start');
ok( $node->poll_query_until(
		'postgres', qq{SELECT count(*) FROM stp.job_status
		WHERE job_name = 'j' AND processed_upto > 0 AND processed_upto < $backlog_rows}
		  . ' AND pid IS NOT NULL', '3'),
	'every partition of j is inside the backlog');
$node->stop('immediate');
$node->start;
$restarts_done++;
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM stp.job_status WHERE job_name = 'j' AND processed_upto < $backlog_rows"
	),
	'3',
	'the backfill was in progress at the restart');
wait_for_workers('restart in backfill');

# 2. Immediate shutdown right after a job was created, before its workers
# could get going; the launcher must start them after the restart.
$node->safe_psql('postgres',
	"SELECT stp_start_job('j2', \$\$$query2\$\$, 'r2', partitions => 2, batch_size => 5000)");
$workers_total = 5;
immediate_restart('restart after creating j2');

# 3. Immediate shutdowns while writers insert.  Before each one, both jobs
# catch up, so that the workers follow the writers live.
start_writers();
for my $i (1 .. $live_restarts)
{
	$node->poll_query_until('postgres',
		'SELECT count(*) > 0 FROM events WHERE w > 0')
	  or die 'the writers do not write';
	is( $node->safe_psql(
			'postgres', "SELECT stp_wait('j', '120 s') AND stp_wait('j2', '120 s')"),
		't',
		"live restart $i: both jobs caught up with the writers");
	usleep(200_000 + int(rand(1_000_000)));
	immediate_restart("live restart $i");
}

# 4. Immediate shutdown while the workers wait for an open writer
# transaction that drew an id below the rows committed after it.  The crash
# aborts it: its rows never count, and the workers must not wait for it
# after the restart.
my $open = $node->background_psql('postgres', on_error_stop => 1);
$open->query_safe('BEGIN');
$open->query_safe(
	"INSERT INTO events (k, tag, v, n, w, s) VALUES (-1, 'open', 1, 1, -1, 1)");
$node->safe_psql('postgres',
	"INSERT INTO events (k, tag, v, n, w, s) VALUES (-2, 'after', 2, 2, -2, 1)");
is($node->safe_psql('postgres', "SELECT stp_wait('j', '1 s')"),
	'f', 'workers wait for the open writer transaction');
immediate_restart('restart with an open writer transaction');
$open->quit;    # its connection died with the server
$inserted_extra = 1;

usleep(1_000_000);
open my $fh, '>', $stopfile or die;
close $fh;
for my $pid (@writer_pids)
{
	waitpid($pid, 0);
	is($? >> 8, 0, "writer process $pid exited cleanly");
}
@writer_pids = ();

# Resolve what was inserted.
my (@ok, @maybe);
for my $log (@writer_logs)
{
	open my $in, '<', $log or die "cannot read $log: $!";
	while (my $line = <$in>)
	{
		if ($line =~ /^ok (\d+) (\d+)$/) { push @ok, "($1,$2)"; }
		elsif ($line =~ /^maybe (\d+) (\d+)$/) { push @maybe, "($1,$2)"; }
	}
	close $in;
}
note scalar(@ok) . " confirmed writer transactions, "
  . scalar(@maybe) . " unconfirmed";
cmp_ok(scalar(@ok), '>', 0, 'writers committed transactions');

$node->safe_psql('postgres',
	'CREATE TABLE writer_tx (w int, s int, confirmed bool, PRIMARY KEY (w, s))');
$node->safe_psql('postgres',
	'INSERT INTO writer_tx SELECT w, s, true FROM (VALUES ' . join(',', @ok) . ') x(w, s)');
$node->safe_psql('postgres',
	'INSERT INTO writer_tx SELECT w, s, false FROM (VALUES ' . join(',', @maybe) . ') x(w, s)')
  if @maybe;

is( $node->safe_psql(
		'postgres',
		'SELECT count(*) FROM events e JOIN writer_tx t USING (w, s) WHERE t.confirmed'),
	scalar(@ok) * $rows_per_tx,
	'every confirmed writer transaction is in the source');
is( $node->safe_psql(
		'postgres', qq{SELECT count(*) FROM (
		SELECT w, s, count(*) FROM events WHERE w > 0 GROUP BY w, s
		HAVING count(*) <> $rows_per_tx) x}),
	'0',
	'every writer transaction in the source is whole');
my $maybe_committed = $node->safe_psql('postgres',
	'SELECT count(DISTINCT (w, s)) FROM events e JOIN writer_tx t USING (w, s) WHERE NOT t.confirmed'
);
my $inserted =
  $backlog_rows + (scalar(@ok) + $maybe_committed) * $rows_per_tx + $inserted_extra;
note "$maybe_committed unconfirmed transactions committed; $inserted rows inserted";
is($node->safe_psql('postgres', 'SELECT count(*) FROM events'),
	$inserted, 'the source holds exactly the rows inserted');

# Both jobs catch up and equal their batch queries.
sub check_job
{
	my ($job, $result, $q, $cols, $types) = @_;

	is($node->safe_psql('postgres', "SELECT stp_wait('$job', '120 s')"),
		't', "$job: stp_wait returns true after the restarts");
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM stp.job_status WHERE job_name = '$job' AND state IN ('failed', 'stopped')"
		),
		'0',
		"$job: no partition failed");

	my $batch = "SELECT $cols FROM ($q) b";
	my $res = "SELECT $cols FROM $result";
	is($node->safe_psql('postgres', "SELECT count(*) FROM ($res EXCEPT ALL $batch) x"),
		'0', "$job: no result row is missing from the batch query");
	is($node->safe_psql('postgres', "SELECT count(*) FROM ($batch EXCEPT ALL $res) x"),
		'0', "$job: no batch query row is missing from the result");
	is( $node->safe_psql('postgres', "SELECT count(*) FROM $result"),
		$node->safe_psql('postgres', "SELECT count(*) FROM ($q) b"),
		"$job: result and batch query have the same number of groups");
	is($node->safe_psql('postgres', "SELECT sum(cnt) FROM $result"),
		$inserted, "$job: the result counts every inserted row exactly once");
	is( $node->safe_psql(
			'postgres',
			"SELECT sum(rows_processed) FROM stp.job_status WHERE job_name = '$job'"),
		$inserted,
		"$job: the partitions processed every row exactly once");
	is( $node->safe_psql(
			'postgres', qq{SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
			FROM pg_attribute WHERE attrelid = '$result'::regclass AND attnum > 0
			AND NOT attisdropped AND attname NOT LIKE '\\_stp\\_%'}),
		$types,
		"$job: result columns have the batch query's names and types");
}

check_job('j', 'r', $query,
	'k::text, tag, cnt::text, cnt_v::text, s::text, sn::text, mn::text, mx::text, a::text',
	'k integer, tag text, cnt bigint, cnt_v bigint, s bigint, sn numeric, mn integer, mx numeric, a numeric'
);
check_job('j2', 'r2', $query2,
	'tag, cnt::text, sn::text, an::text, mn::text',
	'tag text, cnt bigint, sn numeric, an numeric, mn numeric');
is($node->safe_psql('postgres', 'SELECT count(*) FROM r2 WHERE tag IS NULL'),
	'1', 'j2: the NULL group is one row');
is( $node->safe_psql(
		'postgres', "SELECT string_agg(tag || ':' || cnt, ',' ORDER BY tag) FROM r2 WHERE tag IN ('open', 'after')"),
	'after:1',
	'j2: the aborted open transaction is not counted, the row after it is counted once');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM r WHERE k = -1"),
	'0',
	'j: the aborted open transaction is not counted');
is( $node->safe_psql(
		'postgres', "SELECT cnt FROM r WHERE k = -2"),
	'1',
	'j: the row committed after the open transaction is counted once');

is($restarts_done, 3 + $live_restarts, 'all planned restarts happened');

$node->stop;
done_testing();
