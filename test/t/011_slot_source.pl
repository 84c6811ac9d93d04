
# Copyright (c) stp authors

# 011_slot_source.pl: jobs whose source is a logical replication slot,
# under INSERT, UPDATE and DELETE, crashes and a large transaction.
#
# A table with rows already in it takes a random mix of writer
# transactions from concurrent writers: inserts, updates that move rows
# between groups (and partitions), updates that leave the key alone (one
# of the jobs groups by an out-of-line TOASTed column that they leave
# unchanged), deletes, deletes of the current minimum or maximum of a
# group, transactions and subtransactions that roll back.  Three slot jobs
# run on it, with 1 and 3 partitions and small batches.  Meanwhile a
# partition worker is killed with SIGKILL (the server restarts) and the
# server is stopped in immediate mode.  Then one transaction changes far
# more than logical_decoding_work_mem (64kB here) holds, and must spill,
# and a TRUNCATE comes amid the writers.
# Once the writers stop and the jobs caught up, every result table equals
# its query as a batch SELECT.  A slot that belongs to no job is dropped
# by the starter, and the jobs' slots go with the jobs, or with DROP
# EXTENSION.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use POSIX ();
use FindBin;
use lib $FindBin::Bin;
use StpTest;

my $seed = $ENV{STP_SLOT_SEED} // 20261128;
note "slot source seed $seed (rerun with STP_SLOT_SEED=$seed)";

my $node = StpTest::new_node('slot',
	extra => "logical_decoding_work_mem = 64kB\nrestart_after_crash = on\n");
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION stp;
CREATE TABLE acct (id int PRIMARY KEY, k int, t text, v numeric, x int, big text);
ALTER TABLE acct ALTER big SET STORAGE EXTERNAL;
ALTER TABLE acct REPLICA IDENTITY FULL;
INSERT INTO acct
SELECT i, i % 17, CASE WHEN i % 11 = 0 THEN NULL ELSE 't' || (i % 7) END,
       (i * 37 % 1000) / 10.0, CASE WHEN i % 5 = 0 THEN NULL ELSE i % 100 END,
       repeat(chr(65 + i % 5), 4000)
FROM generate_series(1, 3000) i;
});
is( $node->safe_psql(
		'postgres',
		"SELECT pg_relation_size(reltoastrelid) > 3000 * 4000 FROM pg_class WHERE relname = 'acct'"),
	't',
	'big is stored out of line');

my %jobs = (
	j1 => {
		query => 'SELECT k, count(*) AS n, sum(v) AS s, avg(v) AS a, min(v) AS lo, max(v) AS hi, '
		  . 'count(x) AS cx, sum(x) AS sx, min(t) AS tmin FROM acct GROUP BY k',
		cols => 'k, n, s, a, lo, hi, cx, sx, tmin',
		partitions => 1,
		batch_size => 1000000,
	},
	j3 => {
		query => 'SELECT t, k % 3 AS m, count(*) AS n, sum(v) AS s, min(x) AS lo, max(x) AS hi '
		  . 'FROM acct WHERE v > 10 GROUP BY t, k % 3',
		cols => 't, m, n, s, lo, hi',
		partitions => 3,
		batch_size => 300,
	},
	# Counts and integer sums only: its merges subtract old rows.
	jr => {
		query => 'SELECT k % 5 AS m, t, count(*) AS n, count(v) AS cv, sum(x) AS sx, avg(x) AS ax '
		  . 'FROM acct GROUP BY k % 5, t',
		cols => 'm, t, n, cv, sx, ax',
		partitions => 2,
		batch_size => 200,
	},
	jbig => {
		query => 'SELECT left(big, 3) AS p, count(*) AS n, sum(v) AS s, max(v) AS hi FROM acct GROUP BY 1',
		cols => 'p, n, s, hi',
		partitions => 2,
		batch_size => 1000000,
	},
);
for my $job (sort keys %jobs)
{
	my $j = $jobs{$job};
	$node->safe_psql('postgres',
		"SELECT stp_start_job('$job', \$\$$j->{query}\$\$, 'r_$job', partitions => $j->{partitions}, "
		  . "batch_size => $j->{batch_size}, source => 'slot')");
}
StpTest::wait_for_workers($node, 'start', 8);
# Each worker creates its slot when it starts: wait for the last one.
ok($node->poll_query_until('postgres', "SELECT count(*) FROM pg_replication_slots WHERE plugin = 'stp'", '8'),
	'one slot per partition');
