/*-------------------------------------------------------------------------
 *
 * wait.c
 *		Waiting until a job has caught up: the function stp_wait and the
 *		procedure stp_await.
 *
 * Both return true once every partition has processed every row whose id
 * was handed out before the call, and false when the timeout passes
 * first.  stp_wait is a function, so it runs inside one statement and
 * holds that statement's snapshot for as long as it waits: the xmin
 * horizon stays put, and VACUUM cannot prune the result table's dead row
 * versions meanwhile.  stp_await is a procedure that commits between two
 * looks at the job's progress, so that it holds no snapshot, and no xmin,
 * while it sleeps.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "stp.h"

PG_FUNCTION_INFO_V1(stp_wait);
PG_FUNCTION_INFO_V1(stp_await);

/* What a wait needs to know of its job, kept across the commits of stp_await. */
typedef struct StpWaitTarget
{
	char		job_name[NAMEDATALEN];
	int32		job_id;
	int64		target;			/* the sequence's last value at the call, or
								 * for a slot job the WAL insert position */
	bool		any;			/* whether the sequence had handed out any */
	bool		slot;			/* a slot job: it has no sequence */
	TimestampTz deadline;
} StpWaitTarget;

/*
 * Waiting means waiting for the transactions that write to the source or
 * draw from its sequence.  A caller whose own transaction does either would
 * wait for itself until the timeout, so it is told at once instead.
 */
static void
check_not_own_writer(StpJobRef *job, const char *job_name)
{
	LOCKTAG		source_tag;
	LOCKTAG		sequence_tag;

	SET_LOCKTAG_RELATION(source_tag, MyDatabaseId, job->source);
	SET_LOCKTAG_RELATION(sequence_tag, MyDatabaseId, job->sequence);
	if (LockOrStrongerHeldByMe(&source_tag, RowExclusiveLock) ||
		LockOrStrongerHeldByMe(&sequence_tag, RowExclusiveLock))
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("stp_wait cannot wait for job \"%s\" in a transaction that wrote to its source or used its sequence",
						job_name),
				 errdetail("The job's workers wait for this transaction to end before they read past the ids it may have drawn."),
				 errhint("Commit the transaction, then call stp_wait.")));
}

/*
 * Check the arguments, find the job and what to wait for.  The caller is
 * connected to SPI and has a snapshot.
 */
static void
wait_begin(FunctionCallInfo fcinfo, StpWaitTarget *w)
{
	char	   *job_name;
	int64		timeout_ms;
	StpJobRef  *job;

	stp_check_not_null(fcinfo, 0, "job_name");
	stp_check_not_null(fcinfo, 1, "timeout");
	job_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	timeout_ms = stp_interval_ms(PG_GETARG_INTERVAL_P(1), "timeout");
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));

	job = stp_lookup_job(job_name, false);
	check_not_own_writer(job, job_name);
	/* Only a slot job has no sequence. */
	w->slot = !OidIsValid(job->sequence);
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(job->source)) ||
		(!w->slot && !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(job->sequence))))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job \"%s\" has failed", job_name),
				 errdetail("The job's source table or its sequence was dropped."),
				 errhint("Drop the job with stp_drop_job('%s').", job_name)));
	/* A job's name is shorter than NAMEDATALEN, or the lookup failed. */
	strlcpy(w->job_name, job_name, sizeof(w->job_name));
	w->job_id = job->job_id;
	if (w->slot)
	{
		/*
		 * Every transaction committed before the call has its commit record
		 * below the WAL insert position.
		 */
		w->target = (int64) stp_wal_insert_end();
		w->any = true;
	}
	else
		w->target = stp_sequence_last_value(job->sequence, &w->any);
	w->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
}

/*
 * Has every partition of the job reached the target?  Raises an error if
 * the job failed, is stopped or was dropped.  The caller is connected to
 * SPI and has a snapshot.
 */
