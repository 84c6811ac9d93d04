
# Copyright (c) stp authors

# 007_dump_restore.pl: pg_dump of a database whose job runs while writers
# insert, restored with psql (plain format) and pg_restore (custom format,
# two parallel jobs) into new databases of a server with stp preloaded.
#
# After a restore the job resumes by itself, from the progress in the
# dump, on the restored tables (new OIDs), and its result equals the batch
# query while new rows arrive.  A restore that is not complete keeps the
# job waiting in state "restored", with the reason, instead of failing it
# or counting wrongly:
#   - pre-data and data sections only: no unique index on the result yet;
#   - everything but the source sequence's state (SEQUENCE SET left out);
#   - a restore without the result table's data.
# A dump that leaves out the source table cannot restore stp.jobs at all,
# and pg_restore says so.  A second job, with count(DISTINCT) and
# sum(DISTINCT), is restored with its distinct tables and stays exact.  A
# third job keeps user-defined aggregates of another schema, recorded in
# stp.jobs.agg_functions by name, and bit_xor: restored, it finds them
# again and stays exact.  A fourth keeps its distinct values in the chunk
# layout (arrays), which a restore keeps.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use StpTest;

# Two jobs of 2 partitions and two of 1 in each of 7 databases.
my $node = StpTest::new_node('dump_restore', max_worker_processes => 56);
StpTest::create_events($node);
$node->safe_psql('postgres', StpTest::insert_sql(0, 1, 5000));

my $def = StpTest::jobdef('narrow');
my $query = $def->{query};
$node->safe_psql('postgres',
	"SELECT stp_start_job('j', \$\$$query\$\$, 'r', partitions => 2, batch_size => 500)");
# A job with count(DISTINCT): its distinct tables are dumped and restored
# with its state, and it stays exact.
my $dquery = q{SELECT tag, count(DISTINCT v) AS dv, count(DISTINCT k) FILTER (WHERE v > 0) AS dk,
       sum(DISTINCT v) AS sv FROM events GROUP BY tag};
$node->safe_psql('postgres',
	"SELECT stp_start_job('jd', \$\$$dquery\$\$, 'rd', partitions => 2, batch_size => 700)");
my $cquery = q{SELECT tag, k % 3 AS k3, count(DISTINCT v) AS dv, sum(DISTINCT n) AS sn,
       count(*) AS c FROM events GROUP BY tag, k3};
$node->safe_psql('postgres',
	"SET stp.distinct_layout = chunks; SELECT stp_start_job('jc', \$\$$cquery\$\$, 'rc', batch_size => 900)");
# A job with user-defined aggregates in schema aggs, with and without a
# final function.
$node->safe_psql('postgres', q{
CREATE SCHEMA aggs;
CREATE AGGREGATE aggs.my_avg(int4) (SFUNC = int4_avg_accum, STYPE = int8[],
    COMBINEFUNC = int4_avg_combine, FINALFUNC = int8_avg, INITCOND = '{0,0}');
CREATE AGGREGATE aggs.my_sum(int4) (SFUNC = int4_sum, STYPE = int8, COMBINEFUNC = int8pl);
});
my $aquery = q{SELECT tag, aggs.my_avg(v) AS a, aggs.my_sum(k) AS s, bit_xor(k) AS x FROM events GROUP BY tag};
$node->safe_psql('postgres',
	"SELECT stp_start_job('ja', \$\$$aquery\$\$, 'ra', batch_size => 900)");

# Wait for the job with user-defined aggregates; it must equal its batch
# query.
sub check_combine
{
	my ($db, $label) = @_;
	is($node->safe_psql($db, "SELECT agg_functions::text FROM stp.jobs WHERE job_name = 'ja'"),
		'{aggs.my_avg(integer),aggs.my_sum(integer),bit_xor(integer)}',
		"$label: the job names its aggregates");
	is($node->safe_psql($db, "SELECT stp_wait('ja', '120 s')"), 't',
		"$label: the job with user-defined aggregates catches up");
	is( $node->safe_psql(
			$db,
			"SELECT count(*) FROM ((SELECT tag, a, s, x FROM ra EXCEPT ALL ($aquery)) UNION ALL (($aquery) EXCEPT ALL SELECT tag, a, s, x FROM ra)) d"),
		'0',
		"$label: the job with user-defined aggregates equals its batch query");
}

