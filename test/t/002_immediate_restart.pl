
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
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $soak = ($ENV{STP_SOAK} // '') eq '1';

my $backlog_rows = $soak ? 2_000_000 : 1_000_000;
my $live_restarts = $soak ? 8 : 2;
my $writers = 2;
my $rows_per_tx = 20;

my $node = StpTest::new_node('immediate_restart');

# The source, as in 001: NULL-able keys and values; w and s tag each writer
# transaction.
StpTest::create_events($node);

$node->safe_psql('postgres', StpTest::insert_sql(0, 1, $backlog_rows));

# Job j: three partitions over many groups.  Job j2: two partitions over
# few groups, so that its upserts keep updating the same rows.
my $def = StpTest::jobdef('wide');
my $def2 = StpTest::jobdef('narrow');
my $query = $def->{query};
my $query2 = $def2->{query};

$node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 3, batch_size => 1000)");

my $workers_total = 3;

sub wait_for_workers
{
	my ($label) = @_;
	StpTest::wait_for_workers($node, $label, $workers_total);
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

# Writers in forked processes, one psql per transaction (see StpTest):
# "ok" means committed, "maybe" is resolved at the end.
StpTest::setup_writers($node,
	prefix => '002',
	writers => $writers,
	rows_per_tx => $rows_per_tx);

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
StpTest::start_writers();
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
StpTest::stop_writers();

# Resolve what was inserted.
my $inserted = StpTest::tally(undef, $backlog_rows, $inserted_extra);

# Both jobs catch up and equal their batch queries.
sub check_job
{
	my ($job, $result, $q, $cols, $types) = @_;
	StpTest::check_job(
		$node,
		job => $job,
		result => $result,
		query => $q,
		cols => $cols,
		types => $types,
		inserted => $inserted,
		prefix => "$job: ",
		wait_msg => 'stp_wait returns true after the restarts');
}

check_job('j', 'r', $query, $def->{cols}, $def->{types});
check_job('j2', 'r2', $query2, $def2->{cols}, $def2->{types});
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
