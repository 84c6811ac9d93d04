
# Copyright (c) stp authors

# StpTest: helpers shared by the TAP tests of stp.
#
# The cluster set-up, the source table "events" and its writer
# transactions, forked psql writers and the reconciliation of what they
# inserted, waiting for a crash restart, and the exact comparison of a
# job's result table with its batch query.
#
# A test loads it from its own directory:
#
#   use FindBin;
#   use lib $FindBin::Bin;
#   use StpTest;

package StpTest;

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use POSIX ();

# A cluster with stp preloaded, started.  $conf{max_worker_processes}
# defaults to 24; $conf{extra} is appended to postgresql.conf as it is.
sub new_node
{
	my ($name, %conf) = @_;
	my $max_worker_processes = $conf{max_worker_processes} // 24;
	my $extra = $conf{extra} // '';
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;

	# A server that loads only trusted output plugins must trust stp's,
	# which slot jobs decode with (upstream PostgreSQL has no such setting).
	my $bindir = $node->config_data('--bindir');
	$extra .= "\noutput_plugin_libraries = 'pgoutput, test_decoding, stp'\n"
	  if `$bindir/postgres --describe-config 2>/dev/null` =~ /^output_plugin_libraries\t/m;
	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'stp'
max_worker_processes = $max_worker_processes
stp.launcher_naptime = 500
log_statement = none
wal_level = logical
max_replication_slots = 40
max_wal_senders = 10
$extra
});
	$node->start;
	return $node;
}

# The extension (of version $o{version}, default the newest) and the
# source: k and tag are NULL-able group keys, v and n
# NULL-able values.  w and s tag every writer transaction, so that the rows
# of a transaction whose commit the writer could not confirm can be found
# afterwards.
sub create_events
{
	my ($node, %o) = @_;
	$node->safe_psql('postgres',
		'CREATE EXTENSION stp' . ($o{version} ? " VERSION '$o{version}'" : ''));
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
}

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

# Jobs over events: their queries, their columns in text form and their
# result types.
my %jobdef = (
	# many groups, NULL keys, every aggregate
	wide => {
		query => q{SELECT k, tag, count(*) AS cnt, count(v) AS cnt_v, sum(v) AS s,
       sum(n) AS sn, min(v) AS mn, max(n) AS mx, avg(v) AS a
FROM events GROUP BY k, tag},
		cols =>
		  'k::text, tag, cnt::text, cnt_v::text, s::text, sn::text, mn::text, mx::text, a::text',
		types =>
		  'k integer, tag text, cnt bigint, cnt_v bigint, s bigint, sn numeric, mn integer, mx numeric, a numeric',
		batch_size => 1000,
	},
	# few groups, updated by every batch
	narrow => {
		query => q{SELECT tag, count(*) AS cnt, sum(n) AS sn, avg(n) AS an, min(n) AS mn
FROM events GROUP BY tag},
		cols => 'tag, cnt::text, sn::text, an::text, mn::text',
		types => 'tag text, cnt bigint, sn numeric, an numeric, mn numeric',
		batch_size => 5000,
	},
	# one group per writer transaction, with a WHERE clause
	bytx => {
		query => q{SELECT w, s, count(*) AS cnt, sum(v) AS sv, max(k) AS mk
FROM events WHERE id % 3 <> 1 OR k IS NULL GROUP BY w, s},
		cols => 'w::text, s::text, cnt::text, sv::text, mk::text',
		types => 'w integer, s integer, cnt bigint, sv bigint, mk integer',
		batch_size => 2000,
	},);

sub jobdef
{
	my ($name) = @_;
	return $jobdef{$name} // die "no job definition $name";
}

# Wait until $n partition workers run ($desc: how the message says $n).
sub wait_for_workers
{
	my ($node, $label, $n, $desc) = @_;
	$desc //= $n;
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker'",
			$n),
		"$label: $desc partition workers run");
}

# A worker to hit, preferably one inside a batch (looked for during up to
# $patience seconds), among the workers whose partition matches $filter (a
# condition on a, pg_stat_activity, and s, stp.job_status).  Returns its
# pid, job and partition, or the empty list.
sub pick_worker
{
	my ($node, $patience, $filter) = @_;
	my $candidates = q{SELECT a.pid || '|' || s.job_name || '|' || s.partition
		FROM pg_stat_activity a JOIN stp.job_status s ON s.pid = a.pid
		WHERE a.backend_type = 'stp worker'};
	$candidates .= " AND ($filter)" if defined $filter;
	my $victim = '';
	my $deadline = time() + $patience;
	while ($victim eq '' && time() < $deadline)
	{
		$victim = $node->safe_psql('postgres',
			"$candidates AND a.state = 'active' AND a.query = 'stp: batch' ORDER BY random() LIMIT 1"
		);
		usleep(10_000) if $victim eq '';
	}
	$victim = $node->safe_psql('postgres', "$candidates ORDER BY random() LIMIT 1")
	  if $victim eq '';
	return split /\|/, $victim;
}

