
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
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $soak = ($ENV{STP_SOAK} // '') eq '1';

# Sizes of the run.
my $backlog_rows = $soak ? 2_000_000 : 1_000_000;
my $backfill_kills = $soak ? 5 : 2;
my $live_kills = $soak ? 20 : 4;
my $writers = $soak ? 3 : 2;
my $rows_per_tx = 20;
my $batch_size = 1000;

my $node = StpTest::new_node('crash_worker', extra => 'restart_after_crash = on');

# The source (see StpTest::create_events): NULL-able group keys and values.
# With about 80000 groups, a batch both inserts new groups and updates
# existing ones, and the backfill takes long enough to crash in it.
StpTest::create_events($node);

# Preload the backlog in one transaction (writer 0).
$node->safe_psql('postgres', StpTest::insert_sql(0, 1, $backlog_rows));

my $def = StpTest::jobdef('wide');
my $query = $def->{query};

$node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 3, batch_size => $batch_size)"
);

# Writers: forked processes, one psql per transaction (see StpTest).
StpTest::setup_writers($node,
	prefix => '001',
	writers => $writers,
	rows_per_tx => $rows_per_tx);
StpTest::start_writers();

# Wait until all three partitions have a worker again.
sub wait_for_workers
{
	StpTest::wait_for_workers($node, $_[0], '3', 'three');
}

# Kill one worker with SIGKILL and wait for the cluster to come back with
# three workers.  The victim is a worker whose partition matches
# $partition_filter (a condition on stp.job_status), preferably one that is
# inside a batch.  Returns whether such a worker was found.
my $kills_done = 0;

sub kill_worker
{
	my ($label, $partition_filter) = @_;

	# Look for a worker in the middle of a batch for up to 3 seconds.
	my ($victim) = StpTest::pick_worker($node, 3,
		"s.job_name = 'j' AND ($partition_filter)");
	if (!defined $victim)
	{
		fail("$label: found a worker to kill");
		return 0;
	}

	my $log_offset = -s $node->logfile;
	ok(kill('KILL', $victim), "$label: SIGKILL sent to worker $victim");
	$kills_done++;

	# The postmaster notices, terminates everything and starts over.
	StpTest::wait_for_crash_restart($node, 'stp worker', $victim, $log_offset,
		$victim);
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
StpTest::stop_writers();

# What the writers know: confirmed transactions and unconfirmed ones.  The
# rows that were inserted: the backlog, the confirmed transactions and the
# unconfirmed transactions that did commit.
my $inserted = StpTest::tally(undef, $backlog_rows);

# The job catches up, and its result equals the batch query exactly (see
# StpTest::check_job); progress agrees with the counts: every partition
# processed the whole sequence, and the rows the partitions counted add up
# to the source (the counters commit with the results, so they are exactly
# once too).  PostgreSQL's own result types.
StpTest::check_job(
	$node,
	job => 'j',
	result => 'r',
	query => $query,
	cols => $def->{cols},
	types => $def->{types},
	inserted => $inserted,
	processed_upto => 1,
	wait_msg => 'stp_wait returns true after the crashes');
is( $node->safe_psql(
		'postgres', 'SELECT count(*) FROM r WHERE k IS NULL AND tag IS NULL'),
	'1',
	'the all-NULL group is one row');

note "$kills_done workers killed";
is($kills_done, $backfill_kills + $live_kills, 'all planned kills happened');

$node->stop;
done_testing();