is($node->safe_psql('postgres',
		"SELECT string_agg(attname, ',' ORDER BY attname) FROM pg_attribute WHERE attrelid = 'r_jr'::regclass AND attname LIKE '\\_stp\\_%'"),
	'_stp_ax_count,_stp_ax_sum,_stp_rows,_stp_sx_count', 'jr retracts old rows: its state columns');

# Check that every job equals its batch query.
sub check_jobs
{
	my ($label) = @_;
	for my $job (sort keys %jobs)
	{
		my $j = $jobs{$job};
		is($node->safe_psql('postgres', "SELECT stp_wait('$job', '180 s')"),
			't', "$label: $job caught up");
		my ($missing_in_batch, $missing_in_result) =
		  StpTest::result_vs_batch_sql("r_$job", $j->{query}, $j->{cols});
		is($node->safe_psql('postgres', $missing_in_batch),
			'0', "$label: no row of $job is missing from the batch query");
		is($node->safe_psql('postgres', $missing_in_result),
			'0', "$label: no row of the batch query is missing from $job");
	}
}
check_jobs('rows present at the start');

# ---- the writers ----

my $tmp = $PostgreSQL::Test::Utils::tmp_check;
my $stop_file = "$tmp/slot_stop_writers";
my @writer_pids;
END { kill 'KILL', @writer_pids if @writer_pids; }

# One random writer transaction of writer $w, whose new ids are its own.
sub writer_tx
{
	my ($w, $n) = @_;
	my $id = sub { return 1 + int(rand(3000 + 200 * $n / 10)); };
	my $newid = sub { return $w * 10_000_000 + $n * 10 + $_[0]; };
	my $val = sub { return sprintf('%.1f', rand(100)); };
	my $r = rand();
	my $k = int(rand(19));
	return sprintf(
		"INSERT INTO acct VALUES (%d, %d, 't%d', %s, %d, repeat('%s', 4000));\n",
		$newid->(0), $k, int(rand(8)), $val->(), int(rand(100)), chr(65 + int(rand(6))))
	  if $r < 0.30;
	return sprintf("UPDATE acct SET k = %d, t = 't%d', v = %s WHERE id = %d;\n",
		$k, int(rand(8)), $val->(), $id->())
	  if $r < 0.50;
	return sprintf("UPDATE acct SET v = v + 1, x = %d WHERE id = %d;\n", int(rand(100)), $id->())
	  if $r < 0.65;
	return sprintf("DELETE FROM acct WHERE id = %d;\n", $id->())
	  if $r < 0.75;
	return sprintf(
		"DELETE FROM acct WHERE id = (SELECT id FROM acct WHERE k = %d ORDER BY v %s NULLS LAST LIMIT 1);\n",
		$k, rand() < 0.5 ? 'DESC' : 'ASC')
	  if $r < 0.85;
	return sprintf(
		"BEGIN; INSERT INTO acct VALUES (%d, %d, 'rb', 1, 1, 'rb'); DELETE FROM acct WHERE k = %d; ROLLBACK;\n",
		$newid->(1), $k, $k)
	  if $r < 0.92;
	return sprintf(
		"BEGIN; UPDATE acct SET k = k + 1 WHERE id = %d; SAVEPOINT s; DELETE FROM acct WHERE k = %d; "
		  . "ROLLBACK TO SAVEPOINT s; INSERT INTO acct VALUES (%d, %d, 'sp', 2, 2, 'sp'); COMMIT;\n",
		$id->(), $k, $newid->(2), $k);
}

