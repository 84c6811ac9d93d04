
# Copyright (c) stp authors

# 012_slot_restore.pl: pg_dump and restore of a database with a slot job.
#
# A slot job's progress is a position in the WAL of the server it ran on,
# and its slots are not in the dump.  Restored elsewhere, the job waits in
# state "restored" until the restore is complete (the result table's key
# index of the post-data section), then each partition finds no slot,
# creates one and builds its groups again from the restored source.  The
# restored job equals its batch query, and keeps doing so under UPDATE and
# DELETE in the new database.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $node = StpTest::new_node('slot_restore');
my $query = 'SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM acct GROUP BY k';
my $cols = 'k, n, s, lo, hi';
$node->safe_psql(
	'postgres', qq{
CREATE EXTENSION stp;
CREATE TABLE acct (id int PRIMARY KEY, k int, v numeric);
ALTER TABLE acct REPLICA IDENTITY FULL;
INSERT INTO acct SELECT i, i % 13, i % 97 FROM generate_series(1, 4000) i;
SELECT stp_start_job('js', \$\$$query\$\$, 'r', partitions => 2, source => 'slot');
});

# Changes that the job applies before the dump.
$node->safe_psql('postgres', 'UPDATE acct SET k = k + 1 WHERE id % 3 = 0; DELETE FROM acct WHERE id % 10 = 0');
is($node->safe_psql('postgres', "SELECT stp_wait('js', '60 s')"), 't', 'the job caught up before the dump');

sub check_exact
{
	my ($db, $label) = @_;
	is($node->safe_psql($db, "SELECT stp_wait('js', '60 s')"), 't', "$label: the job caught up");
	my ($missing_in_batch, $missing_in_result) = StpTest::result_vs_batch_sql('r', $query, $cols);
	is($node->safe_psql($db, $missing_in_batch), '0', "$label: no result row is missing from the batch query");
	is($node->safe_psql($db, $missing_in_result), '0', "$label: no batch query row is missing from the result");
}
check_exact('postgres', 'source');

my $tmp = PostgreSQL::Test::Utils::tempdir;
my ($host, $port) = ($node->host, $node->port);
$node->command_ok([ 'pg_dump', '-h', $host, '-p', $port, '-Fc', '-f', "$tmp/custom.dump", 'postgres' ],
	'pg_dump, custom format');

# Pre-data and data sections only: the job waits for the key index.
$node->safe_psql('postgres', 'CREATE DATABASE r_slot');
$node->command_ok(
	[
		'pg_restore', '-h', $host, '-p', $port, '--section=pre-data', '--section=data',
		'-d', 'r_slot', "$tmp/custom.dump"
	],
	'pre-data and data sections restored');
ok( $node->poll_query_until(
		'r_slot',
		"SELECT bool_and(state = 'restored' AND last_error LIKE '%unique index%') FROM stp.job_status"),
	'the restored slot job waits for the unique index, in state restored');
is( $node->safe_psql(
		'r_slot',
		"SELECT count(*) FROM pg_replication_slots WHERE database = 'r_slot'"),
	'0', 'it made no slot yet');
# Changes while it waits count once the restore is complete.
$node->safe_psql('r_slot', 'DELETE FROM acct WHERE k = 5; UPDATE acct SET v = v * 2 WHERE id % 7 = 0');
$node->command_ok(
	[ 'pg_restore', '-h', $host, '-p', $port, '--section=post-data', '-d', 'r_slot', "$tmp/custom.dump" ],
	'post-data section restored');
ok( $node->poll_query_until(
		'r_slot',
		"SELECT bool_and(state IN ('idle', 'running')) FROM stp.job_status WHERE job_name = 'js'"),
	'the restored slot job runs once the restore is complete');
ok( $node->poll_query_until(
		'r_slot',
		"SELECT count(*) FROM pg_replication_slots WHERE database = 'r_slot' AND plugin = 'stp'", '2'),
	'with a new slot per partition');
check_exact('r_slot', 'restored');

# And it keeps up with UPDATE and DELETE in the new database.
$node->safe_psql('r_slot',
	'UPDATE acct SET k = 100 WHERE k = 4; DELETE FROM acct WHERE v > 90; INSERT INTO acct VALUES (99999, 100, 1000)');
check_exact('r_slot', 'restored, after new changes');
is($node->safe_psql('r_slot', 'SELECT hi FROM r WHERE k = 100'), '1000', 'the new maximum shows');
$node->safe_psql('r_slot', 'DELETE FROM acct WHERE id = 99999');
check_exact('r_slot', 'restored, after deleting the new maximum');

# A database with slot jobs can be dropped once its jobs are.
$node->safe_psql('r_slot', "SELECT stp_drop_job('js')");
$node->safe_psql('postgres', 'DROP DATABASE r_slot');
pass('the database is dropped after its slot job');

$node->stop;
done_testing();
