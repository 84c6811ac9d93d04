
# Copyright (c) stp authors

# 004_oracle.pl: a randomized exactness oracle.
#
# From a seed (STP_ORACLE_SEED, printed with note()), the test generates
# jobs of every supported shape: group keys of every routable kind (int,
# bigint, text under "C" and under a nondeterministic ICU collation,
# numeric with different scales, float8 with -0.0/NaN/Infinity, uuid,
# timestamptz, boolean, NULL, expressions, date_bin and date_trunc windows,
# hopping windows with stp.hop() in FROM,
# multi-column keys), the aggregates count(*), count(x), sum, min, max and
# avg over int2/int4/int8/numeric/float4/float8 (and text, timestamptz for
# min/max), FILTER, bool_and/bool_or/every/bit_and/bit_or, stddev and
# variance over floats, count, sum and avg with DISTINCT, output columns
# computed from aggregates, HAVING,
# ORDER BY and a query without GROUP BY (results that are views over a
# state table), WHERE clauses, 1 to 4 partitions, small batch sizes, and the
# creating session's TimeZone, DateStyle, IntervalStyle and
# extra_float_digits.  Half of the jobs start before the writers, half while
# they write.  Concurrent writers (forked, one psql per script) mix
# single-row INSERTs, multi-row INSERTs, COPY, transactions and savepoints
# that roll back, failing COPYs and long transactions that hold an id open
# while others commit after it.  One job is stopped and resumed meanwhile.
#
# Slot jobs (source => 'slot', at 1 and 3 partitions) of the same shapes
# (except without GROUP BY) run over a third source, ev_slot, which has
# REPLICA IDENTITY FULL and takes, from its own concurrent writer, inserts,
# updates that copy another row's group keys (moving rows between groups
# and partitions), updates that leave the keys alone, deletes, deletes of
# the rows that hold the current minimum or maximum, and transactions and
# savepoints that roll back.
#
# Once the writers stop and every job has caught up, each result table must
# equal its query run as a batch SELECT (in the creating session's
# settings): the same groups (GROUP BY equality, so NULL = NULL, 1.0 = 1.00,
# -0.0 = 0.0, NaN = NaN and the nondeterministic collation's equality), the
# same column types and collations, integers and numerics equal (numeric
# sums and averages also in display scale), floats within a relative 1e-12
# (1e-9 for variances and standard deviations),
# and every source row counted once.  Every mismatch is reported with job,
# group, column and both values.  See test/ORACLE.md.
#
# STP_SOAK=1 runs three seeds with more jobs, writers and rows.
# STP_ORACLE_GUCS=0 keeps DateStyle, IntervalStyle and extra_float_digits at
# their defaults (TimeZone is still randomized).  STP_ORACLE_SELFTEST=1 then
# damages every result table in known ways and checks that the comparison
# finds exactly that damage.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use POSIX ();

