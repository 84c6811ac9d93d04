
# Copyright (c) stp authors

# 014_batch_growth.pl: a partition's batches grow while it is behind, and
# only while growing makes them merge fewer groups per row.
#
# The worker logs each batch's id range at DEBUG1.  Over a source whose
# groups repeat all along (key = id % 300), the batches double from
# batch_size.  Over one whose groups follow the ids (key = id / 10, as
# time buckets follow an insert time), a batch twice as wide merges twice
# as many groups: after that one wider batch, the partition goes back to
# batch_size and stays there.  Both results equal their batch queries.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $node = StpTest::new_node('growth', extra => 'log_min_messages = debug1');
$node->safe_psql('postgres', 'CREATE EXTENSION stp');

# The widths of job $job's batches, in order, from the server log.
sub batch_widths
{
	my ($job) = @_;
	my $id = $node->safe_psql('postgres', "SELECT job_id FROM stp.jobs WHERE job_name = '$job'");
	my @widths;
	foreach my $line (split /\n/, slurp_file($node->logfile))
	{
		push @widths, $2 - $1
		  if $line =~ /stp job $id partition 0: ids \((\d+), (\d+)\], \d+ rows, \d+ groups in/;
	}
	return @widths;
}

foreach my $case (['repeating', 'i % 300', '1000 2000 4000 8000 4000'],
	['ordered', 'i / 10', '1000 2000' . ' 1000' x 16])
{
	my ($name, $key, $expected) = @$case;
	my $q = "SELECT k, count(*) AS cnt, sum(v) AS s FROM $name GROUP BY k";
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE $name (id bigserial PRIMARY KEY, k int, v int);
INSERT INTO $name (k, v) SELECT $key, i FROM generate_series(1, 19000) AS i;  -- id = i
SELECT stp_start_job('$name', '$q', '${name}_r', partitions => 1, batch_size => 1000);
});
	is($node->safe_psql('postgres', "CALL stp_await('$name', '60 s')"),
		't', "$name: the job caught up");
	is(join(' ', batch_widths($name)), $expected, "$name: the batches' widths");
	my ($extra, $missing) = StpTest::result_vs_batch_sql("${name}_r", $q, 'k, cnt, s');
	is($node->safe_psql('postgres', "SELECT ($extra) + ($missing)"),
		'0', "$name: the result equals the batch query");
}

$node->stop;
done_testing();
