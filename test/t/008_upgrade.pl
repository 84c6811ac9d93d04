
# Copyright (c) stp authors

# 008_upgrade.pl: ALTER EXTENSION stp UPDATE with running jobs.
#
# The extension is created at version 1.0 and jobs are started on its
# catalog while writers insert.  ALTER EXTENSION stp UPDATE runs under
# them: the same workers keep running, and each job equals its batch
# query afterwards, before and after a restart.  The updated extension
# has exactly the objects, columns and definitions of a fresh install of
# the newest version.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $node = StpTest::new_node('upgrade');
StpTest::create_events($node, version => '1.0');
$node->safe_psql('postgres', StpTest::insert_sql(0, 1, 5000));

my %jobs = (j_narrow => 'narrow', j_bytx => 'bytx');
for my $job (sort keys %jobs)
{
	my $def = StpTest::jobdef($jobs{$job});
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT stp_start_job('$job', \$\$$def->{query}\$\$, 'r_$job', partitions => 2, "
		  . "batch_size => $def->{batch_size})");
	is($ret, 0, "$job: created on the 1.0 catalog");
	like($err, qr/version 1\.0, older than its library/, "$job: with a warning that says so");
}

# An aggregate that stp merges with its combine function needs the 1.2
# catalog: refused on the 1.0 one, with the reason, leaving nothing.
{
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT stp_start_job('j_xor', 'SELECT k, bit_xor(v) AS x FROM events GROUP BY k', 'r_xor')");
	isnt($ret, 0, 'a combinable aggregate is refused on the 1.0 catalog');
	like($err, qr/older than 1\.2, which cannot keep this job's aggregates/,
		'with the reason');
	is($node->safe_psql('postgres', "SELECT count(*) FROM stp.jobs WHERE job_name = 'j_xor'")
		  . $node->safe_psql('postgres', "SELECT count(*) FROM pg_class WHERE relname = 'r_xor'"),
		'00', 'and leaves no job and no table');
}

StpTest::setup_writers($node, prefix => '008', writers => 2, rows_per_tx => 10);
StpTest::start_writers(1);
$node->poll_query_until('postgres',
	"SELECT bool_and(rows_processed > 0) AND count(*) = 4 FROM stp.job_status")
  or die 'the jobs do not run';
my $pids = $node->safe_psql('postgres',
	"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'stp worker'");

$node->safe_psql('postgres', 'ALTER EXTENSION stp UPDATE');
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'stp'"),
	'1.2', 'the extension is updated to 1.2');
sleep 1;
is( $node->safe_psql(
		'postgres',
		"SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity WHERE backend_type = 'stp worker'"),
	$pids,
	'the same workers keep running through the update');
is( $node->safe_psql(
		'postgres', "SELECT count(*) FROM stp.job_status WHERE state IN ('idle', 'running', 'blocked')"),
	'4', 'the updated stp.job_status shows every partition at work');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM stp.jobs WHERE origin = (SELECT system_identifier FROM pg_control_system())::text
		   || '/' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' || source::oid"),
	'2', 'the update records where the existing jobs run');

StpTest::stop_writers('updated');
my $inserted = StpTest::tally('updated', 5000);
for my $job (sort keys %jobs)
{
	my $def = StpTest::jobdef($jobs{$job});
	StpTest::check_job(
		$node,
		prefix => "$job after the update: ",
		job => $job,
		result => "r_$job",
		query => $def->{query},
		cols => $def->{cols},
		types => $def->{types},
		await => 1,
		processed_upto => 1,
		wait_msg => 'CALL stp_await returns true');
}
is($node->safe_psql('postgres', 'SELECT sum(cnt) FROM r_j_narrow'),
	$inserted, 'the result counts every inserted row exactly once');

# A restart: the jobs created under 1.0 are not taken for restored ones.
$node->restart;
$node->safe_psql('postgres', StpTest::insert_sql(900, 1, 1000));
for my $job (sort keys %jobs)
{
	my $def = StpTest::jobdef($jobs{$job});
	StpTest::check_job(
		$node,
		prefix => "$job after a restart: ",
		job => $job,
		result => "r_$job",
		query => $def->{query},
		cols => $def->{cols},
		types => $def->{types},
		await => 1,
		processed_upto => 1,
		wait_msg => 'CALL stp_await returns true');
}
unlike(slurp_file($node->logfile), qr/restored from a dump/,
	'no job created under 1.0 is taken for a restored one');

# The updated extension is what a fresh install of 1.2 is.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION stp');
my $describe = q{
SELECT string_agg(d, E'\n' ORDER BY d) FROM (
  SELECT pg_describe_object(classid, objid, objsubid) AS d
  FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
    AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'stp')
  UNION ALL
  SELECT format('%s.%s %s %s default %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.attnotnull THEN 'not null' ELSE 'null' END,
                pg_get_expr(ad.adbin, ad.adrelid))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  WHERE c.relnamespace = 'stp'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT format('view %s: %s', c.relname, pg_get_viewdef(c.oid))
  FROM pg_class c WHERE c.relnamespace = 'stp'::regnamespace AND c.relkind = 'v'
  UNION ALL
  SELECT format('constraint %s: %s', conname, pg_get_constraintdef(oid))
  FROM pg_constraint WHERE connamespace = 'stp'::regnamespace
  UNION ALL
  SELECT format('function %s: %s %s %s %s', oid::regprocedure, prokind, provolatile, prosrc,
                pg_get_function_arguments(oid))
  FROM pg_proc WHERE pronamespace IN ('stp'::regnamespace, 'public'::regnamespace)
  UNION ALL
  SELECT format('acl %s: %s', relname, relacl) FROM pg_class
  WHERE relnamespace = 'stp'::regnamespace AND relkind IN ('r', 'v')
  UNION ALL
  SELECT format('config %s', c::regclass) FROM pg_extension e, unnest(e.extconfig) c
  WHERE e.extname = 'stp') x};
my $updated = $node->safe_psql('postgres', $describe);
my $fresh = $node->safe_psql('fresh', $describe);
like($fresh, qr/stp_await/, 'the description covers the newest objects');
is($updated, $fresh, 'the updated extension equals a fresh install of 1.2');

done_testing();