# Wait for the count(DISTINCT) job; its view must equal its batch query.
sub check_distinct
{
	my ($db, $label) = @_;
	is($node->safe_psql($db, "SELECT stp_wait('jd', '120 s')"), 't', "$label: the count(DISTINCT) job catches up");
	is( $node->safe_psql(
			$db,
			"SELECT count(*) FROM ((SELECT * FROM rd EXCEPT ALL ($dquery)) UNION ALL (($dquery) EXCEPT ALL SELECT * FROM rd)) d"),
		'0',
		"$label: the count(DISTINCT) job equals its batch query");
	is($node->safe_psql($db, "SELECT stp_wait('jc', '120 s')"), 't', "$label: the chunk layout job catches up");
	is( $node->safe_psql(
			$db,
			"SELECT count(*) FROM ((SELECT * FROM rc EXCEPT ALL ($cquery)) UNION ALL (($cquery) EXCEPT ALL SELECT * FROM rc)) d"),
		'0',
		"$label: the chunk layout job equals its batch query");
	is( $node->safe_psql(
			$db,
			"SELECT string_agg(attname, ',' ORDER BY attname) FROM pg_attribute
			 WHERE attrelid = 'rc_state_distinct_0'::regclass AND attname LIKE '\\_stp\\_%'"),
		'_stp_values',
		"$label: the chunk layout job keeps its arrays");
}

StpTest::setup_writers($node, prefix => '007', writers => 2, rows_per_tx => 10);
StpTest::start_writers(1);

# Dump while the job works through its backlog and the writers insert.
my $tmp = PostgreSQL::Test::Utils::tempdir;
my ($host, $port) = ($node->host, $node->port);
$node->poll_query_until('postgres',
	"SELECT bool_and(rows_processed > 0) FROM stp.job_status WHERE job_name = 'j'")
  or die 'the job does not run';
$node->command_ok([ 'pg_dump', '-h', $host, '-p', $port, '-Fp', '-f', "$tmp/plain.sql", 'postgres' ],
	'pg_dump, plain format, while the job runs');
$node->command_ok([ 'pg_dump', '-h', $host, '-p', $port, '-Fc', '-f', "$tmp/custom.dump", 'postgres' ],
	'pg_dump, custom format, while the job runs');
$node->command_ok(
	[
		'pg_dump', '-h', $host, '-p', $port, '-Fc', '--exclude-table=events',
		'-f', "$tmp/nosource.dump", 'postgres'
	],
	'pg_dump without the source table');
StpTest::stop_writers('source');
StpTest::check_job(
	$node,
	prefix => 'source: ',
	job => 'j',
	result => 'r',
	query => $query,
	cols => $def->{cols},
	types => $def->{types},
	await => 1,
	wait_msg => 'the job catches up');
check_distinct('postgres', 'source');
check_combine('postgres', 'source');

sub createdb
{
	my ($db) = @_;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
}

sub states
{
	my ($db) = @_;
	return $node->safe_psql($db,
		"SELECT string_agg(DISTINCT state, ',') FROM stp.job_status WHERE job_name = 'j'");
}

# The job of a restored database runs, did not fail, and its progress
# agrees with the restored sequence.  Then new rows arrive, and the job
# stays exact.
sub check_restored
{
	my ($db, $label) = @_;
	ok( $node->poll_query_until(
			$db,
			"SELECT bool_and(state IN ('idle', 'running')) FROM stp.job_status WHERE job_name = 'j'"),
		"$label: the restored job resumes by itself");
	is( $node->safe_psql(
			$db,
			"SELECT count(*) FROM stp.job_status WHERE processed_upto > (SELECT last_value FROM events_id_seq)"),
		'0',
		"$label: no partition's progress is beyond the restored sequence");
	is( $node->safe_psql(
			$db,
			"SELECT origin = (SELECT system_identifier FROM pg_control_system())::text || '/' ||
			        (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' ||
			        source::oid FROM stp.jobs WHERE job_name = 'j'"),
		't',
		"$label: the job now records where it runs");
	for my $s (1 .. 3)
	{
		$node->safe_psql($db, StpTest::insert_sql(900, $s, 300));
	}
	StpTest::check_job(
		$node,
		db => $db,
		prefix => "$label: ",
		job => 'j',
		result => 'r',
		query => $query,
		cols => $def->{cols},
		types => $def->{types},
		await => 1,
		sum_vs_batch => 1,
		processed_upto => 1,
		wait_msg => 'the restored job catches up with new rows');
	check_distinct($db, $label);
	check_combine($db, $label);
}

# Plain format, through psql.
my $log_offset = -s $node->logfile;
createdb('r_plain');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $host, '-p', $port, '-d', 'r_plain', '-f', "$tmp/plain.sql" ],
	'plain dump restored with psql');
check_restored('r_plain', 'plain');

# Custom format, pg_restore with two parallel jobs.
createdb('r_custom');
$node->command_ok(
	[ 'pg_restore', '-h', $host, '-p', $port, '-j', '2', '-d', 'r_custom', "$tmp/custom.dump" ],
	'custom dump restored with pg_restore -j 2');
check_restored('r_custom', 'custom');
unlike(
	slurp_file($node->logfile, $log_offset),
	qr/set back|stp job \d+ fails|failed after/,
	'no restored job failed on the way');

# Sections: before post-data, the result table has no unique index yet.
createdb('r_sect');
$node->command_ok(
	[
		'pg_restore', '-h', $host, '-p', $port, '--section=pre-data', '--section=data',
		'-d', 'r_sect', "$tmp/custom.dump"
	],
	'pre-data and data sections restored');
ok( $node->poll_query_until(
		'r_sect',
		"SELECT bool_and(state = 'restored' AND last_error LIKE '%unique index%') FROM stp.job_status"),
	'sections: the job waits for the unique index, in state restored');
my $before = $node->safe_psql('r_sect', 'SELECT sum(cnt) FROM r');
$node->safe_psql('r_sect', StpTest::insert_sql(900, 1, 500));
sleep 1;
is($node->safe_psql('r_sect', 'SELECT sum(cnt) FROM r'),
	$before, 'sections: nothing is merged while it waits');
$node->command_ok(
	[ 'pg_restore', '-h', $host, '-p', $port, '--section=post-data', '-d', 'r_sect', "$tmp/custom.dump" ],
	'post-data section restored');
check_restored('r_sect', 'sections');

# A restore list of the custom dump without the entries that match $skip.
my ($list) = run_command([ 'pg_restore', '-l', "$tmp/custom.dump" ]);

sub restore_list
{
	my ($name, $skip) = @_;
	my @all = split /\n/, $list;
	my @kept = grep { !/$skip/ } @all;
	ok(scalar(@kept) < scalar(@all), "the dump has what $name leaves out");
	open my $fh, '>', "$tmp/$name.list" or die;
	print $fh join("\n", @kept) . "\n";
	close $fh;
	return "$tmp/$name.list";
}

# Everything but the sequence's state.
my $seqless = restore_list('seqless', qr/SEQUENCE SET public events_id_seq/);
createdb('r_noseq');
$node->command_ok(
	[ 'pg_restore', '-h', $host, '-p', $port, '-L', $seqless, '-d', 'r_noseq', "$tmp/custom.dump" ],
	'restored without the sequence\'s state');
ok( $node->poll_query_until(
		'r_noseq',
		"SELECT bool_and(state = 'restored' AND last_error LIKE '%set it with setval()%') FROM stp.job_status"),
	'no sequence state: the job waits in state restored, and says why');
is($node->safe_psql('r_noseq', "SELECT count(*) FROM stp.job_status WHERE state = 'failed'"),
	'0', 'no sequence state: the job did not fail');
$node->safe_psql('r_noseq', "SELECT setval('events_id_seq', GREATEST((SELECT max(id) FROM events), (SELECT max(processed_upto) FROM stp.partitions)))");
check_restored('r_noseq', 'no sequence state, then setval');

# No result table data (as with pg_dump --exclude-table-data): the job waits.
my $noresult = restore_list('noresult', qr/TABLE DATA public r /);
createdb('r_nores');
$node->command_ok(
	[ 'pg_restore', '-h', $host, '-p', $port, '-L', $noresult, '-d', 'r_nores', "$tmp/custom.dump" ],
	'restored without the result table\'s data');
ok( $node->poll_query_until(
		'r_nores',
		"SELECT bool_and(state = 'restored' AND last_error LIKE '%result table is empty%') FROM stp.job_status WHERE job_name = 'j'"),
	'no result data: the job waits in state restored, and says why');
is($node->safe_psql('r_nores', 'SELECT count(*) FROM r'), '0',
	'no result data: nothing was merged');

# No source table: stp.jobs cannot name it, so the restore of the jobs
# fails, with the reason, and no job runs.
createdb('r_nosrc');
my ($out, $err) = run_command(
	[ 'pg_restore', '-h', $host, '-p', $port, '-d', 'r_nosrc', "$tmp/nosource.dump" ]);
like($err, qr/relation "public\.events" does not exist/,
	'no source table: pg_restore reports that stp.jobs names a missing table');
is($node->safe_psql('r_nosrc', 'SELECT count(*) FROM stp.jobs'),
	'0', 'no source table: no job was restored');

done_testing();