# A writer runs psql on chunks of transactions until told to stop; a psql
# that a crash cut off is just followed by the next chunk.
sub start_writers
{
	my ($nwriters) = @_;
	unlink $stop_file;
	for my $w (1 .. $nwriters)
	{
		my $pid = fork();
		die "fork: $!" unless defined $pid;
		if ($pid == 0)
		{
			srand($seed + $w);
			my $n = 0;
			while (!-e $stop_file)
			{
				my $file = "$tmp/slot_writer_$w.sql";
				open my $fh, '>', $file or die;
				print $fh writer_tx($w, $n++) for 1 .. 40;
				close $fh;
				IPC::Run::run(
					[ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-f', $file ],
					'<', '/dev/null', '>', '/dev/null', '2>', '/dev/null');
				usleep(20_000) if $? != 0;
			}
			POSIX::_exit(0);
		}
		push @writer_pids, $pid;
	}
}

sub stop_writers
{
	open my $fh, '>', $stop_file or die;
	close $fh;
	waitpid($_, 0) for @writer_pids;
	@writer_pids = ();
}

start_writers(3);
sleep 5;

# ---- SIGKILL of a partition worker, mid-batch if possible ----
# Kill a worker of job $job with SIGKILL, and wait for the server's restart.
sub kill_worker
{
	my ($job, $label) = @_;
	my $log_offset = -s $node->logfile;
	my ($victim, $vjob, $vpart) = StpTest::pick_worker($node, 5, "s.job_name = '$job'");
	ok(defined $victim, "a worker of $job to kill$label");
	note "killing worker $victim of $vjob partition $vpart";
	kill 'KILL', $victim;
	StpTest::wait_for_crash_restart($node, 'stp worker', $victim, $log_offset, "worker $victim");
}
kill_worker('j3', '');
sleep 5;

# ... and of the retracting job, whose merges subtract: applied once.
kill_worker('jr', '');
sleep 3;

# ---- immediate stop while the writers write ----
my $dboid = $node->safe_psql('postgres', "SELECT oid FROM pg_database WHERE datname = 'postgres'");
$node->safe_psql('postgres',
	"SELECT pg_create_logical_replication_slot('stp_${dboid}_999_0', 'stp')");
$node->stop('immediate');
$node->start;
sleep 5;
stop_writers();
note 'rows now: ' . $node->safe_psql('postgres', 'SELECT count(*) FROM acct');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'stp_${dboid}_999_0'", '0'),
	'the starter drops a slot that belongs to no job');
check_jobs('after SIGKILL and immediate stop under writers');

# ---- one transaction larger than logical_decoding_work_mem ----
$node->safe_psql(
	'postgres', q{
BEGIN;
UPDATE acct SET k = (k + 5) % 23, v = v + 0.5;
DELETE FROM acct WHERE id % 13 = 0;
INSERT INTO acct SELECT 90000000 + i, i % 29, 'big', i, i, repeat('Z', 4000) FROM generate_series(1, 2000) i;
COMMIT;
});
check_jobs('after a transaction larger than logical_decoding_work_mem');
ok( $node->safe_psql(
		'postgres',
		"SELECT sum(spill_txns) > 0 FROM pg_stat_replication_slots WHERE slot_name LIKE 'stp\\_%'") eq 't',
	'the large transaction was spilled to disk');

# ---- TRUNCATE under writers ----
# The retracting job deletes its groups at the TRUNCATE's place in the
# stream and merges what follows; the others build theirs again from the
# table.  A worker of the retracting job is killed right after.
start_writers(2);
sleep 2;
$node->safe_psql(
	'postgres', q{
BEGIN;
INSERT INTO acct VALUES (96000000, 3, 't1', 1, 1, 'T');
UPDATE acct SET x = x + 1 WHERE id <= 100;
TRUNCATE acct;
INSERT INTO acct
SELECT i, i % 17, CASE WHEN i % 11 = 0 THEN NULL ELSE 't' || (i % 7) END,
       (i * 37 % 1000) / 10.0, CASE WHEN i % 5 = 0 THEN NULL ELSE i % 100 END,
       repeat(chr(65 + i % 5), 4000)
FROM generate_series(1, 3000) i;
DELETE FROM acct WHERE id % 7 = 0;
COMMIT;
});
kill_worker('jr', ' after the TRUNCATE');
sleep 2;
stop_writers();
check_jobs('after a TRUNCATE under writers and a SIGKILL');

# ---- query cancels of running workers under writers ----
# A cancel is an error in the step it lands in (while the worker decodes,
# waits or merges): the step is rolled back and done again after the
# backoff, with nothing counted twice or lost.  A worker that is cancelled
# while it sleeps exits, and the launcher starts it again.
my $log_offset = -s $node->logfile;
start_writers(2);
my $cancels = 0;
for my $i (1 .. 16)
{
	usleep(500_000);
	$cancels += $node->safe_psql('postgres',
		"WITH w AS MATERIALIZED (SELECT pid FROM stp.job_status WHERE job_name IN ('j1', 'j3', 'jr') "
		  . "AND state IN ('running', 'idle')) SELECT count(*) FROM w WHERE pg_cancel_backend(pid)");
}
stop_writers();
note "cancels sent: $cancels";
ok($cancels > 0, 'running workers were cancelled');
check_jobs('after query cancels under writers');
is($node->safe_psql('postgres', "SELECT count(*) FROM stp.job_status WHERE state = 'failed'"),
	'0', 'no partition failed from the cancels');
like(slurp_file($node->logfile, $log_offset), qr/canceling statement due to user request/,
	'the cancels reached the workers');

