
# Copyright (c) stp authors

# 001_crash_worker.pl: exactly once across partition worker crashes.
#
# Writers keep inserting into the source while partition workers are killed
# with SIGKILL, first during the backfill of a preloaded backlog, then
# during live ingest.  A SIGKILLed backend makes the postmaster reinitialize
# the whole cluster (restart_after_crash = on), so every kill is also a
# crash of every other worker, of the writers' sessions and of shared
# memory.  Once the writers stop, the job must catch up and its result table
# must equal the batch query exactly, row for row and in its text form.
#
# STP_SOAK=1 runs many more kills, writers and rows.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use POSIX ();

my $soak = ($ENV{STP_SOAK} // '') eq '1';

# Sizes of the run.
my $backlog_rows = $soak ? 2_000_000 : 1_000_000;
my $backfill_kills = $soak ? 5 : 2;
my $live_kills = $soak ? 20 : 4;
my $writers = $soak ? 3 : 2;
my $rows_per_tx = 20;
my $batch_size = 1000;

my $node = PostgreSQL::Test::Cluster->new('crash_worker');
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'stp'
max_worker_processes = 24
stp.launcher_naptime = 500
restart_after_crash = on
log_statement = none
});
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION stp');

# The source: k and tag are NULL-able group keys, v and n NULL-able values.
# With about 80000 groups, a batch both inserts new groups and updates
# existing ones, and the backfill takes long enough to crash in it.
# w and s tag every writer transaction, so that the rows of a transaction
# whose commit the writer could not confirm can be found afterwards.
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

# One writer transaction: $rows rows from writer $w, transaction $s.  v is
# large enough that sum(v) leaves int4; n always has scale 2, so that min
# and max over equal values cannot differ by display scale.
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

# Preload the backlog in one transaction (writer 0).
$node->safe_psql('postgres', insert_sql(0, 1, $backlog_rows));

my $query = q{SELECT k, tag, count(*) AS cnt, count(v) AS cnt_v, sum(v) AS s,
       sum(n) AS sn, min(v) AS mn, max(n) AS mx, avg(v) AS a
FROM events GROUP BY k, tag};

$node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 3, batch_size => $batch_size)"
);

# Writers are forked processes that run one psql per transaction, so that
# they survive the crashes: a psql that exits 0 has committed its
# transaction; any other outcome is "maybe" and is resolved at the end.
my $stopfile = $PostgreSQL::Test::Utils::tmp_check . "/001_stop_writers";
unlink $stopfile;
my $connstr = $node->connstr('postgres');
my $parent_pid = $$;
my @writer_pids;
my @writer_logs;

# Whatever happens to the test, the writers do not outlive it.
END
{
	if ($$ == $parent_pid)
	{
		kill 'TERM', @writer_pids if @writer_pids;
		waitpid($_, 0) for @writer_pids;
	}
}

for my $w (1 .. $writers)
{
	my $log = $PostgreSQL::Test::Utils::tmp_check . "/001_writer_$w.log";
	unlink $log;
	push @writer_logs, $log;
	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# The child leaves through _exit: the END blocks belong to the test.
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

# Wait until all three partitions have a worker again.
sub wait_for_workers
{
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker'",
			'3'),
		"$_[0]: three partition workers run");
}

# Kill one worker with SIGKILL and wait for the cluster to come back with
# three workers.  The victim is a worker whose partition matches
# $partition_filter (a condition on stp.job_status), preferably one that is
# inside a batch.  Returns whether such a worker was found.
my $kills_done = 0;

sub kill_worker
{
	my ($label, $partition_filter) = @_;
	my $candidates = qq{SELECT a.pid FROM pg_stat_activity a
		JOIN stp.job_status s ON s.pid = a.pid
		WHERE a.backend_type = 'stp worker' AND s.job_name = 'j' AND ($partition_filter)};
	my $victim;
	my $deadline = time() + 3;

	# Look for a worker in the middle of a batch for up to 3 seconds.
	while (!defined $victim && time() < $deadline)
	{
		$victim = $node->safe_psql('postgres',
			"$candidates AND a.state = 'active' AND a.query = 'stp: batch' ORDER BY random() LIMIT 1"
		);
		undef $victim if $victim eq '';
		usleep(10_000) unless defined $victim;
	}
	$victim //= $node->safe_psql('postgres',
		"$candidates ORDER BY random() LIMIT 1");
	if ($victim eq '')
	{
		fail("$label: found a worker to kill");
		return 0;
	}

	my $log_offset = -s $node->logfile;
	ok(kill('KILL', $victim), "$label: SIGKILL sent to worker $victim");
	$kills_done++;

	# The postmaster notices, terminates everything and starts over.
	$node->wait_for_log(
		qr/background worker "stp worker" \(PID $victim\) was terminated by signal 9/,
		$log_offset);
	$node->wait_for_log(qr/all server processes terminated; reinitializing/,
		$log_offset);
	$node->poll_query_until('postgres', 'SELECT 1', '1')
	  or die "server did not come back after killing $victim";
	wait_for_workers($label);
	return 1;
}

