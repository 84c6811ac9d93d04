
# Copyright (c) stp authors

# 005_faults.pl: process faults other than a crashing partition worker.
#
# Forked writers keep inserting into the source while:
#
#   1. the launcher is killed with SIGKILL, several times: the postmaster
#      reinitializes the cluster, the launcher comes back and restarts the
#      jobs' workers;
#   2. the server runs with too few background worker slots for its jobs:
#      partitions wait, with the reason, and no job fails; they start once
#      slots are freed by stopping other jobs, or once the server restarts
#      with enough slots.  When even the launcher cannot start a starter
#      (every slot taken), waiting partitions still say why, and the
#      launcher keeps to its naptime instead of spinning;
#   3. partition workers are killed with SIGKILL twenty times in one ingest
#      run, each kill a crash restart of the whole cluster;
#   4. partition workers are ended with SIGTERM (pg_terminate_backend): no
#      crash, and the launcher starts a new worker within a few seconds.
#
# After each of them the writers stop, and every job's result table must
# equal its batch query exactly: row for row in text form, as multisets,
# with every inserted row counted exactly once.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::Bin;
use StpTest;

# Sizes of the run: small, so that the whole file stays short on 2 cores.
my $backlog_rows = 100_000;
my $writers = 2;
my $rows_per_tx = 10;
my $terminations = 3;
my $launcher_kills = 3;
my $worker_kills = 20;
my $max_worker_processes = 24;
# Five slots: the stp launcher, the logical replication launcher, a starter
# while it runs, and two partition workers; the jobs have six partitions.
my $too_few_worker_processes = 5;

my $node = StpTest::new_node(
	'faults',
	max_worker_processes => $max_worker_processes,
	extra => 'restart_after_crash = on');

# The source, as in 001: NULL-able group keys and values; w and s tag each
# writer transaction, so that the rows of a transaction whose commit its
# writer could not confirm can be found afterwards.
StpTest::create_events($node);

# The backlog (writer 0).
$node->safe_psql('postgres', StpTest::insert_sql(0, 1, $backlog_rows));

# The jobs' queries, their columns in text form and their result types are
# StpTest::jobdef's: wide, narrow and bytx.

# job name => [definition, result table, partitions]
my %jobs;

sub start_job
{
	my ($name, $def, $partitions) = @_;
	my $d = StpTest::jobdef($def);
	$node->safe_psql('postgres',
		"SELECT stp_start_job('$name', \$\$$d->{query}\$\$, 'r_$name', partitions => $partitions, batch_size => $d->{batch_size})"
	);
	$jobs{$name} = [ $def, "r_$name", $partitions ];
}

# Writers are forked processes, one psql per transaction (see StpTest).
# Every writer has its own number, across all the writer runs of the file.
StpTest::setup_writers($node,
	prefix => '005',
	writers => $writers,
	rows_per_tx => $rows_per_tx);

# The writers write before the faults begin.
sub start_writers
{
	StpTest::start_writers(1);
}

sub stop_writers
{
	StpTest::stop_writers($_[0]);
}

# The job has caught up, and its result equals the batch query exactly.
sub check_job
{
	my ($label, $job, $inserted) = @_;
	my ($def, $result) = @{ $jobs{$job} };
	my $d = StpTest::jobdef($def);
	StpTest::check_job(
		$node,
		job => $job,
		result => $result,
		query => $d->{query},
		cols => $d->{cols},
		types => $d->{types},
		prefix => "$label: $job: ",
		wait_timeout => 180,
		wait_step => 1,
		wait_msg => 'stp_wait returns true',
		failed_msg => 'no partition failed or stopped',
		sum_vs_batch => 1,
		# These queries have no WHERE: they count every inserted row.
		inserted => ($def ne 'bytx' ? $inserted : undef),
		processed_upto => 1);
}

sub check_jobs
{
	my ($label, @names) = @_;
	my $inserted = StpTest::tally($label, $backlog_rows);
	check_job($label, $_, $inserted) for @names;
}

sub running_partitions
{
	my $n = 0;
	$n += $_->[2] for values %jobs;
	return $n;
}

