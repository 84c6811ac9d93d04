
# Copyright (c) stp authors

# 009_monitoring.pl: what an operator sees, and waiting without a snapshot.
#
# stp.job_status shows rows per second, seconds behind and the pid that a
# blocked partition waits for; stp.job_overview shows one row per job.
# While CALL stp_await sleeps, its backend holds no xmin (SELECT stp_wait
# holds one, which is what the procedure avoids).  The server log says
# once that a partition started, stopped, failed, retried an error or
# recovered from it.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $node = StpTest::new_node('monitoring');
StpTest::create_events($node);
$node->safe_psql('postgres', StpTest::insert_sql(0, 1, 3000));
my $def = StpTest::jobdef('narrow');
my $query = $def->{query};
my $log_offset = -s $node->logfile;
$node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 2, batch_size => 500)");
is($node->safe_psql('postgres', "CALL stp_await('j', '60 s')"), 't',
	'CALL stp_await returns true once the job caught up');

is( $node->safe_psql(
		'postgres',
		"SELECT bool_and(rows_per_second > 0) AND abs(sum(rows_per_second) - 3000 / 60.0) <= 0.1
		        AND bool_and(seconds_behind = 0) AND bool_and(waiting_for_pid IS NULL)
		 FROM stp.job_status WHERE job_name = 'j'"),
	't',
	'job_status: the rows of the last minute per second, nothing behind, nothing waited for');
is( $node->safe_psql(
		'postgres',
		"SELECT job_name || ' ' || owner || ' ' || state || ' ' || partitions || ' ' || rows_processed
		        || ' ' || rows_behind || ' ' || source || ' ' || result_table || ' ' || failed_partitions
		 FROM stp.job_overview"),
	'j stptest idle 2 3000 0 events r 0',
	'job_overview: one row with owner, state and totals');

# A writer that drew an id and stays open blocks the partitions.
my $open = $node->background_psql('postgres', on_error_stop => 1);
$open->query_safe('BEGIN');
$open->query_safe(StpTest::insert_sql(1, 1, 1));
my $open_pid = $open->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', StpTest::insert_sql(1, 2, 100));
ok( $node->poll_query_until(
		'postgres',
		"SELECT bool_and(state = 'blocked' AND waiting_for_pid = $open_pid) FROM stp.job_status"),
	'job_status: blocked partitions name the pid they wait for');
ok( $node->poll_query_until(
		'postgres', "SELECT bool_and(seconds_behind >= 1) FROM stp.job_status"),
	'job_status: seconds behind grows while blocked');
is($node->safe_psql('postgres', 'SELECT state FROM stp.job_overview'),
	'blocked', 'job_overview: the job is blocked');

# While the job cannot catch up, wait for it in two ways.
my $await = $node->background_psql('postgres');
$await->query_until(qr/calling/, "\\echo calling\nCALL stp_await('j', '60 s');\n");
my $wait = $node->background_psql('postgres');
$wait->query_until(qr/calling/, "\\echo calling\nSELECT stp_wait('j', '60 s');\n");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 2 FROM pg_stat_activity WHERE state = 'active' AND query ~ 'stp_a?wait'"),
	'both waits are under way');
# Sample both waiting backends.  The procedure takes a snapshot for each
# short check, between sleeps of 20 ms; the samples taken while it sleeps
# (wait_event_type Extension) must show no xmin, but for the rare sample
# whose xmin and wait event were read on either side of a check's start.
# The function holds its snapshot all along: every sample shows an xmin.
my ($sleeping, $sleeping_no_xmin, $function_xmin, $samples) = (0, 0, 0, 0);
for (1 .. 40)
{
	my ($await_sleeps, $await_no_xmin, $wait_has_xmin) = split /\|/,
	  $node->safe_psql(
		'postgres', q{
SELECT coalesce((SELECT wait_event_type = 'Extension' FROM pg_stat_activity
                 WHERE query LIKE 'CALL stp_await%' AND state = 'active'), false),
       coalesce((SELECT backend_xmin IS NULL FROM pg_stat_activity
                 WHERE query LIKE 'CALL stp_await%' AND state = 'active'), false),
       coalesce((SELECT backend_xmin IS NOT NULL FROM pg_stat_activity
                 WHERE query LIKE 'SELECT stp_wait%' AND state = 'active'), false)});
	$samples++;
	$function_xmin++ if $wait_has_xmin eq 't';
	if ($await_sleeps eq 't')
	{
		$sleeping++;
		$sleeping_no_xmin++ if $await_no_xmin eq 't';
	}
	usleep(50_000);
}
note("stp_await: $sleeping_no_xmin of $sleeping samples while sleeping had no xmin");
cmp_ok($sleeping, '>=', 10, 'CALL stp_await was seen sleeping often');
cmp_ok($sleeping_no_xmin, '>=', 0.9 * $sleeping,
	'while it sleeps, CALL stp_await holds no xmin');
is($function_xmin, $samples, 'SELECT stp_wait holds an xmin all the time it waits');

$open->query_safe('COMMIT');
$open->quit;
$await->query_until(qr/^\s*t\s*$/m, '');
pass('CALL stp_await returns once the writer committed');
$await->quit;
$wait->query_until(qr/^\s*t\s*$/m, '');
$wait->quit;
StpTest::check_job(
	$node,
	job => 'j',
	result => 'r',
	query => $query,
	cols => $def->{cols},
	types => $def->{types},
	await => 1,
	processed_upto => 1,
	sum_vs_batch => 1,
	wait_msg => 'the job caught up');

# An error that is retried, then the recovery, each said once: move
# partition 0's progress under its worker, let it fail a few times, then
# put the progress back.
my $p0 = $node->safe_psql('postgres',
	"SELECT processed_upto FROM stp.partitions WHERE partition = 0");
$node->safe_psql('postgres',
	'UPDATE stp.partitions SET processed_upto = processed_upto + 1000000 WHERE partition = 0');
$node->safe_psql('postgres', StpTest::insert_sql(1, 3, 10));
ok( $node->poll_query_until(
		'postgres',
		"SELECT state = 'retrying' AND last_error LIKE '%moved under its worker%' FROM stp.job_status WHERE partition = 0"),
	'partition 0 retries after an error');
sleep 2;
$node->safe_psql('postgres', "UPDATE stp.partitions SET processed_upto = $p0 WHERE partition = 0");
is($node->safe_psql('postgres', "CALL stp_await('j', '60 s')"), 't', 'partition 0 recovers');
my $retries = slurp_file($node->logfile, $log_offset);
is(scalar(() = $retries =~ /LOG:  stp job \d+ partition 0 is retrying after an error: progress of job/g),
	1, 'the log says once that partition 0 retries');
is(scalar(() = $retries =~ /LOG:  stp job \d+ partition 0 recovered after [2-9] failed attempts/g),
	1, 'the log says once that partition 0 recovered, after several attempts');
is(scalar(() = $retries =~ /ERROR:  progress of job \d+ partition 0 moved under its worker/g),
	1, 'the server log shows the error once, not once per attempt');

# Start, failure and stop, each said once per partition.
$node->safe_psql('postgres', 'ALTER TABLE events ENABLE ROW LEVEL SECURITY');
ok( $node->poll_query_until(
		'postgres', "SELECT bool_and(state = 'failed') FROM stp.job_status"),
	'the job fails');
$node->safe_psql('postgres', 'ALTER TABLE events DISABLE ROW LEVEL SECURITY');
$node->safe_psql('postgres', "SELECT stp_resume_job('j')");
is($node->safe_psql('postgres', "CALL stp_await('j', '60 s')"), 't', 'the resumed job catches up');
$node->safe_psql('postgres', "SELECT stp_stop_job('j')");
sleep 1;
my $log = slurp_file($node->logfile, $log_offset);
my @started = ($log =~ /LOG:  stp job "j" partition \d started/g);
my @failed = ($log =~ /LOG:  stp job \d+ fails: source public\.events has row-level security enabled/g);
my @stopped = ($log =~ /LOG:  stp job "j" partition \d stopped/g);
is(scalar(@started), 4, 'the log says 4 times that a partition started (2 at creation, 2 at resume)');
is(scalar(@failed), 1, 'the log says once that the job failed, with the reason');
is(scalar(@stopped), 4, 'the log says 4 times that a partition stopped (2 at failure, 2 at stop)');
is(scalar(() = $log =~ /LOG:  stp job "j" partition 0 stopped/g),
	scalar(() = $log =~ /LOG:  stp job "j" partition 0 started/g),
	'partition 0: as many stops as starts');

done_testing();
