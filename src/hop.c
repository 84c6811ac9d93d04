/*-------------------------------------------------------------------------
 *
 * hop.c
 *		Hopping (sliding) windows: stp.hop() and the panes a job keeps.
 *
 * A hopping window of size S and slide D starts at every origin + k * D
 * and holds the rows whose timestamp ts has start <= ts < start + S, so a
 * row lies in about S / D windows.  stp.hop(ts, S, D, origin) returns the
 * starts of the windows a row lies in, as a set-returning function in
 * FROM; a job's query groups by it, and the same query is a valid batch
 * SELECT.
 *
 * A job does not aggregate a row S / D times.  It aggregates each row once
 * into its pane, the tumbling window of width gcd(S, D) from the same
 * origin (stp.hop_pane()), and its result view combines the S / gcd(S, D)
 * panes of each window when it is read.  Every window start is a pane
 * start, and every window is a whole number of panes, so the panes of a
 * window hold exactly the window's rows.
 *
 * Timestamps and timestamps with time zone are both microseconds since
 * 2000-01-01, so one C function serves both types.  As in date_bin, a day
 * of an interval counts as 24 hours, and months are refused.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/int.h"
#include "funcapi.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "stp.h"

PG_FUNCTION_INFO_V1(stp_hop);
PG_FUNCTION_INFO_V1(stp_hop_pane);

/* A row lies in at most this many windows: S / D is bounded. */
#define STP_HOP_MAX_WINDOWS		10000

/* What the value-per-call stp.hop() keeps between calls. */
typedef struct HopState
{
	int64		next;			/* the next window start to return */
	int64		slide;
	int64		remaining;		/* windows still to return */
} HopState;

/*
 * The length of an interval in microseconds, refusing months, which have
 * no fixed length, and lengths that are not positive.
 */
static int64
interval_usecs(Interval *iv, const char *what)
{
	int64		usecs;

	if (iv->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the %s of a hopping window cannot contain months or years", what),
				 errhint("Write the %s in days, hours, minutes or seconds.", what)));
	if (pg_mul_s64_overflow(iv->day, USECS_PER_DAY, &usecs) ||
		pg_add_s64_overflow(usecs, iv->time, &usecs))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("the %s of a hopping window is out of range", what)));
	if (usecs <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the %s of a hopping window must be greater than zero", what),
				 errhint("Give a positive interval, such as '1 minute'.")));
	return usecs;
}

/*
 * Check a hopping window's size and slide, and return them in
 * microseconds.  Job creation calls it too, so that a job with a window
 * the function would refuse is refused before it runs.
 */
void
stp_hop_check(Interval *size, Interval *slide, int64 *size_usecs,
			  int64 *slide_usecs)
{
	*size_usecs = interval_usecs(size, "size");
	*slide_usecs = interval_usecs(slide, "slide");
	if (*slide_usecs > *size_usecs)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the slide of a hopping window cannot be longer than its size"),
				 errdetail("A slide longer than the size would leave rows in no window."),
				 errhint("For windows that do not overlap, use a slide equal to the size, or date_bin().")));
	if (*size_usecs / *slide_usecs > STP_HOP_MAX_WINDOWS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("a hopping window can be at most %d times as long as its slide",
						STP_HOP_MAX_WINDOWS),
				 errdetail("Each row lies in size / slide windows."),
				 errhint("Use a longer slide or a shorter size.")));
}

/*
 * The greatest common divisor of two positive numbers: the width of the
 * panes of a hopping window.
 */
static int64
gcd64(int64 a, int64 b)
{
	while (b != 0)
	{
		int64		t = a % b;

		a = b;
		b = t;
	}
	return a;
}

/*
 * The start of the bin of width step, counted from origin, that holds ts:
 * origin + floor((ts - origin) / step) * step, rounding down before the
 * origin too.
 */
static int64
bin_start(int64 ts, int64 origin, int64 step)
{
	int64		diff;
	int64		k;
	int64		result;

	if (pg_sub_s64_overflow(ts, origin, &diff))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	k = diff / step;
	if (diff % step < 0)
		k--;
	if (pg_mul_s64_overflow(k, step, &result) ||
		pg_add_s64_overflow(origin, result, &result) ||
		!IS_VALID_TIMESTAMP(result))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	return result;
}

/*
 * stp.hop(ts, size, slide, origin): the starts of the hopping windows that
 * hold ts, in ascending order.  An infinite ts lies in no window.
 */
Datum
stp_hop(PG_FUNCTION_ARGS)
{
	FuncCallContext *funcctx;
	HopState   *st;

	if (SRF_IS_FIRSTCALL())
	{
		int64		ts = PG_GETARG_INT64(0);
		int64		origin = PG_GETARG_INT64(3);
		int64		size,
					slide,
					last;

		stp_hop_check(PG_GETARG_INTERVAL_P(1), PG_GETARG_INTERVAL_P(2),
					  &size, &slide);
		if (TIMESTAMP_NOT_FINITE(origin))
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("the origin of a hopping window must be finite")));
		funcctx = SRF_FIRSTCALL_INIT();
		st = MemoryContextAllocZero(funcctx->multi_call_memory_ctx, sizeof(HopState));
		funcctx->user_fctx = st;
		if (!TIMESTAMP_NOT_FINITE(ts))
		{
			/*
			 * The last window that holds ts starts at its bin of width
			 * slide; the windows before it hold ts while ts - start <
			 * size.
			 */
			last = bin_start(ts, origin, slide);
			st->slide = slide;
			st->remaining = (size - (ts - last) + slide - 1) / slide;
			st->next = last - (st->remaining - 1) * slide;
			if (!IS_VALID_TIMESTAMP(st->next))
				ereport(ERROR,
						(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
						 errmsg("timestamp out of range")));
		}
	}
	funcctx = SRF_PERCALL_SETUP();
	st = funcctx->user_fctx;
	if (st->remaining > 0)
	{
		int64		start = st->next;

		st->next += st->slide;
		st->remaining--;
		SRF_RETURN_NEXT(funcctx, Int64GetDatum(start));
	}
	SRF_RETURN_DONE(funcctx);
}

/*
 * stp.hop_pane(ts, size, slide, origin): the start of the pane that holds
 * ts, the bin of width gcd(size, slide) from origin.  A job groups its
 * rows by it where its query groups by stp.hop(); an infinite ts is its
 * own pane, which lies in no window.
 */
Datum
stp_hop_pane(PG_FUNCTION_ARGS)
{
	int64		ts = PG_GETARG_INT64(0);
	int64		origin = PG_GETARG_INT64(3);
	int64		size,
				slide;

	stp_hop_check(PG_GETARG_INTERVAL_P(1), PG_GETARG_INTERVAL_P(2), &size, &slide);
	if (TIMESTAMP_NOT_FINITE(origin))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("the origin of a hopping window must be finite")));
	if (TIMESTAMP_NOT_FINITE(ts))
		PG_RETURN_INT64(ts);
	PG_RETURN_INT64(bin_start(ts, origin, gcd64(size, slide)));
}