# Wait until every partition of every running job has a worker.
sub wait_for_workers
{
	my ($label, $n) = @_;
	StpTest::wait_for_workers($node, $label, $n // running_partitions());
}

sub launcher_pid
{
	return $node->safe_psql('postgres',
		"SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'stp launcher'"
	);
}

sub worker_pids
{
	return $node->safe_psql('postgres',
		"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'stp worker'"
	);
}

# A worker to hit: pid, job and partition, preferably one inside a batch
# (looked for during up to $patience seconds).
sub pick_worker
{
	return StpTest::pick_worker($node, $_[0]);
}

start_job('j', 'wide', 3);
start_job('j2', 'narrow', 2);
wait_for_workers('start');
start_writers();

###########################################################################
# 4. Workers ended with SIGTERM: they exit normally (exit code 1), which is
# no crash; the launcher starts a new worker for the partition at its next
# round (stp.launcher_naptime = 500 ms).
###########################################################################
for my $i (1 .. $terminations)
{
	my $label = "terminate $i";
	usleep(200_000 + int(rand(500_000)));
	my $launcher = launcher_pid();
	my ($victim, $job, $part) = pick_worker(1);
	ok(defined $part, "$label: found a worker to terminate");
	my $log_offset = -s $node->logfile;
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($victim)"),
		't', "$label: pg_terminate_backend on worker $victim of $job partition $part");
	my $t0 = time();
	ok( $node->poll_query_until(
			'postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $victim", '0'),
		"$label: worker $victim exited");

	# A new worker for the same partition.
	my $new = '';
	while ($new eq '' && time() < $t0 + 30)
	{
		$new = $node->safe_psql(
			'postgres', qq{SELECT s.pid FROM stp.job_status s
			JOIN pg_stat_activity a ON a.pid = s.pid AND a.backend_type = 'stp worker'
			WHERE s.job_name = '$job' AND s.partition = $part AND s.pid <> $victim});
		usleep(20_000) if $new eq '';
	}
	my $elapsed = time() - $t0;
	isnt($new, '', "$label: $job partition $part has a new worker");
	note sprintf("%s: new worker %s after %.2f s", $label, $new, $elapsed);
	cmp_ok($elapsed, '<', 5, "$label: the launcher restarted the worker within 5 s");
	wait_for_workers($label);

	# It was an orderly exit, not a crash.
	is(launcher_pid(), $launcher, "$label: the launcher is the same process");
	my $log = slurp_file($node->logfile, $log_offset);
	like(
		$log,
		qr/background worker "stp worker" \(PID $victim\) exited with exit code 1/,
		"$label: the worker exited with exit code 1");
	unlike($log, qr/terminated by signal|reinitializing/, "$label: no crash restart");
}
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM stp.job_status WHERE last_error IS NOT NULL"),
	'0',
	'terminate: no partition recorded an error');

usleep(500_000);
stop_writers('terminate');
check_jobs('terminate', 'j', 'j2');

###########################################################################
# 1. SIGKILL of the launcher: a crash, so the postmaster reinitializes the
# cluster; the launcher comes back and starts every job's workers again.
###########################################################################
start_writers();
for my $i (1 .. $launcher_kills)
{
	my $label = "launcher kill $i";
	usleep(300_000 + int(rand(1_000_000)));
	my $launcher = launcher_pid();
	like($launcher, qr/^\d+$/, "$label: one launcher runs");
	my $workers_before = worker_pids();
	my $log_offset = -s $node->logfile;
	ok(kill('KILL', $launcher), "$label: SIGKILL sent to the launcher $launcher");

	StpTest::wait_for_crash_restart($node, 'stp launcher', $launcher,
		$log_offset, 'the launcher');

	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp launcher' AND pid <> $launcher",
			'1'),
		"$label: a new launcher runs");
	wait_for_workers($label);
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker' AND pid IN ($workers_before)"
		),
		'0',
		"$label: every worker is a new process");
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM stp.job_status WHERE pid IS NULL OR state IN ('failed', 'waiting', 'stopped')"
		),
		'0',
		"$label: every partition has its worker again");
}
usleep(500_000);
stop_writers('launcher kills');
check_jobs('launcher kills', 'j', 'j2');