# After the background worker $backend_type with $pid was killed with
# SIGKILL: the postmaster notices (in the log after $log_offset), terminates
# everything and starts over; wait until the server accepts queries again.
sub wait_for_crash_restart
{
	my ($node, $backend_type, $pid, $log_offset, $what) = @_;
	$node->wait_for_log(
		qr/background worker "\Q$backend_type\E" \(PID $pid\) was terminated by signal 9/,
		$log_offset);
	$node->wait_for_log(qr/all server processes terminated; reinitializing/,
		$log_offset);

	# Not poll_query_until: it feeds the query to psql's stdin, and a psql
	# that is refused while the server restarts can exit before reading
	# it, so that IPC::Run dies of a broken pipe.  psql -c reads no stdin.
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (1)
	{
		my ($out, $err) = ('', '');
		IPC::Run::run(
			[ 'psql', '-XAt', '-c', 'SELECT 1', '-d', $node->connstr('postgres') ],
			'<', '/dev/null', '>', \$out, '2>', \$err);
		last if $? == 0 && $out eq "1\n";
		die "server did not come back after killing $what"
		  if time() > $deadline;
		usleep(100_000);
	}
}

# Writers are forked processes that run one psql per transaction, so that
# they survive the crashes: a psql that exits 0 has committed its
# transaction; any other outcome is "maybe" and is resolved at the end.
# Every writer has its own number, across all the writer runs of the test.
my %wr;    # node, prefix, writers, rows_per_tx, stopfile, connstr
my $parent_pid = $$;
my @writer_pids;
my @writer_logs;
my $last_writer = 0;

# Whatever happens to the test, the writers do not outlive it.
END
{
	if ($$ == $parent_pid)
	{
		kill 'TERM', @writer_pids if @writer_pids;
		waitpid($_, 0) for @writer_pids;
	}
}

# $prefix names the writers' files in tmp_check: "${prefix}_stop_writers",
# "${prefix}_writer_$w.log".
sub setup_writers
{
	my ($node, %o) = @_;
	%wr = (
		node => $node,
		writers => $o{writers},
		rows_per_tx => $o{rows_per_tx},
		stopfile => $PostgreSQL::Test::Utils::tmp_check . "/$o{prefix}_stop_writers",
		logs => $PostgreSQL::Test::Utils::tmp_check . "/$o{prefix}_writer_",
		connstr => $node->connstr('postgres'));
	unlink $wr{stopfile};
}

# Start the writers; with $wait, return once each of them has written.
sub start_writers
{
	my ($wait) = @_;
	my $stopfile = $wr{stopfile};
	unlink $stopfile;
	for (1 .. $wr{writers})
	{
		my $w = ++$last_writer;
		my $log = "$wr{logs}$w.log";
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
						'-d', $wr{connstr}, '-c', insert_sql($w, $s, $wr{rows_per_tx}));
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
	return unless $wait;
	my $first = $last_writer - $wr{writers} + 1;
	$wr{node}->poll_query_until('postgres',
		"SELECT count(DISTINCT w) FROM events WHERE w BETWEEN $first AND $last_writer",
		$wr{writers})
	  or die 'the writers do not write';
}

sub _prefix
{
	my ($label) = @_;
	return defined $label ? "$label: " : '';
}

sub stop_writers
{
	my ($label) = @_;
	my $p = _prefix($label);
	open my $fh, '>', $wr{stopfile} or die;
	close $fh;
	for my $pid (@writer_pids)
	{
		waitpid($pid, 0);
		is($? >> 8, 0, "${p}writer process $pid exited cleanly");
	}
	@writer_pids = ();
	unlink $wr{stopfile};
}

# Resolve what the writers inserted so far, check the source against it,
# and return the number of rows in the source: $backlog_rows, the writers'
# rows and $extra rows inserted otherwise.
sub tally
{
	my ($label, $backlog_rows, $extra) = @_;
	my $p = _prefix($label);
	my $node = $wr{node};
	my $rows_per_tx = $wr{rows_per_tx};
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
	note "${p}" . scalar(@ok) . " confirmed writer transactions, "
	  . scalar(@maybe) . " unconfirmed";
	cmp_ok(scalar(@ok), '>', 0, "${p}writers committed transactions");

	$node->safe_psql('postgres',
		'DROP TABLE IF EXISTS writer_tx; CREATE TABLE writer_tx (w int, s int, confirmed bool, PRIMARY KEY (w, s))'
	);
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
		"${p}every confirmed writer transaction is in the source");

	# An unconfirmed transaction committed whole or not at all.
	is( $node->safe_psql(
			'postgres', qq{SELECT count(*) FROM (
			SELECT w, s, count(*) FROM events WHERE w > 0 GROUP BY w, s
			HAVING count(*) <> $rows_per_tx) x}),
		'0',
		"${p}every writer transaction in the source is whole");

	my $maybe_committed = $node->safe_psql('postgres',
		'SELECT count(DISTINCT (w, s)) FROM events e JOIN writer_tx t USING (w, s) WHERE NOT t.confirmed'
	);
	my $inserted =
	  $backlog_rows + (scalar(@ok) + $maybe_committed) * $rows_per_tx + ($extra // 0);
	note "${p}$maybe_committed unconfirmed transactions committed; $inserted rows inserted";
	is($node->safe_psql('postgres', 'SELECT count(*) FROM events'),
		$inserted, "${p}the source holds exactly the rows inserted");
	return $inserted;
}