# Crashes during the backfill of the backlog: the victim's partition has
# made progress but has not reached the end of the backlog yet.
wait_for_workers('start');
for my $i (1 .. $backfill_kills)
{
	$node->poll_query_until(
		'postgres', qq{SELECT count(*) > 0 FROM stp.job_status
			WHERE job_name = 'j' AND pid IS NOT NULL
			AND processed_upto > 0 AND processed_upto < $backlog_rows})
	  or die "no partition is in the backlog";
	usleep(int(rand(200_000)));
	kill_worker("backfill kill $i",
		"s.processed_upto > 0 AND s.processed_upto < $backlog_rows");
}

# Crashes during live ingest: let everything catch up first, so that these
# hit workers that follow the writers.
ok($node->safe_psql('postgres', "SELECT stp_wait('j', '120 s')") eq 't',
	'job catches up with the backlog between crashes');
for my $i (1 .. $live_kills)
{
	usleep(200_000 + int(rand(1_300_000)));
	kill_worker("live kill $i", 'true');
}

# Let the writers run a little after the last crash, then stop them.
usleep(1_000_000);
open my $fh, '>', $stopfile or die;
close $fh;
for my $pid (@writer_pids)
{
	waitpid($pid, 0);
	is($? >> 8, 0, "writer process $pid exited cleanly");
}
@writer_pids = ();

# What the writers know: confirmed transactions and unconfirmed ones.
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

# Every confirmed transaction is in the source, whole.
is( $node->safe_psql(
		'postgres',
		'SELECT count(*) FROM events e JOIN writer_tx t USING (w, s) WHERE t.confirmed'),
	scalar(@ok) * $rows_per_tx,
	'every confirmed writer transaction is in the source');

# An unconfirmed transaction committed whole or not at all.
is( $node->safe_psql(
		'postgres', qq{SELECT count(*) FROM (
		SELECT w, s, count(*) FROM events WHERE w > 0 GROUP BY w, s
		HAVING count(*) <> $rows_per_tx) x}),
	'0',
	'every writer transaction in the source is whole');

# The rows that were inserted: the backlog, the confirmed transactions and
# the unconfirmed transactions that did commit.
my $maybe_committed = $node->safe_psql('postgres',
	'SELECT count(DISTINCT (w, s)) FROM events e JOIN writer_tx t USING (w, s) WHERE NOT t.confirmed'
);
my $inserted =
  $backlog_rows + (scalar(@ok) + $maybe_committed) * $rows_per_tx;
note "$maybe_committed unconfirmed transactions committed; $inserted rows inserted";
is($node->safe_psql('postgres', 'SELECT count(*) FROM events'),
	$inserted, 'the source holds exactly the rows inserted');

# The job catches up.
is($node->safe_psql('postgres', "SELECT stp_wait('j', '120 s')"),
	't', 'stp_wait returns true after the crashes');

is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM stp.job_status WHERE job_name = 'j' AND state IN ('failed', 'stopped')"
	),
	'0',
	'no partition failed');

# The result equals the batch query exactly.  The columns are compared in
# their text form, so that a difference in numeric scale counts too, and as
# multisets (EXCEPT ALL), so that a duplicated group counts too.  EXCEPT
# treats NULLs as equal, like IS NOT DISTINCT FROM.
my $cols =
  'k::text, tag, cnt::text, cnt_v::text, s::text, sn::text, mn::text, mx::text, a::text';
my $batch = "SELECT $cols FROM ($query) b";
my $result = "SELECT $cols FROM r";

is($node->safe_psql('postgres', "SELECT count(*) FROM ($result EXCEPT ALL $batch) x"),
	'0', 'no result row is missing from the batch query');
is($node->safe_psql('postgres', "SELECT count(*) FROM ($batch EXCEPT ALL $result) x"),
	'0', 'no batch query row is missing from the result');
is( $node->safe_psql('postgres', 'SELECT count(*) FROM r'),
	$node->safe_psql('postgres', "SELECT count(*) FROM ($query) b"),
	'result and batch query have the same number of groups');
is($node->safe_psql('postgres', 'SELECT sum(cnt) FROM r'),
	$inserted, 'the result counts every inserted row exactly once');
is( $node->safe_psql(
		'postgres', 'SELECT count(*) FROM r WHERE k IS NULL AND tag IS NULL'),
	'1',
	'the all-NULL group is one row');

# PostgreSQL's own result types.
is( $node->safe_psql(
		'postgres', q{SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'r'::regclass AND attnum > 0
		AND NOT attisdropped AND attname NOT LIKE '\_stp\_%'}),
	'k integer, tag text, cnt bigint, cnt_v bigint, s bigint, sn numeric, mn integer, mx numeric, a numeric',
	'result columns have the batch query\'s names and types');

# Progress agrees with the counts: every partition processed the whole
# sequence, and the rows the partitions counted add up to the source (the
# counters commit with the results, so they are exactly once too).
is( $node->safe_psql(
		'postgres',
		"SELECT bool_and(processed_upto = (SELECT last_value FROM events_id_seq)) FROM stp.job_status WHERE job_name = 'j'"
	),
	't',
	'every partition processed up to the last value of the sequence');
is( $node->safe_psql(
		'postgres',
		"SELECT sum(rows_processed) FROM stp.job_status WHERE job_name = 'j'"),
	$inserted,
	'the partitions processed every row exactly once');

note "$kills_done workers killed";
is($kills_done, $backfill_kills + $live_kills, 'all planned kills happened');

$node->stop;
done_testing();
