
# Copyright (c) stp authors

# 010_resize.pl: stp_alter_job resizes a job while writers insert, and
# crashes strike in the middle of each resize.
#
# To catch a resize in the middle, partition 0's progress row is held by
# another session while the other partitions run ahead, and the job is
# stopped; the resize's cut is then far beyond partition 0, which must
# catch up to it once the job is resumed, before the new partitions can
# start.  Meanwhile:
#   1. (2 -> 4) a worker that waits at the cut is killed (crash restart);
#   2. (4 -> 3) the server is shut down immediately and started again;
#   3. (3 -> 2, after the batch size went down to 20 ids) the worker of
#      partition 0, with its way to the cut still before it, is killed
#      right after the job resumes.
# After each, the resize completes, and at the end the result equals the
# batch query and counts every committed row exactly once.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $backlog_rows = 300_000;
my $node = StpTest::new_node('resize', extra => 'restart_after_crash = on');
StpTest::create_events($node);
$node->safe_psql('postgres', StpTest::insert_sql(0, 1, $backlog_rows));

my $def = StpTest::jobdef('wide');
my $query = $def->{query};
$node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 2, batch_size => 200)");

StpTest::setup_writers($node, prefix => '010', writers => 2, rows_per_tx => 50);
StpTest::start_writers();
StpTest::wait_for_workers($node, 'start', 2);

my $job_id = $node->safe_psql('postgres', "SELECT job_id FROM stp.jobs WHERE job_name = 'j'");

# Hold partition 0 back for a while, so that the other partitions run
# ahead, and stop the job meanwhile; then ask for the resize: it records
# its cut at the most advanced partition, far beyond partition 0, and
# stays pending while the job is stopped.  Resuming starts the old
# partitions' workers towards the cut.
sub start_resize
{
	my ($label, $to) = @_;
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('BEGIN');
	$holder->query_safe(
		"SELECT 1 FROM stp.partitions WHERE job_id = $job_id AND partition = 0 FOR UPDATE");
	usleep(4_000_000);
	$node->safe_psql('postgres', "SELECT stp_stop_job('j')");
	$holder->query_safe('COMMIT');
	$holder->quit;
	$node->safe_psql('postgres', "SELECT stp_alter_job('j', partitions => $to)");
	is( $node->safe_psql(
			'postgres', qq{SELECT j.resize_to || ' ' || bool_and(p.stop_at IS NOT NULL)
			|| ' ' || bool_or(p.processed_upto < p.stop_at)
			FROM stp.jobs j JOIN stp.partitions p USING (job_id) WHERE job_id = $job_id
			GROUP BY j.resize_to}),
		"$to true true",
		"$label: the resize to $to is pending, with partition 0 behind the cut");
	$node->safe_psql('postgres', "SELECT stp_resume_job('j')");
}

# Wait for the resize to complete, with $to partitions at work.
sub finish_resize
{
	my ($label, $to) = @_;
	ok( $node->poll_query_until(
			'postgres', "SELECT resize_to IS NULL AND partitions = $to FROM stp.jobs WHERE job_id = $job_id"),
		"$label: the resize to $to completes");
	is( $node->safe_psql(
			'postgres', "SELECT count(*) || ' ' || count(*) FILTER (WHERE stop_at IS NULL) FROM stp.partitions WHERE job_id = $job_id"),
		"$to $to",
		"$label: the job has $to progress rows, none with a cut");
	StpTest::wait_for_workers($node, $label, $to);
}

sub kill_and_wait
{
	my ($label, $filter) = @_;
	my ($victim) = StpTest::pick_worker($node, 3, "s.job_name = 'j' AND ($filter)");
	ok(defined $victim, "$label: found a worker to kill") or return;
	my $log_offset = -s $node->logfile;
	ok(kill('KILL', $victim), "$label: SIGKILL sent to worker $victim");
	StpTest::wait_for_crash_restart($node, 'stp worker', $victim, $log_offset, $victim);
}

# 1. 2 -> 4; kill a worker that waits at the cut.  It is killed as soon as
# it is seen there: partition 0 may reach the cut, and the resize complete,
# within moments (batches grow while a partition is behind).
start_resize('up', 4);
my $waiting = '';
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while ($waiting eq '' && time() < $deadline)
{
	$waiting = $node->safe_psql('postgres',
		"SELECT pid FROM stp.job_status WHERE job_name = 'j' AND state = 'resizing' AND pid IS NOT NULL LIMIT 1");
	usleep(10_000) if $waiting eq '';
}
ok($waiting ne '', 'up: a partition waits at the cut');
if ($waiting ne '')
{
	my $log_offset = -s $node->logfile;
	ok(kill('KILL', $waiting), "up: SIGKILL sent to worker $waiting");
	StpTest::wait_for_crash_restart($node, 'stp worker', $waiting, $log_offset, $waiting);
}
finish_resize('up', 4);

# 2. 4 -> 3; immediate shutdown while partition 0 is behind the cut.
# Small batches keep it behind (batches grow while a partition is behind,
# up to 8 times the batch size), so the old partitions' 4 workers are
# normally seen before the resize completes; on a slow machine it may
# complete first, and the shutdown then strikes the new partitions.
$node->safe_psql('postgres', "SELECT stp_alter_job('j', batch_size => 50)");
start_resize('down', 3);
ok( $node->poll_query_until(
		'postgres', qq{SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'stp worker') = 4
		OR (SELECT resize_to IS NULL FROM stp.jobs WHERE job_id = $job_id)}),
	'down: the old partitions run, or the resize is done');
note('down: the resize was '
	  . ($node->safe_psql('postgres', "SELECT resize_to IS NULL FROM stp.jobs WHERE job_id = $job_id") eq 't'
		? 'done' : 'pending')
	  . ' at the immediate shutdown');
$node->stop('immediate');
$node->start;
finish_resize('down', 3);

# 3. 3 -> 2; kill partition 0's worker on its way to the cut.  Small batches
# keep it behind for long enough.
$node->safe_psql('postgres', "SELECT stp_alter_job('j', batch_size => 20)");
is($node->safe_psql('postgres', "SELECT batch_size FROM stp.jobs WHERE job_id = $job_id"),
	'20', 'the batch size changes without a resize');
start_resize('down again', 2);
kill_and_wait('down again', 's.partition = 0');
finish_resize('down again', 2);

usleep(1_000_000);
StpTest::stop_writers();
my $inserted = StpTest::tally(undef, $backlog_rows);

StpTest::check_job(
	$node,
	job => 'j',
	result => 'r',
	query => $query,
	cols => $def->{cols},
	types => $def->{types},
	inserted => $inserted,
	processed_upto => 1,
	wait_msg => 'stp_wait returns true after the resizes and crashes');

$node->stop;
done_testing();