static bool
wait_done(StpWaitTarget *w)
{
	Oid			types[2] = {INT4OID, INT8OID};
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		done;
	char	   *state;

	values[0] = Int32GetDatum(w->job_id);
	values[1] = Int64GetDatum(w->target);
	stp_catalog_exec("SELECT j.state, pg_catalog.bool_and(p.processed_upto OPERATOR(pg_catalog.>=) $2), "
					 "pg_catalog.bool_or(p.failed), "
					 "pg_catalog.min(p.last_error) FILTER (WHERE p.failed), pg_catalog.count(*) "
					 "FROM stp.jobs j JOIN stp.partitions p ON p.job_id OPERATOR(pg_catalog.=) j.job_id "
					 "WHERE j.job_id OPERATOR(pg_catalog.=) $1 GROUP BY j.state",
					 2, types, values, NULL, false, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job \"%s\" was dropped", w->job_name)));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	state = SPI_getvalue(tup, desc, 1);
	if (DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job \"%s\" has failed", w->job_name),
				 errdetail("%s", SPI_getvalue(tup, desc, 4)),
				 errhint("Fix the cause, then run stp_resume_job('%s').", w->job_name)));
	if (strcmp(state, "running") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job \"%s\" is stopped", w->job_name),
				 errhint("Run stp_resume_job('%s') first.", w->job_name)));
	if (w->slot)
	{
		/*
		 * A slot is confirmed up to a position once the result holds every
		 * change below it: after the batch that applied them committed, or
		 * when the WAL up to it had nothing for the partition.
		 */
		int64		partitions = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));

		done = true;
		for (int p = 0; p < partitions && done; p++)
			done = stp_slot_confirmed(w->job_id, p) >= (uint64) w->target;
	}
	else
		done = !w->any || DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return done;
}

/*
 * Wake the job's workers, which may be sleeping between polls, and sleep
 * a little.
 */
static void
wait_sleep(StpWaitTarget *w, long ms)
{
	stp_wake_job_workers(MyDatabaseId, w->job_id);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * stp_wait(job_name, timeout) returns true once every partition has
 * processed every row whose id was handed out before the call, false on
 * timeout.  It fails if the job has failed or is stopped.  As a function
 * it holds its statement's snapshot throughout.
 */
Datum
stp_wait(PG_FUNCTION_ARGS)
{
	StpWaitTarget w;
	bool		done;

	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("stp_wait cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errhint("stp_wait needs a fresh snapshot to see progress; call it in READ COMMITTED.")));

	SPI_connect();
	wait_begin(fcinfo, &w);
	while (!(done = wait_done(&w)) && GetCurrentTimestamp() < w.deadline)
		wait_sleep(&w, 10);
	SPI_finish();
	PG_RETURN_BOOL(done);
}

/*
 * CALL stp_await(job_name, timeout, caught_up) waits as stp_wait does, and
 * returns the answer in caught_up.  Between two looks at the job's
 * progress it commits, and it sleeps in a transaction that has taken no
 * snapshot, so its backend has no xmin while it sleeps and VACUUM prunes
 * the result table meanwhile.  Committing needs a CALL outside a
 * transaction block (or from a procedure called so); inside one,
 * stp_wait is the way to wait.
 */
Datum
stp_await(PG_FUNCTION_ARGS)
{
	CallContext *callctx = (CallContext *) fcinfo->context;
	StpWaitTarget w;
	bool		done;
	TupleDesc	tupdesc;
	Datum		values[1];
	bool		nulls[1] = {false};

	if (callctx == NULL || !IsA(callctx, CallContext) || callctx->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("stp_await cannot run inside a transaction block"),
				 errdetail("stp_await commits while it waits, so that it holds no snapshot."),
				 errhint("CALL it outside a transaction block, or use SELECT stp_wait(...), which holds a snapshot while it waits.")));
	SPI_connect_ext(SPI_OPT_NONATOMIC);
	PushActiveSnapshot(GetTransactionSnapshot());
	wait_begin(fcinfo, &w);
	for (;;)
	{
		done = wait_done(&w);
		PopActiveSnapshot();
		if (done || GetCurrentTimestamp() >= w.deadline)
			break;

		/* End the transaction and its snapshots, then sleep without any. */
		SPI_commit();
		InvalidateCatalogSnapshot();
		wait_sleep(&w, 20);
		PushActiveSnapshot(GetTransactionSnapshot());
	}
	SPI_finish();

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "stp_await must return a record");
	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = BoolGetDatum(done);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