###########################################################################
# 3. Twenty SIGKILLs of partition workers in one ingest run.  Each makes the
# postmaster reinitialize the cluster; the next kill comes once every worker
# runs again.
###########################################################################
start_writers();
my $kills_delivered = 0;
my $kills_offset = -s $node->logfile;
my $kill_started = time();
for my $i (1 .. $worker_kills)
{
	my $label = "worker kill $i";
	usleep(100_000 + int(rand(400_000)));
	my ($victim, $job, $part) = pick_worker(0.5);
	if (!defined $part)
	{
		fail("$label: found a worker to kill");
		next;
	}
	my $log_offset = -s $node->logfile;
	if (!kill('KILL', $victim))
	{
		fail("$label: SIGKILL sent to worker $victim");
		next;
	}
	StpTest::wait_for_crash_restart($node, 'stp worker', $victim, $log_offset,
		$victim);
	$kills_delivered++;
	wait_for_workers("$label ($job partition $part, pid $victim)");
}
note sprintf("%d worker kills in %.1f s", $kills_delivered, time() - $kill_started);
cmp_ok($kills_delivered, '>=', $worker_kills,
	"at least $worker_kills worker kills were delivered");
{
	# The postmaster saw each of them.
	my $log = slurp_file($node->logfile, $kills_offset);
	my $seen = () = $log =~ /background worker "stp worker" \(PID \d+\) was terminated by signal 9/g;
	is($seen, $kills_delivered, 'the server log shows every worker kill');
}
usleep(500_000);
stop_writers('worker kills');
check_jobs('worker kills', 'j', 'j2');

###########################################################################
# 2. Too few background worker slots.  Three jobs of two partitions need
# six slots, besides those of the stp launcher, of the logical replication
# launcher and of a starter while it runs; the server gets five in all.
###########################################################################
for my $job ('j', 'j2')
{
	$node->safe_psql('postgres', "SELECT stp_drop_job('$job', drop_result => true)");
	delete $jobs{$job};
}
start_job('ja', 'wide', 2);
start_job('jb', 'narrow', 2);
start_job('jc', 'bytx', 2);

sub job_status_note
{
	note $node->safe_psql('postgres',
		"SELECT string_agg(job_name || '/' || partition || ' ' || state || coalesce(' (' || last_error || ')', ''), E'\\n') FROM stp.job_status"
	);
}

# Some partitions wait, each with the reason, and none fails however long
# it waits.
sub check_waiting
{
	my ($label) = @_;
	ok( $node->poll_query_until(
			'postgres', q{SELECT count(*) > 0 FROM stp.job_status
			WHERE state = 'waiting' AND last_error LIKE '%max_worker_processes%'}),
		"$label: partitions wait, and last_error names max_worker_processes");
	usleep(3_000_000);
	job_status_note();
	is($node->safe_psql('postgres', "SELECT count(*) FROM stp.job_status WHERE state = 'failed'"),
		'0', "$label: no partition failed");
	cmp_ok(
		$node->safe_psql('postgres',
			"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker'"),
		'<', running_partitions(),
		"$label: fewer workers run than the jobs have partitions");
	is( $node->safe_psql(
			'postgres', q{SELECT count(*) FROM stp.job_status WHERE state = 'waiting'
			AND (last_error IS NULL OR last_error NOT LIKE '%max_worker_processes%')}),
		'0',
		"$label: every waiting partition says why it waits");
}

# Restart with too few slots for the jobs.
$node->adjust_conf('postgresql.conf', 'max_worker_processes', $too_few_worker_processes);
my $slots_offset = -s $node->logfile;
$node->restart;
is($node->safe_psql('postgres', 'SHOW max_worker_processes'),
	$too_few_worker_processes, 'slots: the server runs with too few worker slots');
start_writers();
check_waiting('slots');
like(
	slurp_file($node->logfile, $slots_offset),
	qr/no free background worker slot/,
	'slots: the server log says that no slot was free');