# Queries that count the rows of result table $result that are missing from
# batch query $q, and the other way round, as multisets of the columns
# $cols (EXCEPT ALL, so that a duplicated group counts too; EXCEPT treats
# NULLs as equal, like IS NOT DISTINCT FROM).  Compare the columns in their
# text form, so that a difference in numeric scale counts too.
sub result_vs_batch_sql
{
	my ($result, $q, $cols) = @_;
	my $batch = "SELECT $cols FROM ($q) b";
	my $res = "SELECT $cols FROM $result";
	return ("SELECT count(*) FROM ($res EXCEPT ALL $batch) x",
		"SELECT count(*) FROM ($batch EXCEPT ALL $res) y");
}

# Job $o{job} has caught up, and its result table $o{result} equals its
# batch query $o{query} exactly.  Messages start with $o{prefix}.
#
#   wait_timeout  seconds to wait for the job (default 120), in one
#                 stp_wait call, or in calls of wait_step seconds
#   wait_msg      the message of the stp_wait check
#   failed_msg    the message of the check that no partition failed
#   cols, types   the columns in text form, the result's column types
#   inserted      the rows inserted: the result counts each once, and so do
#                 the partitions (unless undef)
#   sum_vs_batch  also: the result counts as many rows as the batch query
#   processed_upto also: every partition processed the whole sequence
#   db            the database (default postgres)
#   await         wait with CALL stp_await instead of stp_wait
sub check_job
{
	my ($node, %o) = @_;
	my ($job, $result, $q) = @o{qw(job result query)};
	my $p = $o{prefix} // '';
	my $timeout = $o{wait_timeout} // 120;
	my $db = $o{db} // 'postgres';
	# Every query below runs in $db.
	my $psql = sub { my ($sql) = @_; return $node->safe_psql($db, $sql); };

	my $caught_up = 'f';
	if ($o{await})
	{
		$caught_up = $psql->("CALL stp_await('$job', '$timeout s')");
	}
	elsif ($o{wait_step})
	{
		# Wait in short calls, as the README advises for a long wait.
		my $deadline = time() + $timeout;
		while ($caught_up ne 't' && time() < $deadline)
		{
			$caught_up = $psql->("SELECT stp_wait('$job', '$o{wait_step} s')");
		}
	}
	else
	{
		$caught_up = $psql->("SELECT stp_wait('$job', '$timeout s')");
	}
	is($caught_up, 't', "$p$o{wait_msg}");
	is( $psql->("SELECT count(*) FROM stp.job_status WHERE job_name = '$job' AND state IN ('failed', 'stopped')"
		),
		'0',
		"$p" . ($o{failed_msg} // 'no partition failed'));

	my ($missing_in_batch, $missing_in_result) =
	  result_vs_batch_sql($result, $q, $o{cols});
	is($psql->($missing_in_batch),
		'0', "${p}no result row is missing from the batch query");
	is($psql->($missing_in_result),
		'0', "${p}no batch query row is missing from the result");
	is( $psql->("SELECT count(*) FROM $result"),
		$psql->("SELECT count(*) FROM ($q) b"),
		"${p}result and batch query have the same number of groups");
	is( $psql->("SELECT sum(cnt) FROM $result"),
		$psql->("SELECT sum(cnt) FROM ($q) b"),
		"${p}the result counts as many rows as the batch query")
	  if $o{sum_vs_batch};
	if (defined $o{inserted})
	{
		is($psql->("SELECT sum(cnt) FROM $result"),
			$o{inserted}, "${p}the result counts every inserted row exactly once");
		is( $psql->("SELECT sum(rows_processed) FROM stp.job_status WHERE job_name = '$job'"),
			$o{inserted},
			"${p}the partitions processed every row exactly once");
	}
	is( $psql->("SELECT bool_and(processed_upto = (SELECT last_value FROM events_id_seq)) FROM stp.job_status WHERE job_name = '$job'"
		),
		't',
		"${p}every partition processed up to the last value of the sequence")
	  if $o{processed_upto};
	is( $psql->(qq{SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
			FROM pg_attribute WHERE attrelid = '$result'::regclass AND attnum > 0
			AND NOT attisdropped AND attname NOT LIKE '\\_stp\\_%'}),
		$o{types},
		"${p}result columns have the batch query's names and types");
}

1;
