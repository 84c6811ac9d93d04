
# Copyright (c) stp authors

# 006_security.pl: code of a job must not run with the extension owner's
# rights inside its workers.
#
# A hostile role owns a job whose WHERE clause calls a function it labels
# IMMUTABLE.  The function sets the worker's search_path, for the rest of
# the session, to the role's schema, which defines "=" for integer and
# text: whenever that operator runs as another role, it makes the hostile
# role a superuser.  The worker's own statements on stp's catalog must not
# be resolved under that path.  The role must never become a superuser,
# and the job's result must stay equal to its batch query.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $node = StpTest::new_node('security');

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION stp;
CREATE ROLE regress_stp_evil LOGIN;
CREATE SCHEMA evil AUTHORIZATION regress_stp_evil;
SET ROLE regress_stp_evil;
CREATE TABLE evil.events (id bigserial PRIMARY KEY, k int, v int);
CREATE FUNCTION evil.eq_int(int, int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'regress_stp_evil' THEN
        EXECUTE 'ALTER ROLE regress_stp_evil SUPERUSER';
    END IF;
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE FUNCTION evil.eq_text(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'regress_stp_evil' THEN
        EXECUTE 'ALTER ROLE regress_stp_evil SUPERUSER';
    END IF;
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR evil.= (LEFTARG = int, RIGHTARG = int, FUNCTION = evil.eq_int);
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq_text);
-- Labelled IMMUTABLE, so that the job accepts it; it is anything but.
CREATE FUNCTION evil.keep(int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'evil, pg_catalog', false);
    RAISE LOG 'evil.keep ran as %', current_user;
    RETURN true;
END $$;
});

sub escalated
{
	return $node->safe_psql('postgres',
		"SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_stp_evil'");
}

my $query = q{SELECT k, count(*) AS n, sum(v) AS s FROM evil.events WHERE evil.keep(k) GROUP BY k};
# evil.keep() is true for every row; the batch query leaves it out, so that
# the checking session's own path stays clean.
my $batch = q{SELECT k, count(*) AS n, sum(v) AS s FROM evil.events GROUP BY k};

$node->safe_psql(
	'postgres', qq{
SET ROLE regress_stp_evil;
SELECT stp_start_job('evil_job', \$\$$query\$\$, 'evil.result', partitions => 2, batch_size => 100);
});

# Several rounds of rows, each of several batches per partition.
for my $round (1 .. 3)
{
	$node->safe_psql('postgres',
		"INSERT INTO evil.events (k, v) SELECT g % 13, g FROM generate_series(1, 1000) g");
	my $waited = $node->safe_psql('postgres',
		"SET ROLE regress_stp_evil; SELECT stp_wait('evil_job', '60 s')");
	is($waited, 't', "round $round: the job caught up");
	is(escalated(), 'f', "round $round: the job's owner is not a superuser");
}

is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM stp.job_status WHERE job_name = 'evil_job' AND state IN ('failed', 'stopped')"
	),
	'0',
	'no partition failed');
my ($missing_in_batch, $missing_in_result) =
  StpTest::result_vs_batch_sql('evil.result', $batch, 'k::text, n::text, s::text');
is($node->safe_psql('postgres', $missing_in_batch),
	'0', 'no result row is missing from the batch query');
is($node->safe_psql('postgres', $missing_in_result),
	'0', 'no batch query row is missing from the result');
is($node->safe_psql('postgres', 'SELECT sum(n) FROM evil.result'),
	'3000', 'the result counts every row once');

is( $node->safe_psql(
		'postgres',
		"SELECT sum(rows_processed) FROM stp.job_status WHERE job_name = 'evil_job'"),
	'3000',
	'the partitions processed every row');
# The workers did run the function, so its search_path was set in them.
like(slurp_file($node->logfile), qr/evil\.keep ran as regress_stp_evil/,
	'the workers ran the function that sets their search_path');

$node->safe_psql('postgres', "SELECT stp_drop_job('evil_job', true)");
is(escalated(), 'f', 'the job\'s owner never became a superuser');

$node->stop;
done_testing();