# A job with a waiting partition cannot catch up while rows arrive.
my $keep = $node->safe_psql('postgres',
	"SELECT job_name FROM stp.job_status WHERE state = 'waiting' ORDER BY job_name LIMIT 1");
note "keeping job $keep";
is($node->safe_psql('postgres', "SELECT stp_wait('$keep', '1 s')"),
	'f', "slots: $keep, with a waiting partition, does not catch up");

# Free slots by stopping the two other jobs: the waiting partitions of the
# job kept get workers, and it catches up while the writers go on.
my @others = sort grep { $_ ne $keep } keys %jobs;
$node->safe_psql('postgres', "SELECT stp_stop_job('$_')") for @others;
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(DISTINCT state, ',') FROM stp.job_status WHERE job_name <> '$keep'"),
	'stopped',
	'slots: the other jobs are stopped');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM stp.job_status WHERE job_name = '$keep' AND pid IS NOT NULL",
		$jobs{$keep}[2]),
	"slots: every partition of $keep has a worker once slots are free");
{
	my $caught_up = 'f';
	my $deadline = time() + 60;
	while ($caught_up ne 't' && time() < $deadline)
	{
		$caught_up = $node->safe_psql('postgres', "SELECT stp_wait('$keep', '1 s')");
	}
	is($caught_up, 't', "slots: $keep catches up with the writers once slots are free");
}
stop_writers('slots, two jobs stopped');
check_jobs('slots, two jobs stopped', $keep);

# Resume the other jobs: too few slots again.  The resuming sessions start
# what fits (the last free slot) themselves; the rest waits, and must say
# why, although no slot is left for a starter.  The launcher, which cannot
# start a starter either, must keep to its pace (a try per
# stp.launcher_naptime = 500 ms) and not spin.
start_writers();
my $resume_offset = -s $node->logfile;
$node->safe_psql('postgres', "SELECT stp_resume_job('$_')") for @others;
{
	my $unexplained = '';
	my $deadline = time() + 3;
	while ($unexplained ne '0' && time() < $deadline)
	{
		usleep(100_000);
		$unexplained = $node->safe_psql(
			'postgres', q{SELECT count(*) FROM stp.job_status WHERE state = 'waiting'
			AND (last_error IS NULL OR last_error NOT LIKE '%max_worker_processes%')});
	}
	job_status_note();
	cmp_ok(
		$node->safe_psql('postgres', "SELECT count(*) FROM stp.job_status WHERE state = 'waiting'"),
		'>', 0, 'slots, jobs resumed: partitions wait');
	is($unexplained, '0',
		'slots, jobs resumed: within 3 s every waiting partition says why it waits');
	is($node->safe_psql('postgres', "SELECT count(*) FROM stp.job_status WHERE state = 'failed'"),
		'0', 'slots, jobs resumed: no partition failed');

	my $window_start = -s $node->logfile;
	my $t0 = time();
	usleep(2_000_000);
	my $window = slurp_file($node->logfile, $window_start);
	my $seconds = time() - $t0;
	my $tries = () = $window =~ /stp launcher could not start a worker to scan database/g;
	note sprintf("the launcher failed to start a starter %d times in %.2f s", $tries, $seconds);
	cmp_ok($tries, '<=', int($seconds / 0.5) + 2,
		'slots, jobs resumed: the launcher retries at most once per naptime, it does not spin');
}

# Restart with enough slots: every job catches up.
$node->adjust_conf('postgresql.conf', 'max_worker_processes', $max_worker_processes);
$node->restart;
is($node->safe_psql('postgres', 'SHOW max_worker_processes'),
	$max_worker_processes, 'slots: the server runs with enough worker slots');
wait_for_workers('slots, enough slots');
usleep(1_000_000);
stop_writers('slots, enough slots');
check_jobs('slots, enough slots', 'ja', 'jb', 'jc');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM stp.job_status WHERE state = 'waiting' OR last_error IS NOT NULL"),
	'0',
	'slots: no partition waits or shows an error any more');

$node->stop;
done_testing();