# ---- a prepared transaction counts at COMMIT PREPARED ----
$node->append_conf('postgresql.conf', 'max_prepared_transactions = 5');
$node->restart;
$node->safe_psql('postgres',
	"BEGIN; INSERT INTO acct VALUES (95000000, 500, 'prep', 50, 5, 'P'); PREPARE TRANSACTION 'p1';");
is($node->safe_psql('postgres', "SELECT stp_wait('j1', '60 s')"), 't', 'j1 caught up with a prepared transaction open');
is($node->safe_psql('postgres', 'SELECT count(*) FROM r_j1 WHERE k = 500'), '0',
	'a prepared transaction does not count before COMMIT PREPARED');
$node->safe_psql('postgres', "COMMIT PREPARED 'p1'");
check_jobs('after COMMIT PREPARED');
is($node->safe_psql('postgres', 'SELECT n FROM r_j1 WHERE k = 500'), '1',
	'a prepared transaction counts at COMMIT PREPARED');

# ---- status and drop ----
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM stp.job_status WHERE wal_retained_bytes >= 0 AND wal_bytes_behind >= 0"),
	'8',
	'stp.job_status shows WAL behind and retained for every partition');
$node->safe_psql('postgres', "SELECT stp_drop_job('$_')") for sort keys %jobs;
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'stp\\_%'", '0'),
	'the jobs\' slots are dropped with them');

# ---- a slot invalidated by max_slot_wal_keep_size, and the rebuild ----
my $inv = $jobs{j1};
$node->safe_psql('postgres',
	"SELECT stp_start_job('jinv', \$\$$inv->{query}\$\$, 'r_jinv', source => 'slot')");
is($node->safe_psql('postgres', "SELECT stp_wait('jinv', '60 s')"), 't', 'jinv caught up');
$node->safe_psql('postgres', "SELECT stp_stop_job('jinv')");
$node->safe_psql('postgres',
	"ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'; SELECT pg_reload_conf()");
for (1 .. 3)
{
	$node->safe_psql('postgres',
		'UPDATE acct SET v = v + 1 WHERE id % 7 = 0; SELECT pg_switch_wal()');
}
$node->safe_psql('postgres', 'CHECKPOINT');
my $slot = "stp_${dboid}_" . $node->safe_psql('postgres', "SELECT job_id FROM stp.jobs WHERE job_name = 'jinv'") . '_0';
is($node->safe_psql('postgres', "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '$slot'"),
	'lost', 'the stopped job\'s slot was invalidated');
$node->safe_psql('postgres', "SELECT stp_resume_job('jinv')");
ok( $node->poll_query_until(
		'postgres', "SELECT state = 'failed' FROM stp.job_status WHERE job_name = 'jinv'"),
	'a job whose slot was invalidated fails');
like($node->safe_psql('postgres', "SELECT last_error FROM stp.job_status WHERE job_name = 'jinv'"),
	qr/replication slot "\Q$slot\E" of job "jinv" was invalidated/, 'with the reason');
$node->safe_psql('postgres',
	"ALTER SYSTEM RESET max_slot_wal_keep_size; SELECT pg_reload_conf()");
$node->safe_psql('postgres', "SELECT pg_drop_replication_slot('$slot')");
$node->safe_psql('postgres', "SELECT stp_resume_job('jinv')");
is($node->safe_psql('postgres', "SELECT stp_wait('jinv', '60 s')"), 't',
	'after the slot was dropped and the job resumed, it caught up');
my ($inv_missing_in_batch, $inv_missing_in_result) =
  StpTest::result_vs_batch_sql('r_jinv', $inv->{query}, $inv->{cols});
is($node->safe_psql('postgres', $inv_missing_in_batch), '0',
	'the rebuilt job has no row that is missing from the batch query');
is($node->safe_psql('postgres', $inv_missing_in_result), '0',
	'the rebuilt job misses no row of the batch query');
$node->safe_psql('postgres', "SELECT stp_drop_job('jinv')");

# ---- DROP EXTENSION: the starter drops the slots its jobs leave ----
$node->safe_psql('postgres',
	"SELECT stp_start_job('jext', \$\$$inv->{query}\$\$, 'r_jext', partitions => 2, source => 'slot')");
is($node->safe_psql('postgres', "SELECT stp_wait('jext', '60 s')"), 't', 'jext caught up');
$node->safe_psql('postgres', 'DROP EXTENSION stp');
ok( $node->poll_query_until(
		'postgres', "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'stp\\_%'", '0'),
	'after DROP EXTENSION, the jobs\' slots are dropped');

$node->stop;
done_testing();