my $soak = ($ENV{STP_SOAK} // '') eq '1';
my $seed = $ENV{STP_ORACLE_SEED} // 20241126;
die "STP_ORACLE_SEED must be an integer\n" unless $seed =~ /^\d+$/;
my $selftest = ($ENV{STP_ORACLE_SELFTEST} // '') eq '1';
my $random_gucs = ($ENV{STP_ORACLE_GUCS} // ($selftest ? '0' : '1')) ne '0';

# Sizes of a round.
my %size = $soak
  ? (rounds => 3, jobs => 16, writers => 4, write_secs => 60,
	preload_big => 100_000, preload_small => 1000, slot_jobs => 6, preload_slot => 10_000)
  : (rounds => 1, jobs => 14, writers => 3, write_secs => 40,
	preload_big => 30_000, preload_small => 1000, slot_jobs => 4, preload_slot => 3000);

note "oracle seed $seed (rerun with STP_ORACLE_SEED=$seed), "
  . ($soak ? 'soak' : 'default')
  . " size: $size{rounds} round(s) of $size{jobs} jobs, $size{writers} writers for $size{write_secs} s";

my $node = PostgreSQL::Test::Cluster->new('oracle');
# UTF8, so that the ICU collation works; C, so that the default collation
# is byte order.
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'stp'
max_worker_processes = 96
max_connections = 60
stp.launcher_naptime = 500
log_statement = none
log_min_messages = warning
wal_level = logical
max_replication_slots = 40
});
# A server that loads only trusted output plugins must trust stp's.
$node->append_conf('postgresql.conf',
	"output_plugin_libraries = 'pgoutput, test_decoding, stp'\n")
  if `postgres --describe-config 2>/dev/null` =~ /^output_plugin_libraries\t/m;
$node->start;

$ENV{PGCLIENTENCODING} = 'UTF8';
my $tmp = $PostgreSQL::Test::Utils::tmp_check;
my $parent_pid = $$;
my @writer_pids;

# Whatever happens to the test, the writers do not outlive it.
END
{
	if ($$ == $parent_pid && @writer_pids)
	{
		kill 'TERM', @writer_pids;
		waitpid($_, 0) for @writer_pids;
	}
}

################################################################
# Value pools.  Keys come from small sets that hold values which GROUP BY
# treats as equal although their bytes differ.
################################################################

# UTF-8 bytes: e-acute precomposed and decomposed, sharp s, a-umlaut.
my $e_acute = "\xc3\xa9";
my $E_acute = "\xc3\x89";
my $e_comb = "e\xcc\x81";
my $E_comb = "E\xcc\x81";
my $sharp_s = "\xc3\x9f";
my $a_uml = "\xc3\xa4";
my $A_uml = "\xc3\x84";

my @TXT = (
	'a', 'A', 'a ', 'b', 'B', 'ab', 'Ab', 'aB', 'abc', 'ABC', 'Abc', '',
	'z', 'Z', 'zz', $e_acute, $E_acute, $e_comb, $E_comb, $sharp_s, 'ss',
	'SS', "stra${sharp_s}e", 'STRASSE', 'strasse', $a_uml, $A_uml, 'x y',
	'-', '0', '10', '9');
my @NUMKEY = (
	'0', '0.0', '0.00', '-0', '1', '1.0', '1.00', '1.000', '2.5', '2.50',
	'-3.14', '-3.140', 'NaN', '1e20', '100000000000000000000.000',
	'1.00000000000000000001', 'Infinity', '-Infinity', '0.1', '0.10');
my @F8KEY = (
	'0', '-0', 'NaN', 'Infinity', '-Infinity', '1.5', '-2.25', '0.1',
	'0.3', '0.30000000000000004', '1e300', '-1e-300', '5e-324',
	'3.141592653589793');
my (@BIGKEY, @UUIDKEY);    # filled per round from its seed

# Events fall in three days around the switch to summer time in Europe.
my $ts_base = 1711756800;    # 2024-03-30 00:00:00 UTC

sub pick { return $_[ int(rand(@_)) ]; }

sub ts_literal
{
	my ($epoch, $usec) = @_;
	my @t = gmtime($epoch);
	return sprintf('%04d-%02d-%02d %02d:%02d:%02d.%06d+00',
		$t[5] + 1900, $t[4] + 1, $t[3], $t[2], $t[1], $t[0], $usec);
}

sub random_text
{
	my @alpha = ('a', 'A', 'b', 'B', 'c', $e_acute, $E_acute, $e_comb, ' ');
	my $n = 1 + int(rand(4));
	return join('', map { pick(@alpha) } 1 .. $n);
}

# One source row: writer, script, then the columns of @COLUMNS.  undef is
# NULL.
# The small source lives in a schema that the jobs reach through the
# creating session's search_path.
my $SMALL = '"Oracle Src".ev_small';

my @COLUMNS = qw(w s k_int k_big k_txt k_ci k_num k_f8 k_uuid k_ts k_bool
  v_i2 v_i4 v_i8 v_num v_f4 v_f8 v_f8s v_txt v_ci);

sub gen_row
{
	my ($w, $s) = @_;
	my $r = rand();
	my @row = ($w, $s);

	# k_int: about 100 values, NULL, and the int4 extremes.
	push @row,
	  $r < 0.05 ? undef
	  : $r < 0.06 ? pick('2147483647', '-2147483648')
	  : int(rand(101)) - 50;
	push @row, rand() < 0.05 ? undef : pick(@BIGKEY);
	push @row, rand() < 0.05 ? undef : pick(@TXT);
	push @row, rand() < 0.05 ? undef : pick(@TXT);
	push @row, rand() < 0.05 ? undef : pick(@NUMKEY);
	push @row, rand() < 0.05 ? undef : pick(@F8KEY);
	push @row, rand() < 0.05 ? undef : pick(@UUIDKEY);
	# k_ts: whole minutes, and sometimes with seconds and microseconds.
	my $ts = $ts_base + 60 * int(rand(3 * 24 * 60));
	push @row,
	  rand() < 0.03 ? undef
	  : rand() < 0.3 ? ts_literal($ts + int(rand(60)), int(rand(1_000_000)))
	  : ts_literal($ts, 0);
	push @row, pick(undef, 't', 'f', 'f');

	# v_i2, v_i4, v_i8: with extremes, so that sums leave the type.
	$r = rand();
	push @row,
	  $r < 0.15 ? undef
	  : $r < 0.25 ? '32767'
	  : $r < 0.30 ? '-32768'
	  : int(rand(2001)) - 1000;
	$r = rand();
	push @row,
	  $r < 0.15 ? undef
	  : $r < 0.25 ? '2147483647'
	  : $r < 0.30 ? '-2147483648'
	  : $r < 0.40 ? '0'
	  : sprintf('%.0f', int(rand(4294967296)) - 2147483648);
	$r = rand();
	push @row,
	  $r < 0.20 ? undef
	  : $r < 0.35 ? '9223372036854775' . sprintf('%03d', 807 - int(rand(800)))
	  : $r < 0.40 ? '-9223372036854775' . sprintf('%03d', 808 - int(rand(800)))
	  : $r < 0.50 ? '0'
	  : sprintf('%.0f', int(rand(2e12)) - 1e12);
	# v_num: scales 0 to 6, huge, tiny, and rare NaN and infinities.
	$r = rand();
	push @row,
	  $r < 0.15 ? undef
	  : $r < 0.1505 ? 'NaN'
	  : $r < 0.1510 ? 'Infinity'
	  : $r < 0.1515 ? '-Infinity'
	  : $r < 0.20 ? pick('1e30', '-12345678901234567890.123456789', '0.000000000000000000123')
	  : sprintf('%.*f', int(rand(7)), rand(2000) - 1000);
	# v_f4: quarters, so that float4 sums are exact in every order; rare
	# specials.
	$r = rand();
	push @row,
	  $r < 0.15 ? undef
	  : $r < 0.1503 ? pick('NaN', 'Infinity', '-Infinity')
	  : $r < 0.16 ? '-0'
	  : (int(rand(201)) - 100) / 4;
	# v_f8: positive and inexact; sums differ by summation order only.
	push @row, rand() < 0.15 ? undef : sprintf('%.17g', rand(1000));
	# v_f8s: multiples of 1/1024, exact in every order; rare specials.
	$r = rand();
	push @row,
	  $r < 0.15 ? undef
	  : $r < 0.1505 ? pick('NaN', 'Infinity', '-Infinity')
	  : $r < 0.16 ? '-0'
	  : sprintf('%.10f', (int(rand(2**31)) - 2**30) / 1024);
	push @row, rand() < 0.1 ? undef : rand() < 0.5 ? pick(@TXT) : random_text();
	push @row, rand() < 0.1 ? undef : rand() < 0.5 ? pick(@TXT) : random_text();
	return \@row;
}

sub sql_literal
{
	my ($v) = @_;
	return 'NULL' unless defined $v;
	$v =~ s/'/''/g;
	return "'$v'";
}

sub insert_sql
{
	my ($table, @rows) = @_;
	return "INSERT INTO $table (" . join(', ', @COLUMNS) . ") VALUES\n"
	  . join(",\n",
		map { '(' . join(', ', map { sql_literal($_) } @$_) . ')' } @rows)
	  . ";\n";
}

sub copy_sql
{
	my ($table, $bad, @rows) = @_;
	my $sql = "COPY $table (" . join(', ', @COLUMNS) . ") FROM STDIN;\n";
	$sql .= join("\t", map { defined $_ ? $_ : '\N' } @$_) . "\n" for @rows;
	# A row that fails the COPY after the rows above drew their ids.
	$sql .= join("\t", 'oops', map { '\N' } 2 .. @COLUMNS) . "\n" if $bad;
	return $sql . "\\.\n";
}

################################################################
# Job shapes.
################################################################

# Group keys: output name and expression.
my @KEYS = (
	[ 'k_int', 'k_int' ],
	[ 'k_big', 'k_big' ],
	[ 'k_txt', 'k_txt' ],
	[ 'k_ci', 'k_ci' ],
	[ 'k_num', 'k_num' ],
	[ 'k_f8', 'k_f8' ],
	[ 'k_uuid', 'k_uuid' ],
	[ 'k_ts', 'k_ts' ],
	[ 'k_bool', 'k_bool' ],
	[ 'w_bin15', q{date_bin('15 minutes', k_ts, '2024-03-30 00:07:00+00')} ],
	[ 'w_bin433', q{date_bin('7 minutes 13 seconds', k_ts, TIMESTAMPTZ '2001-02-03 04:05:06.5+00')} ],
	[ 'w_hour', q{date_trunc('hour', k_ts)} ],
	[ 'w_day', q{date_trunc('day', k_ts)} ],
	[ 'w_day_adl', q{date_trunc('day', k_ts, 'Australia/Adelaide')} ],
	[ 'w_date', q{k_ts::date} ],
	[ 'w_shift', q{date_trunc('hour', k_ts - interval '-1 day -2 hours -30 minutes')} ],
	[ 'k_mod7', 'k_int % 7' ],
	[ 'k_lower', 'lower(k_txt)' ],
	[ 'k_char3', 'k_txt::char(3)' ],
	[ 'k_ci_c', 'k_ci COLLATE "C"' ],
	[ 'k_numr', 'round(k_num, 1)' ],
	[ 'k_pos', '(v_i4 > 0)' ],
	[ 'k_f4', 'v_f4' ],
	[ 'Key Upper', 'upper(k_txt)' ],
	[ 'k_bucket', 'oracle_bucket(k_int)' ],
	# '1 day' and '24 hours' are equal intervals with different bytes.
	[ 'k_ival', q{CASE WHEN k_bool THEN interval '1 day' * (k_int % 3) ELSE interval '24 hours' * (k_int % 3) END} ],
	[ 'w_local', q{date_trunc('hour', k_ts AT TIME ZONE 'Asia/Kolkata')} ],
	# Hopping windows: the key is the window of stp.hop() in FROM, which
	# the job keeps as panes of gcd(size, slide) and combines when read.
	# At most one per job, and none with DISTINCT aggregates.
	[ 'w_hop60', 'hw', q{stp.hop(k_ts, '1 hour', '25 minutes', '2024-03-30 00:03:00+00') AS hw} ],
	[ 'w_hop2h', 'hw', q{stp.hop(k_ts, '2 hours', '30 minutes') AS hw} ],
);

# Aggregates: output name, expression, and whether a numeric result is
# deterministic in display scale (sum and avg are; min and max of equal
# values such as 1.0 and 1.00 depend on the order of the rows).
my @AGGS;
push @AGGS, [ 'n', 'count(*)', 0 ];
push @AGGS, [ "cnt_$_", "count($_)", 0 ] for qw(v_i2 v_txt v_f8s k_ci);
push @AGGS, [ "sum_$_", "sum($_)", 1 ] for qw(v_i2 v_i4 v_i8 v_num v_f4 v_f8 v_f8s);
push @AGGS, [ 'sum_i2p1', 'sum(v_i2 + 1)', 1 ];
for my $f (qw(min max))
{
	push @AGGS, [ "${f}_$_", "$f($_)", 0 ]
	  for qw(v_i2 v_i4 v_i8 v_num v_f4 v_f8 v_f8s v_txt v_ci k_ts k_f8 k_num);
}
push @AGGS, [ "avg_$_", "avg($_)", 1 ] for qw(v_i2 v_i4 v_i8 v_num v_f4 v_f8 v_f8s);
# Output names that must be quoted, also in avg's state columns.
push @AGGS, [ 'Sum "I4"', 'sum(v_i4)', 1 ], [ 'Avg Num', 'avg(v_num)', 1 ];
# FILTER on every kind of aggregate.
push @AGGS, [ 'n_pos', 'count(*) FILTER (WHERE v_i4 > 0)', 0 ],
  [ 'cnt_txt_f', q{count(v_txt) FILTER (WHERE k_txt >= 'b')}, 0 ],
  [ 'sum_num_f', 'sum(v_num) FILTER (WHERE k_bool)', 1 ],
  [ 'avg_i8_f', 'avg(v_i8) FILTER (WHERE v_i2 % 2 = 0)', 1 ],
  [ 'min_txt_f', 'min(v_txt) FILTER (WHERE v_i4 < 0)', 0 ],
  [ 'max_f8_f', 'max(v_f8) FILTER (WHERE k_int > 0)', 0 ];
# Boolean and bitwise aggregates, NULL where all inputs are.
push @AGGS, [ 'all_pos', 'bool_and(v_i4 > 0)', 0 ], [ 'any_bool', 'bool_or(k_bool)', 0 ],
  [ 'every_i2', 'every(v_i2 < 100)', 0 ], [ 'and_i4', 'bit_and(v_i4)', 0 ],
  [ 'or_i8', 'bit_or(v_i8)', 0 ], [ 'or_i2_f', 'bit_or(v_i2) FILTER (WHERE k_bool)', 0 ];
# Variance and standard deviation over floats.
push @AGGS, [ 'sd_f8', 'stddev(v_f8)', 0 ], [ 'vpop_f4', 'var_pop(v_f4)', 0 ],
  [ 'sdpop_f8', 'stddev_pop(v_f8)', 0 ], [ 'vsamp_f8', 'var_samp(v_f8)', 0 ],
  [ 'var_f4', 'variance(v_f4)', 0 ], [ 'sdsamp_f4_f', 'stddev_samp(v_f4) FILTER (WHERE v_i4 > 0)', 0 ];
# Output columns that compute with aggregates: the job's result is a view
# over its state table.
push @AGGS, [ 'sum_i4_x2', 'sum(v_i4) * 2', 0 ],
  [ 'mean_num', 'sum(v_num) / nullif(count(v_num), 0)', 1 ],
  [ 'span_i4', 'max(v_i4)::int8 - min(v_i4)', 0 ],
  [ 'half_avg_f8', '0.5 * avg(v_f8)', 0 ],
  [ 'frac_txt', 'count(v_txt)::float8 / count(*)', 0 ];
# DISTINCT aggregates, over NULLs, numeric 1.0/1.00, a nondeterministic
# collation, with FILTER; sum and avg over numeric may show another scale
# of an equal value.
push @AGGS, [ 'nd_i2', 'count(DISTINCT v_i2)', 0 ],
  [ 'nd_txt_f', 'count(DISTINCT v_txt) FILTER (WHERE k_bool)', 0 ],
  [ 'nd_ci', 'count(DISTINCT k_ci)', 0 ],
  [ 'nd_num', 'count(DISTINCT v_num) FILTER (WHERE v_i4 > 0)', 0 ],
  [ 'sd_i4', 'sum(DISTINCT v_i4)', 1 ],
  [ 'ad_i2_f', 'avg(DISTINCT v_i2) FILTER (WHERE v_txt IS NOT NULL)', 1 ],
  [ 'sd_num', 'sum(DISTINCT v_num)', 0 ],
  [ 'nd_x2', 'count(DISTINCT v_i8) * 2', 0 ];
# Aggregates that stp merges with their combine function: user-defined
# ones of schema oracle, with and without a final function, bit_xor, and
# float regression aggregates whose values are far from the cancellation
# that would make merge order show beyond the tolerance.  Hopping windows
# and slot jobs refuse them.  They are dealt without random numbers (see
# make_jobs), so that a seed makes the same other jobs and rows as before
# they were added.
my @CB_AGGS = ([ 'cb_xor_i4', 'bit_xor(v_i4)', 0 ],
  [ 'cb_xor_i2_f', 'bit_xor(v_i2) FILTER (WHERE k_bool)', 0 ],
  [ 'cb_usum_i4', 'oracle.u_sum(v_i4)', 0 ],
  [ 'cb_uavg_i4', 'oracle.u_avg(v_i4)', 1 ],
  [ 'cb_uavg_i2_f', 'oracle.u_avg(v_i2) FILTER (WHERE v_i4 > 0)', 1 ],
  [ 'cb_umax_num', 'oracle.u_max(v_num)', 0 ],
  [ 'cb_covar_f8', 'covar_pop(v_f8, v_f8 * 2)', 0 ],
  [ 'cb_sxx_f4', 'regr_sxx(v_f8s, v_f4)', 0 ],
  [ 'cb_avgx_f4', 'regr_avgx(v_f8, v_f4)', 0 ],
  [ 'cb_count_f', 'regr_count(v_f8s, v_f4) FILTER (WHERE v_i2 % 3 = 0)', 0 ],
  [ 'cb_diff', 'oracle.u_sum(v_i4) - sum(v_i4)', 0 ]);

# HAVING clauses, for jobs whose result is a view.
my @HAVINGS = ('count(*) > 1', 'sum(v_i4) IS NOT NULL', 'max(v_i2) > 0 OR count(*) = 1',
	'avg(v_f4) IS DISTINCT FROM 0');

# WHERE clauses, several with constants of types whose text form depends
# on the session (timestamptz, date, interval, float8).
my @WHERES = (
	'v_i4 > 0',
	q{k_ts >= '2024-03-31 01:30:00+00'},
	q{k_ts < '2024-04-01 12:00'},
	q{k_ts::date <> '2024-04-01'},
	q{k_f8 <> '0.30000000000000004'::float8},
	q{v_f8s IS DISTINCT FROM 'NaN'::float8},
	q{k_txt >= 'b'},
	q{k_ci <> 'abc'},
	'k_num <> 1',
	'k_bool IS NOT FALSE',
	'v_i8 % 3 <> 0',
	q{k_ts + interval '-1 day -3 hours' < '2024-03-30 12:00+00'},
	'coalesce(k_int, 0) BETWEEN -30 AND 30',
	q{v_num IS NOT NULL OR v_txt LIKE 'a%'},
	'v_i2 <> 32767',
);

my @TIMEZONES = ('UTC', 'Asia/Kathmandu', 'America/St_Johns', 'Pacific/Chatham',
	'Europe/Berlin', 'America/Los_Angeles');
my @DATESTYLES = ('ISO, MDY', 'ISO, DMY', 'SQL, DMY', 'SQL, MDY', 'German, DMY',
	'Postgres, DMY');
my @INTERVALSTYLES = ('postgres', 'postgres_verbose', 'sql_standard', 'iso_8601');
my @FLOATDIGITS = (1, 3, 0, -2);

sub shuffle
{
	my @a = @_;
	for (my $i = $#a; $i > 0; $i--)
	{
		my $j = int(rand($i + 1));
		@a[ $i, $j ] = @a[ $j, $i ];
	}
	return @a;
}

# Deal the pools out over the jobs so that every key, aggregate and
# partition count occurs in every round, then add random extras.
# Set while make_slot_jobs makes its jobs: none of @CB_AGGS.
our $no_combine = 0;
# Set while make_slot_jobs makes its retracting jobs: only aggregates that
# a slot job takes old rows back from (count, and sum and avg of integers).
our $retract_only = 0;

sub make_jobs
{
	my ($njobs) = @_;
	my @jobs = map { { keys => [], aggs => [] } } 0 .. $njobs - 1;
	my @k = shuffle(0 .. $#KEYS);
	push @{ $jobs[ $_ % $njobs ]{keys} }, $k[$_] for 0 .. $#k;
	my @a = shuffle(grep { !$selftest || ($AGGS[$_][1] =~ /^(count|sum|min|max|avg)\([^()]*\)$/ && $AGGS[$_][1] !~ /DISTINCT/) } 0 .. $#AGGS);
	@a = grep { $AGGS[$_][1] =~ /^(count\((\*|\w+)\)|sum\((v_i2|v_i4|v_i8|v_i2 \+ 1)\)|avg\((v_i2|v_i4|v_i8)\))( FILTER .*)?$/ } @a
	  if $retract_only;
	push @{ $jobs[ $_ % $njobs ]{aggs} }, $a[$_] for 0 .. $#a;
	my @parts = shuffle(map { ($_ % 4) + 1 } 0 .. $njobs - 1);

	# One job has no GROUP BY (in row mode, on 3 partitions); its keys go
	# to the last job, which keeps only its groups, and its partition count
	# goes to another job.  Not in the self-test, which updates the result.
	my $global = $selftest ? -1 : $njobs - 2;
	if ($global >= 0)
	{
		push @{ $jobs[-1]{keys} }, @{ $jobs[$global]{keys} };
		$jobs[$global]{keys} = [];
		my ($one) = grep { $parts[$_] == 1 } 0 .. $#parts;
		@parts[ $one, $global ] = @parts[ $global, $one ];
	}

	for my $i (0 .. $njobs - 1)
	{
		my $j = $jobs[$i];
		$j->{name} = "j$i";
		$j->{index} = $i;

		# 1 to 4 keys (the keys-only job may take more, the global job
		# none).
		my $want = 1 + int(rand(4));
		$want = @{ $j->{keys} } if $want < @{ $j->{keys} };
		$want = 0 if $i == $global;
		while (@{ $j->{keys} } < $want)
		{
			my $x = int(rand(@KEYS));
			push @{ $j->{keys} }, $x unless grep { $_ == $x } @{ $j->{keys} };
		}
		splice(@{ $j->{keys} }, 4) if @{ $j->{keys} } > 4 && $i != $njobs - 1;
		# One hopping window at most.
		my @hops = grep { defined $KEYS[$_][2] } @{ $j->{keys} };
		my %drop = map { $_ => 1 } @hops[ 1 .. $#hops ];
		$j->{keys} = [ grep { !$drop{$_} } @{ $j->{keys} } ];
		$j->{hop} = @hops ? $KEYS[ $hops[0] ][2] : undef;

		# 3 to 9 aggregates; the last job keeps only its groups.
		if ($i == $njobs - 1)
		{
			$j->{aggs} = [];
		}
		else
		{
			my $w = 3 + int(rand(7));
			while (@{ $j->{aggs} } < $w)
			{
				my $x = $a[ int(rand(@a)) ];
				push @{ $j->{aggs} }, $x unless grep { $_ == $x } @{ $j->{aggs} };
			}
			# A hopping window combines its panes, which DISTINCT
			# aggregates cannot do: those go to other jobs.
			if ($j->{hop})
			{
				$j->{aggs} = [ grep { $AGGS[$_][1] !~ /DISTINCT/ } @{ $j->{aggs} } ];
				push @{ $j->{aggs} }, 0 unless @{ $j->{aggs} };
			}
		}

		my $r = rand();
		my @where =
		    $r < 0.4 ? ()
		  : $r < 0.8 ? (pick(@WHERES))
		  : (shuffle(@WHERES))[ 0, 1 ];
		$j->{where} = @where ? join(' AND ', map { "($_)" } @where) : undef;

		# Jobs on the small source get tiny batches.
		$j->{source} = rand() < 0.3 ? 'ev_small' : 'ev_big';
		$j->{batch_size} =
		  $j->{source} eq 'ev_small'
		  ? int(exp(rand(log(60))))
		  : int(100 * exp(rand(log(50))));
		$j->{partitions} = $parts[$i];

		# Row mode (partitions own id ranges and merge into shared
		# groups) for every third job, 'auto' for the next; the job
		# without GROUP BY runs in row mode on 3 partitions.
		$j->{strategy} = ('rows', 'auto', 'groups')[ $i % 3 ];
		@$j{qw(strategy partitions)} = ('rows', 3) if $i == $global;
		# Row mode cannot keep DISTINCT aggregates (refused at creation).
		$j->{strategy} = 'groups'
		  if $j->{strategy} eq 'rows' && grep { $AGGS[$_][1] =~ /DISTINCT/ } @{ $j->{aggs} };
		# ... and a query without GROUP BY needs row mode on more than one
		# partition: with a DISTINCT aggregate it runs on one.
		$j->{partitions} = 1 if $i == $global && $j->{strategy} eq 'groups';
		$j->{poll} = pick('10 ms', '50 ms', '100 ms');
		$j->{start} = $i % 2 ? 'during' : 'before';
		$j->{result} =
		  $i == 0 ? qq{oracle."R_$j->{name}"} : "public.r_$j->{name}";

		# The creating session's settings; half of the time the defaults.
		# The random numbers are drawn either way, so that a seed makes
		# the same jobs with and without STP_ORACLE_GUCS=0.
		$j->{gucs} = {
			TimeZone => pick(@TIMEZONES),
			DateStyle => rand() < 0.5 ? pick(@DATESTYLES) : 'ISO, MDY',
			IntervalStyle => rand() < 0.5 ? pick(@INTERVALSTYLES) : 'postgres',
			extra_float_digits => rand() < 0.5 ? pick(@FLOATDIGITS) : 1,
		};
		@{ $j->{gucs} }{qw(DateStyle IntervalStyle extra_float_digits)} = ('ISO, MDY', 'postgres', 1)
		  unless $random_gucs;
		$j->{gucs}{search_path} = '"Oracle Src", public';

		# The layout of the job's distinct tables, if it has DISTINCT
		# aggregates: 'auto' (chunks for a time bucket key), or forced.
		# Taken from the job's number, so the random draws stay the same.
		$j->{gucs}{'stp.distinct_layout'} = ('auto', 'chunks', 'pairs')[ $i % 3 ];

		# The select list in random order, GROUP BY by expression, name or
		# position.
		my @items = (
			(map { { key => 1, name => $KEYS[$_][0], expr => $KEYS[$_][1] } } @{ $j->{keys} }),
			(map { { key => 0, name => $AGGS[$_][0], expr => $AGGS[$_][1], scale => $AGGS[$_][2] } } @{ $j->{aggs} }));
		@items = shuffle(@items);
		my @group;
		for my $p (0 .. $#items)
		{
			next unless $items[$p]{key};
			my $g = rand();
			push @group,
			    $g < 0.4 ? $items[$p]{expr}
			  : $g < 0.7 ? qi($items[$p]{name})
			  : $p + 1;
		}
		# A name in GROUP BY is an input column first; use it only when
		# the output name is not one.
		for my $x (@group)
		{
			my ($it) = grep { $_->{name} eq $x } @items;
			$x = $it->{expr} if $it && grep { $_ eq $x } @COLUMNS;
		}
		# Two of @CB_AGGS, at the end of the select list, for every job
		# with aggregates but those with a hopping window (and slot jobs):
		# every one of them is dealt each round.
		if (!$selftest && !$no_combine && !defined $j->{hop} && $i != $njobs - 1)
		{
			push @items, map { { key => 0, name => $_->[0], expr => $_->[1], scale => $_->[2] } }
			  @CB_AGGS[ $i % @CB_AGGS, ($i + 5) % @CB_AGGS ];
		}
		$j->{items} = \@items;
		$j->{key_names} = [ map { $_->{name} } grep { $_->{key} } @items ];
		# A third of the other jobs filter their groups with HAVING, and a
		# third order them: their result is a view.
		my $having = (!$selftest && !$retract_only && $i != $njobs - 1 && rand() < 0.33) ? pick(@HAVINGS) : undef;
		my $order = (!$selftest && !$retract_only && @items && rand() < 0.33)
		  ? ' ORDER BY 1 ' . pick('ASC', 'DESC NULLS LAST', 'NULLS FIRST') : '';
		$j->{query} =
		    'SELECT '
		  . join(', ', map { "$_->{expr} AS " . qi($_->{name}) } @items)
		  . " FROM $j->{source}"
		  . (defined $j->{hop} ? ", $j->{hop}" : '')
		  . (defined $j->{where} ? " WHERE $j->{where}" : '')
		  . (@group ? ' GROUP BY ' . join(', ', @group) : '')
		  . (defined $having ? " HAVING $having" : '')
		  . $order;
	}
	return @jobs;
}

# Slot jobs: shapes from make_jobs (the one without GROUP BY left out)
# over ev_slot, at 1 and 3 partitions, some with small batches.
sub make_slot_jobs
{
	my ($n) = @_;
	# Slot jobs refuse DISTINCT aggregates, hopping windows and aggregates
	# that stp merges with their combine function (not dealt to them).
	local $no_combine = 1;
	my @jobs = grep {
		@{ $_->{keys} } && !defined $_->{hop} && $_->{query} !~ /\w\(DISTINCT /
	} make_jobs($n + 6);
	splice(@jobs, $n) if @jobs > $n;

	# Two more whose aggregates all retract: their merges subtract the old
	# rows of UPDATEs and DELETEs instead of computing the touched groups
	# again from the source.
	my @retract = do
	{
		local $retract_only = 1;
		grep { @{ $_->{keys} } && !defined $_->{hop} } make_jobs(5);
	};
	splice(@retract, 2) if @retract > 2;
	$_->{retract} = 1 for @retract;

	for my $list ([ 's', \@jobs ], [ 't', \@retract ])
	{
		my ($prefix, $js) = @$list;
		for my $i (0 .. $#$js)
		{
			my $j = $js->[$i];
			$j->{name} = "$prefix$i";
			$j->{slot} = 1;
			$j->{strategy} = 'groups';
			$j->{source} = 'ev_slot';
			$j->{query} =~ s/ FROM ev_(big|small)/ FROM ev_slot/ or die "no source in $j->{query}";
			$j->{result} = "public.r_$prefix$i";
			$j->{partitions} = $i % 2 ? 3 : 1;
			$j->{batch_size} = rand() < 0.5 ? int(20 + rand(500)) : 1000000;
		}
	}
	return (@jobs, @retract);
}

# One random transaction of the writer of ev_slot, in its script $s.
sub slot_writer_tx
{
	my ($s) = @_;
	my $maxid = $size{preload_slot} + 8 * $s;
	my $id = sub { return 1 + int(rand($maxid)); };
	my $r = rand();
	my $col = pick(qw(k_int k_big k_txt k_ci k_num k_f8 k_uuid k_ts k_bool));
	my $agg = pick(qw(v_i2 v_i4 v_i8 v_num v_f4 v_f8 v_txt k_ts));
	# Inserts.
	return insert_sql('ev_slot', map { gen_row(99, $s) } 1 .. 1 + int(rand(3)))
	  if $r < 0.25;
	# Updates that move a row to another row's groups.
	return sprintf(
		"UPDATE ev_slot SET (%s, k_int, k_txt) = (SELECT %s, k_int, k_txt FROM ev_slot WHERE id = %d) WHERE id = %d;\n",
		$col, $col, $id->(), $id->())
	  if $r < 0.45;
	# Updates that leave the keys alone.
	return sprintf(
		"UPDATE ev_slot SET v_i4 = v_i4 + 1, v_num = v_num * 2, v_f8 = -v_f8, v_txt = v_txt || 'u' WHERE id = %d;\n",
		$id->())
	  if $r < 0.60;
	return sprintf("DELETE FROM ev_slot WHERE id = %d;\n", $id->())
	  if $r < 0.72;
	# Deletes of the row that holds the current minimum or maximum.
	return sprintf(
		"DELETE FROM ev_slot WHERE id = (SELECT id FROM ev_slot WHERE %s IS NOT NULL ORDER BY %s %s LIMIT 1);\n",
		$agg, $agg, rand() < 0.5 ? 'DESC' : 'ASC')
	  if $r < 0.84;
	# A transaction that rolls back.
	return "BEGIN;\n"
	  . insert_sql('ev_slot', gen_row(98, $s))
	  . sprintf("DELETE FROM ev_slot WHERE id BETWEEN %d AND %d;\nROLLBACK;\n", $id->(), $maxid)
	  if $r < 0.92;
	# A savepoint that rolls back inside a committed transaction.
	return sprintf("BEGIN;\nUPDATE ev_slot SET v_i2 = NULL WHERE id = %d;\nSAVEPOINT a;\n"
		  . "DELETE FROM ev_slot WHERE id > %d;\nROLLBACK TO SAVEPOINT a;\n", $id->(), $id->())
	  . insert_sql('ev_slot', gen_row(97, $s))
	  . "COMMIT;\n";
}

# The writer of ev_slot: until the stop file appears, psql runs scripts of
# random transactions; an error (a deadlock) ends just that statement.
sub start_slot_writer
{
	my ($db, $wseed, $stopfile) = @_;
	my $script = "$tmp/oracle_${db}_slot_writer.sql";
	my $connstr = $node->connstr($db);
	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# The child leaves through _exit: the END blocks belong to the test.
		eval {
			srand($wseed);
			open STDOUT, '>', '/dev/null';
			open STDERR, '>', '/dev/null';
			my $s = 0;
			while (!-e $stopfile && getppid() == $parent_pid)
			{
				$s++;
				open my $f, '>', $script or die;
				print $f slot_writer_tx($s) for 1 .. 20;
				close $f;
				system('psql', '-X', '-q', '-d', $connstr, '-f', $script);
				usleep(20_000);
			}
		};
		POSIX::_exit($@ ? 1 : 0);
	}
	return $pid;
}

sub gucs_sql
{
	my ($job) = @_;
	my $g = $job->{gucs};
	return join('',
		map { $_ eq 'search_path' ? "SET $_ = $g->{$_};\n" : "SET $_ = '$g->{$_}';\n" }
		  sort keys %$g);
}

sub describe_job
{
	my ($j) = @_;
	my $g = $j->{gucs};
	return "$j->{name}: $j->{source}, $j->{partitions} partition(s), strategy $j->{strategy}, batch_size $j->{batch_size}, "
	  . "started $j->{start} the writers, TimeZone=$g->{TimeZone} DateStyle='$g->{DateStyle}' "
	  . "IntervalStyle=$g->{IntervalStyle} extra_float_digits=$g->{extra_float_digits} "
	  . "stp.distinct_layout=" . ($g->{'stp.distinct_layout'} // 'auto') . "\n"
	  . "    $j->{query}";
}

################################################################
# The writers.
################################################################

# One writer script: SQL text, the rows it commits to each source, and the
# exit code psql must return.
sub writer_script
{
	my ($w, $s) = @_;
	my $tbl = sub { rand() < 0.2 ? 'small' : 'big' };
	my %table = (big => 'ev_big', small => $SMALL);
	my %commit = (big => 0, small => 0);
	my $rows = sub {
		my ($t, $max_big, $max_small) = @_;
		my $n = 1 + int(rand($t eq 'big' ? $max_big : $max_small));
		return map { gen_row($w, $s) } 1 .. $n;
	};
	my $sql = '';
	my $rc = 0;
	my $kind = rand();

	if ($kind < 0.22)
	{
		# Single-row INSERTs, each its own transaction.
		for (1 .. 1 + int(rand(5)))
		{
			my $t = $tbl->();
			$sql .= insert_sql($table{$t}, gen_row($w, $s));
			$commit{$t}++;
		}
	}
	elsif ($kind < 0.44)
	{
		# A multi-row INSERT.
		my $t = $tbl->();
		my @r = $rows->($t, 200, 30);
		$sql .= insert_sql($table{$t}, @r);
		$commit{$t} += @r;
	}
	elsif ($kind < 0.58)
	{
		# COPY.
		my $t = $tbl->();
		my @r = $rows->($t, 1000, 60);
		$sql .= copy_sql($table{$t}, 0, @r);
		$commit{$t} += @r;
	}
	elsif ($kind < 0.66)
	{
		# A transaction that rolls back.
		$sql .= "BEGIN;\n";
		for (1 .. 1 + int(rand(3)))
		{
			my $t = $tbl->();
			my @r = $rows->($t, 100, 5);
			$sql .= rand() < 0.5 ? insert_sql($table{$t}, @r) : copy_sql($table{$t}, 0, @r);
		}
		$sql .= "ROLLBACK;\n";
	}
	elsif ($kind < 0.78)
	{
		# Savepoints that roll back, and one that is released.
		$sql .= "BEGIN;\n";
		my $t = $tbl->();
		my @r = $rows->($t, 50, 5);
		$sql .= insert_sql($table{$t}, @r);
		$commit{$t} += @r;
		$sql .= "SAVEPOINT a;\n";
		$sql .= insert_sql($table{$t}, $rows->($t, 50, 5));
		$sql .= "ROLLBACK TO SAVEPOINT a;\n";
		$t = $tbl->();
		@r = $rows->($t, 50, 5);
		$sql .= insert_sql($table{$t}, @r);
		$commit{$t} += @r;
		$sql .= "SAVEPOINT b;\n";
		@r = $rows->($t, 300, 5);
		$sql .= copy_sql($table{$t}, 0, @r);
		$commit{$t} += @r;
		$sql .= "RELEASE SAVEPOINT b;\nSAVEPOINT c;\n";
		$sql .= copy_sql($table{$t}, 0, $rows->($t, 100, 5));
		$sql .= "ROLLBACK TO SAVEPOINT c;\nCOMMIT;\n";
	}
	elsif ($kind < 0.85)
	{
		# A long transaction: it draws ids, then others commit after it.
		$sql .= "BEGIN;\n";
		my $t = $tbl->();
		my @r = $rows->($t, 3, 3);
		$sql .= insert_sql($table{$t}, @r);
		my $n = @r;
		$sql .= sprintf("SELECT pg_sleep(%.2f);\n", 0.3 + rand(1.7));
		@r = $rows->($t, 20, 3);
		$sql .= insert_sql($table{$t}, @r);
		$n += @r;
		if (rand() < 0.3)
		{
			$sql .= "ROLLBACK;\n";
		}
		else
		{
			$sql .= "COMMIT;\n";
			$commit{$t} += $n;
		}
	}
	elsif ($kind < 0.90)
	{
		# A COPY that fails after some of its rows: ids drawn, nothing
		# committed, psql stops with exit code 3.
		my $t = $tbl->();
		$sql .= "BEGIN;\n" . insert_sql($table{$t}, $rows->($t, 20, 3));
		$sql .= copy_sql($table{$t}, 1, $rows->($t, 200, 5));
		$sql .= "COMMIT;\n";
		$rc = 3;
	}
	else
	{
		# One transaction into both sources.
		$sql .= "BEGIN;\n";
		for my $t ('big', 'small', 'big')
		{
			my @r = $rows->($t, 30, 3);
			$sql .= insert_sql($table{$t}, @r);
			$commit{$t} += @r;
		}
		$sql .= "COMMIT;\n";
	}
	return ($sql, $commit{big}, $commit{small}, $rc);
}

sub start_writer
{
	my ($db, $w, $wseed, $secs, $stopfile) = @_;
	my $log = "$tmp/oracle_${db}_writer_$w.log";
	my $errlog = "$tmp/oracle_${db}_writer_$w.err";
	my $script = "$tmp/oracle_${db}_writer_$w.sql";
	unlink $log, $errlog;
	my $connstr = $node->connstr($db);
	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		# The child leaves through _exit: the END blocks belong to the test.
		eval {
			srand($wseed);
			open my $out, '>', $log or die;
			$out->autoflush(1);
			open STDOUT, '>', '/dev/null';
			open STDERR, '>>', $errlog;
			my $deadline = time() + $secs;
			my $s = 0;
			while (!-e $stopfile && time() < $deadline && getppid() == $parent_pid)
			{
				$s++;
				my ($sql, $big, $small, $want) = writer_script($w, $s);
				open my $f, '>', $script or die;
				print $f $sql;
				close $f;
				my $rc = system('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
					'-d', $connstr, '-f', $script) >> 8;
				if ($rc == $want)
				{
					print $out "ok $s $big $small\n";
				}
				else
				{
					print $out "bad $s rc $rc wanted $want\n";
					rename $script, "$script.bad$s";
				}
			}
			close $out;
		};
		POSIX::_exit($@ ? 1 : 0);
	}
	return ($pid, $log);
}

################################################################
# The comparison.
################################################################

# Name, type and collation of a table's columns, by name.
sub columns_of
{
	my ($db, $rel) = @_;
	my %cols;
	my $out = $node->safe_psql(
		$db, qq{SELECT attname, format_type(atttypid, atttypmod),
		CASE WHEN attcollation = 0 THEN '' ELSE attcollation::regcollation::text END
		FROM pg_attribute WHERE attrelid = '$rel'::regclass AND attnum > 0
		AND NOT attisdropped AND attname NOT LIKE '\\_stp\\_%'});
	for my $line (split /\n/, $out)
	{
		my ($name, $type, $coll) = split /\|/, $line, -1;
		$cols{$name} = { type => $type, coll => $coll };
	}
	return \%cols;
}

sub qi
{
	my ($name) = @_;
	return $name =~ /^[a-z_][a-z0-9_]*$/ ? $name : '"' . ($name =~ s/"/""/gr) . '"';
}

# The counters of the whole run.
my %total = (jobs => 0, groups => 0, comparisons => 0, mismatches => 0,
	rows => 0, rows_aggregated => 0, scripts => 0, selftests => 0);

# Self-test: damage the result table in known ways, so that the comparison
# must find exactly that damage.  Row 1 of the table gets every aggregate
# changed beyond the tolerance, row 2 gets its double precision values
# changed within the tolerance (relative 1e-14) and its numeric sums and
# averages one more digit of display scale, row 3 is deleted.  Returns what
# the comparison must report.
sub damage_result
{
	my ($db, $j, $keys, $vals) = @_;
	my $res = $j->{result};
	my $keylist = join(', ', map { qi($_->{name}) } @$keys);
	my (@set1, @set2, @scale_cols);
	for my $v (@$vals)
	{
		my $c = qi($v->{name});
		my $t = $v->{type};
		if ($t eq 'double precision' || $t eq 'real')
		{
			my $factor = $t eq 'real' ? '1.001' : '(1 + 1e-7)';
			push @set1,
			  "$c = CASE WHEN $c IS NULL OR $c IN ('NaN', 'Infinity', '-Infinity') OR abs($c) < 1e-30 "
			  . "THEN 12345.5 ELSE $c * $factor END";
			push @set2,
			  "$c = CASE WHEN $c IN ('NaN', 'Infinity', '-Infinity') OR abs($c) < 1e-300 "
			  . "THEN $c ELSE $c * (1 + 1e-14) END"
			  if $t eq 'double precision';
		}
		elsif ($t eq 'numeric')
		{
			push @set1, "$c = CASE WHEN scale($c) IS NULL THEN 1 ELSE $c + 1 END";
			if ($v->{scale})
			{
				push @set2, "$c = CASE WHEN scale($c) IS NULL THEN $c ELSE round($c, scale($c) + 1) END";
				push @scale_cols, $c;
			}
		}
		elsif ($t eq 'smallint' || $t eq 'integer' || $t eq 'bigint')
		{
			push @set1, "$c = CASE WHEN $c IS NULL THEN 1 WHEN $c > 0 THEN $c - 1 ELSE $c + 1 END";
		}
		elsif ($t eq 'text')
		{
			push @set1, "$c = coalesce($c, '') || 'x'";
		}
		elsif ($t eq 'timestamp with time zone')
		{
			push @set1, "$c = coalesce($c, 'epoch') + interval '1 microsecond'";
		}
		else
		{
			die "self-test cannot damage a column of type $t";
		}
	}
	my $row = sub { "ctid = (SELECT c FROM oracle_rows WHERE rn = $_[0])" };
	my $out = $node->safe_psql(
		$db, qq{
SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET TimeZone = 'UTC';
CREATE TEMP TABLE oracle_rows AS
  SELECT ctid AS c, row_number() OVER () AS rn, ROW($keylist)::text AS grp FROM $res;
SELECT grp FROM oracle_rows WHERE rn IN (1, 2) ORDER BY rn;
SELECT } . (@scale_cols ? join(' + ', map { "(scale($_) IS NOT NULL)::int" } @scale_cols) : '0')
		  . " FROM $res WHERE " . $row->(2) . ";\n"
		  . (@set1 ? "UPDATE $res SET " . join(', ', @set1) . ' WHERE ' . $row->(1) . ";\n" : '')
		  . (@set2 ? "UPDATE $res SET " . join(', ', @set2) . ' WHERE ' . $row->(2) . ";\n" : '')
		  . "DELETE FROM $res WHERE " . $row->(3) . ';');
	my ($grp1, $grp2, $scales) = split /\n/, $out;
	return (grp1 => $grp1, grp2 => $grp2, scales => $scales);
}

# Does the comparison report exactly the damage of damage_result?
sub check_selftest
{
	my ($j, $vals, $found, $expect) = @_;
	my @problems;
	my $missing = grep { $_->{what} eq 'group missing from the result table' } @$found;
	push @problems, "$missing missing groups reported, 1 expected" if $missing != 1;
	for my $v (@$vals)
	{
		my @hits = grep { $_->{col} eq $v->{name} && $_->{what} eq 'value' } @$found;
		push @problems, "column $v->{name}: " . scalar(@hits) . ' value mismatches reported, 1 expected'
		  if @hits != 1;
		push @problems, "column $v->{name}: the value mismatch is not in the damaged group"
		  if @hits == 1 && $hits[0]{grp} ne $expect->{grp1};
	}
	my $scales = grep { $_->{what} eq 'display scale' && $_->{grp} eq $expect->{grp2} } @$found;
	push @problems, "$scales display scale mismatches reported in the second group, $expect->{scales} expected"
	  if $scales != $expect->{scales};
	for my $f (@$found)
	{
		next if $f->{what} eq 'group missing from the result table' || $f->{what} eq 'value';
		next if $f->{what} eq 'display scale'
		  && ($f->{grp} eq $expect->{grp2} || $f->{grp} eq $expect->{grp1});
		push @problems, "unexpected mismatch: $f->{text}";
	}
	$total{selftests}++;
	is(join("\n", @problems), '',
		"$j->{name}: self-test: the comparison finds exactly the damage done to the result table");
}

# Compare one job's result table with its batch query.  With $selftest,
# damage the result table first and check that exactly the damage is found.
sub compare_job
{
	my ($db, $j, $selftest) = @_;
	my $bt = "public.oracle_batch_$j->{name}";
	my @found;    # mismatches: { grp, col, what, text }
	my $mismatch = sub {
		my ($grp, $col, $what, $text) = @_;
		push @found, { grp => $grp, col => $col, what => $what, text => $text };
	};

	# The self-test damages a copy of a result that is a view.
	if ($selftest
		&& $node->safe_psql($db, "SELECT relkind FROM pg_class WHERE oid = '$j->{result}'::regclass") eq 'v')
	{
		my $copy = "public.oracle_copy_$j->{name}";
		$node->safe_psql($db, "DROP TABLE IF EXISTS $copy; CREATE TABLE $copy AS SELECT * FROM $j->{result}");
		$j = { %$j, result => $copy };
	}

	# A failed job cannot be equal; say why first.
	for my $line (split /\n/,
		$node->safe_psql($db, "SELECT partition, last_error FROM stp.job_status "
			  . "WHERE job_name = '$j->{name}' AND state = 'failed' ORDER BY partition"))
	{
		my ($part, $err) = split /\|/, $line, 2;
		$mismatch->('', '(job)', 'failed', "partition $part failed: $err");
	}

	# The batch query, run in the creating session's settings, and the
	# number of source rows that pass its WHERE clause.
	my $source_rows = $node->safe_psql(
		$db, gucs_sql($j) . qq{
DROP TABLE IF EXISTS $bt;
CREATE UNLOGGED TABLE $bt AS $j->{query};
SELECT count(*) FROM $j->{source}} . (defined $j->{where} ? " WHERE $j->{where}" : ''));

	# Column names, types and collations.
	my $bcols = columns_of($db, $bt);
	my $rcols = columns_of($db, $j->{result});
	my @compare;
	for my $it (@{ $j->{items} })
	{
		my $b = $bcols->{ $it->{name} };
		my $r = $rcols->{ $it->{name} };
		if (!$r)
		{
			$mismatch->('', $it->{name}, 'column',
				"column $it->{name}: missing from the result table (batch type $b->{type})");
			next;
		}
		$mismatch->('', $it->{name}, 'column',
			"column $it->{name}: type $r->{type} in the result table, $b->{type} in the batch query")
		  if $r->{type} ne $b->{type};
		$mismatch->('', $it->{name}, 'column',
			"column $it->{name}: collation $r->{coll} in the result table, $b->{coll} in the batch query")
		  if $r->{coll} ne $b->{coll};
		push @compare, { %$it, type => $b->{type}, coll => $b->{coll} };
	}
	for my $name (sort keys %$rcols)
	{
		$mismatch->('', $name, 'column', "column $name: in the result table but not in the batch query")
		  unless $bcols->{$name};
	}

	my @keys = grep { $_->{key} } @compare;
	my @vals = grep { !$_->{key} } @compare;
	my %expect = $selftest ? damage_result($db, $j, \@keys, \@vals) : ();

	# Both sides in one relation, cast to the batch query's types and
	# collations, grouped by the keys with GROUP BY's own equality: NULL
	# equals NULL, 1.0 equals 1.00, -0.0 equals 0.0, NaN equals NaN, and text
	# is equal under its collation.
	my $col = sub {
		my ($c) = @_;
		return qi($c->{name}) . '::' . $c->{type}
		  . ($c->{coll} ne '' ? " COLLATE $c->{coll}" : '') . ' AS ' . qi($c->{name});
	};
	my $sel = join(', ', map { $col->($_) } @compare);
	my $keylist = join(', ', map { qi($_->{name}) } @keys);
	my $groupby = @keys ? $keylist : '()';
	my @aggcols;
	my @checks = (qq{('(group)', CASE WHEN _nr = 1 AND _nb = 1 THEN NULL
		WHEN _nr = 0 THEN 'group missing from the result table'
		WHEN _nb = 0 THEN 'group not in the batch query'
		WHEN _nr > 1 THEN 'group duplicated in the result table'
		ELSE 'group duplicated in the batch query' END, _nr::text, _nb::text)});
	for my $i (0 .. $#vals)
	{
		my $v = $vals[$i];
		my $n = qi($v->{name});
		my ($r, $b) = ("r$i", "b$i");
		push @aggcols, "(array_agg($n) FILTER (WHERE _r))[1] AS $r",
		  "(array_agg($n) FILTER (WHERE NOT _r))[1] AS $b";
		my $same;
		if ($v->{type} eq 'real' || $v->{type} eq 'double precision')
		{
			# Equal (NaN = NaN, -0.0 = 0.0, same infinity), or finite and
			# within a relative 1e-12 (computed in numeric, which cannot
			# underflow).  A variance subtracts the squared mean from the
			# mean square, which multiplies the relative rounding error of
			# a different merge order by their ratio: 1e-9 there (seed
			# 12345 once gave a var_samp 1.6e-12 apart).
			my $tol = ($v->{expr} // '') =~ /\b(?:stddev|variance|var)(?:_pop|_samp)?\s*\(/
			  ? '1e-9' : '1e-12';
			$same = qq{CASE WHEN $r IS NULL OR $b IS NULL THEN $r IS NULL AND $b IS NULL
				WHEN $r = $b THEN true
				WHEN ${r}::float8 IN ('NaN', 'Infinity', '-Infinity')
				  OR ${b}::float8 IN ('NaN', 'Infinity', '-Infinity') THEN false
				ELSE abs(${r}::float8::numeric - ${b}::float8::numeric)
				  <= $tol * greatest(abs(${r}::float8::numeric), abs(${b}::float8::numeric)) END};
		}
		else
		{
			# Integers, numeric (by value), text (by the collation's
			# equality), timestamptz: exactly equal.
			$same = "$r IS NOT DISTINCT FROM $b";
		}
		my $q = $v->{name} =~ s/'/''/gr;
		push @checks, qq{('$q', CASE WHEN _nr = 1 AND _nb = 1 AND NOT coalesce($same, false)
			THEN 'value' END, ${r}::text, ${b}::text)};
		# sum and avg of numeric have a display scale that does not depend
		# on the order of the rows; it must be the batch query's too.
		push @checks, qq{('$q', CASE WHEN _nr = 1 AND _nb = 1
			AND scale($r) IS DISTINCT FROM scale($b) THEN 'display scale' END, ${r}::text, ${b}::text)}
		  if $v->{type} eq 'numeric' && $v->{scale};
	}
	my $g = "public.oracle_diff_$j->{name}";
	my $out = $node->safe_psql(
		$db, qq{
SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET TimeZone = 'UTC';
DROP TABLE IF EXISTS $g;
CREATE UNLOGGED TABLE $g AS
SELECT (array_agg(ROW($keylist)::text ORDER BY _r DESC))[1] AS _grp,
       count(*) FILTER (WHERE _r) AS _nr, count(*) FILTER (WHERE NOT _r) AS _nb}
		  . join('', map { ",\n       $_" } @aggcols) . qq{
FROM (SELECT true AS _r, $sel FROM $j->{result}
      UNION ALL
      SELECT false AS _r, $sel FROM $bt) u
GROUP BY $groupby;
SELECT count(*), count(*) FILTER (WHERE _nb > 0), count(*) FILTER (WHERE _nr > 0) FROM $g;
SELECT '#' || _grp, c.col, c.what, coalesce(c.rv, 'NULL'), coalesce(c.bv, 'NULL')
FROM $g CROSS JOIN LATERAL (VALUES } . join(",\n  ", @checks) . qq{) c(col, what, rv, bv)
WHERE c.what IS NOT NULL ORDER BY 1, 2, 3});
	my @lines = split /\n/, $out;
	my ($groups, $bgroups, $rgroups) = split /\|/, shift @lines;
	for my $line (@lines)
	{
		my ($grp, $c, $what, $rv, $bv) = split /\|/, $line, -1;
		$grp =~ s/^#//;
		$mismatch->(
			$grp, $c, $what,
			$c eq '(group)'
			? "group $grp: $what (result rows $rv, batch rows $bv)"
			: "group $grp, column $c: $what differs: result $rv, batch $bv");
	}

	# Every row that passes the WHERE clause was aggregated exactly once.
	my $processed = $node->safe_psql($db,
		"SELECT sum(rows_processed) FROM stp.job_status WHERE job_name = '$j->{name}'");
	$mismatch->('', 'rows_processed', 'rows_processed',
		"rows_processed: the partitions aggregated $processed rows, the source has $source_rows")
	  if $processed ne $source_rows && !$j->{slot};

	# Coverage: groups whose sum(v_i8) left int8.
	if (grep { $_->{name} eq 'sum_v_i8' } @vals)
	{
		$total{int8_overflow_groups} += $node->safe_psql($db,
			"SELECT count(*) FROM $bt WHERE abs(sum_v_i8) > 9223372036854775807 AND sum_v_i8 <> 'NaN'");
	}

	# Every group against every check, the column types, rows_processed.
	my $comparisons = $groups * @checks + @{ $j->{items} } + 1;
	$node->safe_psql($db, "DROP TABLE $bt, $g");

	if ($selftest)
	{
		check_selftest($j, \@vals, \@found, \%expect);
		return;
	}

	$total{jobs}++;
	$total{groups} += $bgroups;
	$total{comparisons} += $comparisons;
	$total{mismatches} += @found;
	$total{rows_aggregated} += $source_rows;

	note "$j->{name}: $bgroups groups in the batch query, $rgroups in the result table, "
	  . "$source_rows rows aggregated, $comparisons comparisons, "
	  . scalar(@found) . ' mismatches';
	if (@found)
	{
		diag describe_job($j);
		my $shown = 0;
		for my $m (@found)
		{
			last if ++$shown > 25;
			diag "  $j->{name} mismatch: $m->{text}";
		}
		diag '  ... and ' . (@found - 25) . ' more' if @found > 25;
	}
	is(scalar(@found), 0,
		"$j->{name}: result table equals the batch query ($bgroups groups, $comparisons comparisons)");
}

################################################################
# One round.
################################################################

sub run_round
{
	my ($round, $rseed) = @_;
	my $db = "oracle_$round";
	note "round $round: seed $rseed, database $db";
	srand($rseed);
	my $t0 = time();

	@BIGKEY = ('-9223372036854775808', '9223372036854775807', '0', '1', '-1',
		map { sprintf('%.0f', int(rand(2e15)) - 1e15) } 1 .. 25);
	@UUIDKEY = map {
		sprintf('%08x-%04x-%04x-%04x-%04x%08x',
			int(rand(2**32)), int(rand(2**16)), int(rand(2**16)),
			int(rand(2**16)), int(rand(2**16)), int(rand(2**32)))
	} 1 .. 12;

	$node->safe_psql('postgres', "CREATE DATABASE $db");
	my $cols = q{
	w int NOT NULL, s int NOT NULL,
	k_int int, k_big bigint, k_txt text COLLATE "C", k_ci text COLLATE ci,
	k_num numeric, k_f8 float8, k_uuid uuid, k_ts timestamptz, k_bool boolean,
	v_i2 int2, v_i4 int4, v_i8 int8, v_num numeric, v_f4 float4, v_f8 float8,
	v_f8s float8, v_txt text COLLATE "C", v_ci text COLLATE ci};
	$node->safe_psql(
		$db, qq{
CREATE EXTENSION stp;
CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE SCHEMA oracle;
CREATE TABLE ev_big (id bigserial PRIMARY KEY, $cols);
CREATE SCHEMA "Oracle Src";
CREATE TABLE $SMALL (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, $cols);
CREATE TABLE ev_slot (id bigserial PRIMARY KEY, $cols);
ALTER TABLE ev_slot REPLICA IDENTITY FULL;
CREATE FUNCTION oracle_bucket(int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT \$1 / 10';
CREATE AGGREGATE oracle.u_sum(int4) (SFUNC = int4_sum, STYPE = int8, COMBINEFUNC = int8pl);
CREATE AGGREGATE oracle.u_avg(int4) (SFUNC = int4_avg_accum, STYPE = int8[],
    COMBINEFUNC = int4_avg_combine, FINALFUNC = int8_avg, INITCOND = '{0,0}');
CREATE FUNCTION oracle.u_max_step(s numeric, x numeric) RETURNS numeric LANGUAGE sql IMMUTABLE
    AS 'SELECT CASE WHEN s IS NULL OR x > s THEN x ELSE s END';
CREATE AGGREGATE oracle.u_max(numeric) (SFUNC = oracle.u_max_step, STYPE = numeric,
    COMBINEFUNC = oracle.u_max_step);
});

	my @jobs = make_jobs($size{jobs});
	push @jobs, make_slot_jobs($size{slot_jobs});

	# The backlog, by COPY, before any job exists.
	my $preload = "$tmp/oracle_${db}_preload.sql";
	open my $f, '>', $preload or die;
	print $f copy_sql('ev_big', 0, map { gen_row(0, 0) } 1 .. $size{preload_big});
	print $f copy_sql($SMALL, 0, map { gen_row(0, 0) } 1 .. $size{preload_small});
	print $f copy_sql('ev_slot', 0, map { gen_row(0, 0) } 1 .. $size{preload_slot});
	close $f;
	$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-f', $preload ],
		"round $round: backlog loaded");

	my $start_job = sub {
		my ($j) = @_;
		my ($ret, $stdout, $stderr) = $node->psql(
			$db, gucs_sql($j)
			  . "SELECT stp_start_job('$j->{name}', \$oracle\$$j->{query}\$oracle\$, '$j->{result}', "
			  . "partitions => $j->{partitions}, batch_size => $j->{batch_size}, poll_interval => '$j->{poll}', "
			  . "strategy => '$j->{strategy}'"
			  . ($j->{slot} ? ", source => 'slot'" : '') . ')');
		$j->{started} = $ret == 0;
		ok($j->{started}, "$j->{name}: job starts") or diag describe_job($j) . "\n$stderr";
		# A retracting job's result (or its state table, behind a view)
		# keeps each group's row count.
		is($node->safe_psql($db, "SELECT count(*) FROM pg_attribute WHERE attname = '_stp_rows' AND "
				  . "attrelid IN ('$j->{result}'::regclass, to_regclass('$j->{result}_state'))"),
			'1', "$j->{name}: retracts old rows") if $j->{retract} && $j->{started};
	};

	note describe_job($_) for @jobs;
	$start_job->($_) for grep { $_->{start} eq 'before' } @jobs;

	# The writers.  Their seeds derive from the round's seed.
	my $stopfile = "$tmp/oracle_${db}_stop";
	unlink $stopfile;
	my @logs;
	for my $w (1 .. $size{writers})
	{
		my ($pid, $log) = start_writer($db, $w, $rseed * 1000 + $w, $size{write_secs}, $stopfile);
		push @writer_pids, $pid;
		push @logs, $log;
	}
	push @writer_pids, start_slot_writer($db, $rseed * 1000 + 999, $stopfile);

	# While they write: start the other jobs, and stop and resume one.
	my $tw = time();
	my @events = map { [ 1 + rand($size{write_secs} * 0.6), 'start', $_ ] }
	  grep { $_->{start} eq 'during' } @jobs;
	my @running = grep { $_->{start} eq 'before' && $_->{started} } @jobs;
	my $victim = @running ? pick(@running) : undef;
	push @events, [ $size{write_secs} * 0.4, 'stop', $victim ] if $victim;

	# Two other jobs with GROUP BY are resized, up and then down, while the
	# writers write (stp_alter_job's common cut).
	# Only jobs that own groups, and no slot jobs, can be resized.
	my @resizable = grep {
		@{ $_->{keys} } && $_->{strategy} eq 'groups' && !$_->{slot} && (!$victim || $_ != $victim)
	} @running;
	for my $j ((shuffle(@resizable))[ 0 .. 1 ])
	{
		next unless $j;
		my $up = $j->{partitions} >= 4 ? 4 : $j->{partitions} + 1 + int(rand(4 - $j->{partitions}));
		my $down = 1 + int(rand(3));
		$up = $j->{partitions} + ($j->{partitions} >= 4 ? -1 : 1) if $up == $j->{partitions};
		push @events, [ $size{write_secs} * (0.15 + rand(0.2)), 'resize', $j, $up ];
		push @events, [ $size{write_secs} * (0.55 + rand(0.2)), 'resize', $j, $down ];
	}

	# Kill workers in the middle of whatever they do (a batch, a merge
	# under row locks, a wait for another partition's locks, decoding, a
	# distinct table's insert): the launcher starts them again, and
	# nothing may be lost or counted twice.  Six kills go to row-mode
	# workers, six to any job's.
	push @events, map { [ 1 + rand($size{write_secs} * 0.8), 'kill', $_ <= 6 ? 'rows' : 'any' ] } 1 .. 12;
	for my $e (sort { $a->[0] <=> $b->[0] } @events)
	{
		my $wait = $tw + $e->[0] - time();
		usleep(int($wait * 1e6)) if $wait > 0;
		if ($e->[1] eq 'start')
		{
			$start_job->($e->[2]);
		}
		elsif ($e->[1] eq 'resize')
		{
			my $name = $e->[2]{name};
			$node->safe_psql($db, "SELECT stp_alter_job('$name', partitions => $e->[3])");
			note "$name: resized to $e->[3] partitions while the writers ran";
		}
		elsif ($e->[1] eq 'kill')
		{
			my $which = $e->[2] eq 'rows' ? q{j.strategy = 'rows' AND j.partitions > 1} : 'true';
			my $killed = $node->safe_psql(
				$db, qq{SELECT s.job_name || ' partition ' || s.partition || ': ' || pg_terminate_backend(s.pid)
				FROM stp.job_status s JOIN stp.jobs j ON j.job_name = s.job_name
				WHERE $which AND s.pid IS NOT NULL
				ORDER BY random() LIMIT 1});
			note "$e->[2] worker terminated: $killed" if $killed ne '';
		}
		else
		{
			my $name = $e->[2]{name};
			$node->safe_psql($db, "SELECT stp_stop_job('$name')");
			usleep(500_000 + int(rand(1_000_000)));
			$node->safe_psql($db, "SELECT stp_resume_job('$name')");
			note "$name: stopped and resumed while the writers ran";
		}
	}
	my $wait = $tw + $size{write_secs} - time();
	usleep(int($wait * 1e6)) if $wait > 0;
	open my $sf, '>', $stopfile or die;
	close $sf;
	for my $pid (@writer_pids)
	{
		waitpid($pid, 0);
		is($? >> 8, 0, "round $round: writer process $pid exited cleanly");
	}
	@writer_pids = ();

	# What the writers committed.
	my ($scripts, $bad) = (0, 0);
	for my $w (1 .. $size{writers})
	{
		my %want = (big => 0, small => 0);
		open my $in, '<', $logs[ $w - 1 ] or die "cannot read $logs[$w - 1]: $!";
		while (my $line = <$in>)
		{
			$scripts++;
			if ($line =~ /^ok \d+ (\d+) (\d+)$/)
			{
				$want{big} += $1;
				$want{small} += $2;
			}
			else
			{
				$bad++;
				diag "writer $w: $line";
			}
		}
		close $in;
		is( $node->safe_psql($db,
				"SELECT (SELECT count(*) FROM ev_big WHERE w = $w) || ' ' || (SELECT count(*) FROM $SMALL WHERE w = $w)"),
			"$want{big} $want{small}",
			"round $round: writer $w committed exactly its rows");
	}
	is($bad, 0, "round $round: every writer script ended as planned");
	my ($rows_big, $rows_small, $ids_big, $ids_small) = split /\|/,
	  $node->safe_psql(
		$db, qq{SELECT (SELECT count(*) FROM ev_big), (SELECT count(*) FROM $SMALL),
		(SELECT last_value FROM ev_big_id_seq), (SELECT last_value FROM "Oracle Src".ev_small_id_seq)});
	note "round $round: $scripts writer scripts; ev_big holds $rows_big rows of $ids_big ids, "
	  . "ev_small $rows_small rows of $ids_small ids; writing took "
	  . sprintf('%.1f s', time() - $tw);
	$total{rows} += $rows_big + $rows_small;
	$total{scripts} += $scripts;

	# Every job catches up.
	my $tc = time();
	my $deadline = time() + ($soak ? 600 : 240);
	for my $j (grep { $_->{started} } @jobs)
	{
		my $done = 0;
		while (!$done && time() < $deadline)
		{
			my ($ret, $stdout, $stderr) =
			  $node->psql($db, "SELECT stp_wait('$j->{name}', '2 s')");
			if ($ret != 0)
			{
				diag "$j->{name}: stp_wait failed: $stderr";
				last;
			}
			$done = $stdout eq 't';
		}
		ok($done, "$j->{name}: stp_wait returns true") or diag $node->safe_psql(
			$db, "SELECT partition, state, processed_upto, rows_behind, last_error FROM stp.job_status WHERE job_name = '$j->{name}'");
	}
	note sprintf('round %d: the jobs caught up %.1f s after the writers stopped', $round, time() - $tc);
	is( $node->safe_psql(
			$db, q{SELECT count(*) FROM stp.job_status WHERE state IN ('failed', 'stopped')}),
		'0',
		"round $round: no partition failed or stopped");

	# The oracle.
	my $tq = time();
	compare_job($db, $_) for grep { $_->{started} } @jobs;
	if ($selftest)
	{
		compare_job($db, $_, 1) for grep { $_->{started} } @jobs;
	}
	note sprintf('round %d: comparison took %.1f s; the round %.1f s', $round, time() - $tq, time() - $t0);

	# Free the round's workers.
	$node->safe_psql('postgres', "DROP DATABASE $db") if $round < $size{rounds};
}

for my $round (1 .. $size{rounds})
{
	run_round($round, $seed + $round - 1);
}

note "oracle seed $seed: $total{jobs} jobs, $total{groups} groups, $total{rows} source rows "
  . "($total{rows_aggregated} aggregated over all jobs), $total{scripts} writer scripts, "
  . "$total{comparisons} comparisons, $total{mismatches} mismatches; "
  . ($total{int8_overflow_groups} // 0) . " groups with sum(int8) beyond int8"
  . ($selftest ? "; $total{selftests} self-tests" : '');

$node->stop;
done_testing();
