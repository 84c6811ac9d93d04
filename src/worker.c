/*-------------------------------------------------------------------------
 *
 * worker.c
 *		A partition worker: the single-threaded pipeline of one partition.
 *
 * In a loop, one transaction per batch, the worker finds how far the
 * source may safely be read, runs its prepared batch statement (read the
 * new rows, keep its own groups, aggregate, upsert into the result table)
 * and advances its progress row in stp.partitions.  Results and progress
 * commit together, so a crash at any instant loses nothing and counts
 * nothing twice.  The progress update is fenced on the previous offset: a
 * second worker for the same partition could not commit a batch twice.
 *
 * Never skipping a row: order-column values come from a CACHE 1 sequence,
 * but transactions commit out of order.  Before reading up to the
 * sequence's last value L, the worker waits for every transaction that
 * holds a lock on the sequence or a write lock on the source at that
 * moment.  nextval() locks the sequence until its transaction ends, and it
 * does so before it draws an id, so every transaction that drew an id <= L
 * has then committed or aborted, whether its INSERT used the column's
 * default or an id it drew earlier with nextval().  New writers are never
 * blocked.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/sinvaladt.h"
#include "tcop/tcopprot.h"
#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "stp.h"

/* What the launcher passes in bgw_extra. */
typedef struct StpWorkerArgs
{
	Oid			dboid;
	Oid			owner;
	int32		job_id;
	int32		partition;
} StpWorkerArgs;

/* The worker's state between batches. */
typedef struct StpWorker
{
	StpWorkerArgs args;
	StpJobDef  *def;
	StpSlot    *slot;
	SPIPlanPtr	lock_plan;
	SPIPlanPtr	batch_plan;
	SPIPlanPtr	progress_plan;
	bool		recheck;		/* source or result table may have changed */
	int64		offset;			/* committed progress */
	int64		safe_upto;		/* every id <= this has settled */
	int64		rows_processed;
} StpWorker;

static StpWorker worker;

/*
 * A batch first locks its partition's progress row, fenced on the offset
 * it read, before it touches the result table.  A second worker for the
 * same partition, or a stop or drop in progress, then waits here holding
 * nothing that the other side needs, so neither can deadlock and no batch
 * commits twice.
 */
#define LOCK_SQL \
	"SELECT 1 FROM stp.partitions p JOIN stp.jobs j ON j.job_id = p.job_id " \
	"WHERE p.job_id = $1 AND p.partition = $2 AND p.processed_upto = $3 " \
	"AND j.state = 'running' AND NOT p.failed FOR UPDATE OF p"

#define PROGRESS_SQL \
	"UPDATE stp.partitions SET processed_upto = $3, " \
	"rows_processed = rows_processed + $4, last_batch_at = pg_catalog.now(), " \
	"last_error = NULL, error_count = 0 " \
	"WHERE job_id = $1 AND partition = $2"

/*
 * Register a dynamic background worker for one partition.  Returns false
 * if no background worker slot is free.
 */
bool
stp_register_worker(Oid dboid, Oid owner, int32 job_id, int32 partition)
{
	BackgroundWorker bgw;
	StpWorkerArgs args;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, "stp", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "stp_worker_main", BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "stp worker job %d partition %d",
			 job_id, partition);
	strlcpy(bgw.bgw_type, "stp worker", BGW_MAXLEN);
	bgw.bgw_main_arg = Int32GetDatum(job_id);
	args.dboid = dboid;
	args.owner = owner;
	args.job_id = job_id;
	args.partition = partition;
	memcpy(bgw.bgw_extra, &args, sizeof(args));
	bgw.bgw_notify_pid = 0;

	return RegisterDynamicBackgroundWorker(&bgw, NULL);
}

/*
 * Show what the worker does in stp.job_status.
 */
static void
set_slot_state(StpWorkerState state)
{
	/* Only this process writes its own slot's state; readers take a hint. */
	worker.slot->state = state;
}

/*
 * At exit, give up the partition's registry entry so that the launcher can
 * start a new worker for it.
 */
static void
release_slot(int code, Datum arg)
{
	if (worker.slot == NULL)
		return;
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	if (worker.slot->pid == MyProcPid)
	{
		worker.slot->pid = 0;
		worker.slot->latch = NULL;
	}
	LWLockRelease(stp_shared->lock);
}

/*
 * Become the partition's only worker, or return false if one runs.
 */
static bool
claim_slot(void)
{
	StpSlot    *slot;
	bool		ok = false;

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	slot = stp_slot_get(worker.args.dboid, worker.args.job_id, worker.args.partition);
	if (slot && (slot->pid <= 0 || slot->pid == MyProcPid))
	{
		slot->pid = MyProcPid;
		slot->latch = MyLatch;
		slot->state = STP_WS_STARTING;
		slot->no_worker_slot = false;
		worker.slot = slot;
		ok = true;
	}
	LWLockRelease(stp_shared->lock);
	return ok;
}

/*
 * Wait until every transaction that now holds a lock on relid that
 * conflicts with ShareLock has ended: for the source, its writers; for the
 * sequence, every transaction that drew a value from it.  VACUUM's lock
 * conflicts too, but VACUUM never inserts rows, so it is not waited for.
 */
static void
wait_for_lockers(Oid relid)
{
	LOCKTAG		tag;
	VirtualTransactionId *vxids;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	vxids = GetLockConflicts(&tag, ShareLock, NULL);
	for (; VirtualTransactionIdIsValid(*vxids); vxids++)
	{
		PGPROC	   *proc = BackendIdGetProc(vxids->backendId);

		if (proc != NULL && proc->lxid == vxids->localTransactionId &&
			(proc->statusFlags & (PROC_IN_VACUUM | PROC_IS_AUTOVACUUM)))
			continue;
		pgstat_report_activity(STATE_RUNNING, "stp: waiting for writers of the source");
		VirtualXactLock(*vxids, true);
	}
}

/*
 * Any change to the source or the result table (ALTER TABLE, GRANT,
 * row-level security, ...) makes the worker check them again before its
 * next batch.
 */
static void
relation_changed(Datum arg, Oid relid)
{
	if (worker.def == NULL || relid == InvalidOid ||
		relid == worker.def->source || relid == worker.def->result)
		worker.recheck = true;
}

/*
 * Check one result column's type against what the job's query produces now.
 */
static void
check_result_column(const char *name, Oid type)
{
	AttrNumber	attnum = get_attnum(worker.def->result, name);
	Oid			atttype;

	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("result table %s has no column \"%s\" any more",
						stp_qualified_relname(worker.def->result), name)));
	atttype = get_atttype(worker.def->result, attnum);
	if (atttype != type)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of result table %s has type %s, but the job's query now produces %s",
						name, stp_qualified_relname(worker.def->result),
						format_type_be(atttype), format_type_be(type)),
				 errdetail("The source or the result table was altered after the job was created.")));
}

/*
 * Check that the job's expressions still produce the result table's
 * column types, and that the source has no row-level security, so that a
 * changed table fails the job instead of being merged wrongly (an
 * assignment cast would round a numeric into a bigint without a word).
 */
static void
check_job_relations(void)
{
	StpJobDef  *def = worker.def;
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2] = {Int64GetDatum(0), Int64GetDatum(0)};
	TupleDesc	desc;
	ListCell   *lc,
			   *lc2;
	int			col = 0;
	HeapTuple	tup;
	bool		rls;

	worker.recheck = false;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(def->source));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the source table of job \"%s\" was dropped", def->job_name)));
	rls = ((Form_pg_class) GETSTRUCT(tup))->relrowsecurity;
	ReleaseSysCache(tup);
	if (rls)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source %s has row-level security enabled",
						stp_qualified_relname(def->source)),
				 errdetail("A job aggregates every row of its source, so it cannot honour row-level policies.")));
	if (get_rel_name(def->result) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the result table of job \"%s\" was dropped", def->job_name)));

	if (SPI_execute_with_args(stp_probe_sql(def), 2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not check the job's column types");
	desc = SPI_tuptable->tupdesc;
	foreach(lc, def->key_names)
		check_result_column(lfirst(lc), TupleDescAttr(desc, col++)->atttypid);
	forboth(lc, def->agg_names, lc2, def->agg_kinds)
	{
		StpAggKind	kind = (StpAggKind) lfirst_int(lc2);

		check_result_column(lfirst(lc), TupleDescAttr(desc, col++)->atttypid);
		if (kind == STP_AGG_AVG_NUMERIC || kind == STP_AGG_AVG_FLOAT)
		{
			check_result_column(stp_avg_sum_column(lfirst(lc)),
								TupleDescAttr(desc, col++)->atttypid);
			check_result_column(stp_avg_count_column(lfirst(lc)),
								TupleDescAttr(desc, col++)->atttypid);
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Load the job and prepare the worker's statements.  Returns false if the
 * job no longer exists or should not run.
 */
static bool
worker_setup(void)
{
	char	   *state;
	StpJobDef  *def;
	Oid			types[4] = {INT4OID, INT4OID, INT8OID, INT8OID};
	Oid			batch_types[2] = {INT8OID, INT8OID};
	char	   *sql;
	bool		ok = true;
	int			ret;
	MemoryContext caller_ctx = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());

	def = stp_load_job(worker.args.job_id, &state, TopMemoryContext);
	if (def == NULL || strcmp(state, "running") != 0)
		ok = false;
	else
	{
		Oid			argtypes[2] = {INT4OID, INT4OID};
		Datum		args[2] = {Int32GetDatum(worker.args.job_id),
		Int32GetDatum(worker.args.partition)};
		bool		isnull;

		SetConfigOption("TimeZone", def->timezone, PGC_SUSET, PGC_S_OVERRIDE);

		ret = stp_catalog_exec("SELECT processed_upto, failed FROM stp.partitions "
							   "WHERE job_id = $1 AND partition = $2",
							   2, argtypes, args, NULL, true, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			ok = false;
		else
		{
			worker.offset = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1, &isnull));
			if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull)))
				ok = false;
			worker.safe_upto = worker.offset;
		}
	}

	if (ok)
	{
		SPIPlanPtr	lock_plan;
		SPIPlanPtr	batch_plan;
		SPIPlanPtr	progress_plan;

		sql = stp_batch_sql(def, worker.args.partition);
		elog(DEBUG1, "stp job %d partition %d batch: %s",
			 worker.args.job_id, worker.args.partition, sql);
		batch_plan = SPI_prepare(sql, 2, batch_types);
		if (batch_plan == NULL)
			elog(ERROR, "could not prepare the batch statement: %s",
				 SPI_result_code_string(SPI_result));
		lock_plan = SPI_prepare(LOCK_SQL, 3, types);
		progress_plan = SPI_prepare(PROGRESS_SQL, 4, types);
		if (lock_plan == NULL || progress_plan == NULL)
			elog(ERROR, "could not prepare the progress statements: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(lock_plan);
		SPI_keepplan(batch_plan);
		SPI_keepplan(progress_plan);
		worker.lock_plan = lock_plan;
		worker.batch_plan = batch_plan;
		worker.progress_plan = progress_plan;
		worker.def = def;
	}

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	return ok;
}

/*
 * Is the job still meant to run this partition?  Used when the fenced
 * progress update matched no row.
 */
static bool
job_still_running(void)
{
	Oid			argtypes[2] = {INT4OID, INT4OID};
	Datum		args[2] = {Int32GetDatum(worker.args.job_id),
	Int32GetDatum(worker.args.partition)};
	int			ret;

	ret = stp_catalog_exec("SELECT 1 FROM stp.jobs j JOIN stp.partitions p USING (job_id) "
						   "WHERE j.job_id = $1 AND p.partition = $2 AND j.state = 'running' "
						   "AND NOT p.failed",
						   2, argtypes, args, NULL, false, 1);
	return ret == SPI_OK_SELECT && SPI_processed == 1;
}

/*
 * Run one batch if there is one.  Returns whether it did work; sets *stop
 * when the job was stopped or dropped under the worker.
 */
static bool
worker_step(bool *stop)
{
	int64		hi;
	int64		rows = 0;
	TimestampTz started;
	Datum		values[4];
	bool		isnull;
	int			ret;
	MemoryContext caller_ctx = CurrentMemoryContext;

	started = GetCurrentTimestamp();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();

	if (worker.offset >= worker.safe_upto)
	{
		bool		is_called;
		int64		last;

		pgstat_report_activity(STATE_RUNNING, "stp: reading the sequence");
		last = stp_sequence_last_value(worker.def->sequence, &is_called);
		if (is_called && last > worker.safe_upto)
		{
			wait_for_lockers(worker.def->sequence);
			wait_for_lockers(worker.def->source);
			worker.safe_upto = last;
		}
	}

	if (worker.offset >= worker.safe_upto)
	{
		SPI_finish();
		CommitTransactionCommand();
		MemoryContextSwitchTo(caller_ctx);
		pgstat_report_activity(STATE_IDLE, NULL);
		return false;
	}

	set_slot_state(STP_WS_RUNNING);
	if (worker.def->batch_size >= worker.safe_upto - worker.offset)
		hi = worker.safe_upto;
	else
		hi = worker.offset + worker.def->batch_size;

	/* Taken after the wait, so that it sees every settled writer. */
	PushActiveSnapshot(GetTransactionSnapshot());

	values[0] = Int32GetDatum(worker.args.job_id);
	values[1] = Int32GetDatum(worker.args.partition);
	values[2] = Int64GetDatum(worker.offset);
	ret = stp_catalog_exec_plan(worker.lock_plan, values);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not lock the partition's progress: %s", SPI_result_code_string(ret));
	if (SPI_processed != 1)
	{
		if (!job_still_running())
		{
			/* Stopped or dropped: leave without a batch. */
			PopActiveSnapshot();
			SPI_finish();
			AbortCurrentTransaction();
			MemoryContextSwitchTo(caller_ctx);
			*stop = true;
			return false;
		}
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("progress of job %d partition %d moved under its worker",
						worker.args.job_id, worker.args.partition)));
	}

	pgstat_report_activity(STATE_RUNNING, "stp: batch");
	values[0] = Int64GetDatum(worker.offset);
	values[1] = Int64GetDatum(hi);
	ret = SPI_execute_plan(worker.batch_plan, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "batch statement failed: %s", SPI_result_code_string(ret));
	rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));

	/*
	 * The batch holds its locks on both tables until it commits, so no
	 * ALTER TABLE can commit between the batch and this check: the check
	 * sees the catalog state that the batch's plan was made with.
	 */
	if (worker.recheck)
		check_job_relations();

	values[0] = Int32GetDatum(worker.args.job_id);
	values[1] = Int32GetDatum(worker.args.partition);
	values[2] = Int64GetDatum(hi);
	values[3] = Int64GetDatum(rows);
	ret = stp_catalog_exec_plan(worker.progress_plan, values);
	if (ret != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "progress update failed: %s", SPI_result_code_string(ret));

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	pgstat_report_activity(STATE_IDLE, NULL);

	elog(DEBUG1, "stp job %d partition %d: ids (" INT64_FORMAT ", " INT64_FORMAT "], "
		 INT64_FORMAT " rows in %ld ms",
		 worker.args.job_id, worker.args.partition, worker.offset, hi, rows,
		 TimestampDifferenceMilliseconds(started, GetCurrentTimestamp()));
	worker.offset = hi;
	worker.rows_processed += rows;
	return true;
}

/*
 * Record an error in stp.partitions; mark the partition failed when the
 * worker gives up.  Allocates in the caller's context, the worker's
 * per-loop one, and returns to it.
 */
static void
record_error(const char *message, bool failed)
{
	Oid			argtypes[4] = {INT4OID, INT4OID, TEXTOID, BOOLOID};
	Datum		args[4];
	MemoryContext caller_ctx = CurrentMemoryContext;

	args[0] = Int32GetDatum(worker.args.job_id);
	args[1] = Int32GetDatum(worker.args.partition);
	args[2] = CStringGetTextDatum(message);
	args[3] = BoolGetDatum(failed);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	(void) stp_catalog_exec("UPDATE stp.partitions SET last_error = $3, "
							"error_count = error_count + 1, failed = $4 "
							"WHERE job_id = $1 AND partition = $2",
							4, argtypes, args, NULL, false, 0);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
}

/*
 * Errors that retrying cannot cure: the job's tables were dropped or
 * altered, rights were revoked, or the data cannot be aggregated (an
 * overflow).  The partition fails at once, with the reason, and
 * stp_resume_job retries it once the cause is fixed.  Everything else
 * (deadlocks, serialization failures, lack of resources, a cancelled
 * statement) is retried with backoff.
 */
static bool
error_is_permanent(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION:
		case ERRCODE_FEATURE_NOT_SUPPORTED:
		case ERRCODE_DATA_EXCEPTION:
		case ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION:
			return true;
		default:
			return false;
	}
}

/*
 * Sleep on the latch, waking early for stp_wait and for signals.
 */
static void
worker_sleep(int64 ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 (long) ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Back off after an error for the whole delay: wake-ups from stp_wait
 * must not shorten it.
 */
static void
worker_backoff(int64 ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																deadline);

		if (remaining <= 0)
			break;
		worker_sleep(remaining);
	}
}

/*
 * Entry point of a partition worker: connect as the job's owner, become the
 * partition's only worker, then run batches until stopped, retrying errors
 * with backoff and failing the partition on errors a retry cannot cure.
 */
void
stp_worker_main(Datum main_arg)
{
	MemoryContext batch_ctx;
	volatile int failures = 0;
	volatile bool healthy = false;

	memcpy(&worker.args, MyBgworkerEntry->bgw_extra, sizeof(StpWorkerArgs));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnectionByOid(worker.args.dboid, worker.args.owner, 0);

	if (!claim_slot())
		proc_exit(0);
	before_shmem_exit(release_slot, (Datum) 0);

	/* Fixed settings: pinned names, read-committed snapshots per statement. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("datestyle", STP_DATESTYLE, PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("intervalstyle", STP_INTERVALSTYLE, PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	{
		char		appname[NAMEDATALEN];

		snprintf(appname, sizeof(appname), "stp job %d partition %d",
				 worker.args.job_id, worker.args.partition);
		SetConfigOption("application_name", appname, PGC_SUSET, PGC_S_OVERRIDE);
	}

	batch_ctx = AllocSetContextCreate(TopMemoryContext, "stp batch",
									  ALLOCSET_DEFAULT_SIZES);
	worker.recheck = true;
	CacheRegisterRelcacheCallback(relation_changed, (Datum) 0);

	for (;;)
	{
		volatile bool did_work = false;
		volatile bool stop = false;
		volatile bool set_up = (worker.def != NULL);

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		MemoryContextSwitchTo(batch_ctx);
		PG_TRY();
		{
			if (!set_up)
			{
				if (!worker_setup())
					stop = true;
			}
			else
				did_work = worker_step((bool *) &stop);
			failures = 0;
		}
		PG_CATCH();
		{
			ErrorData  *edata;
			char	   *message;
			int64		backoff;

			MemoryContextSwitchTo(batch_ctx);
			edata = CopyErrorData();
			HOLD_INTERRUPTS();
			EmitErrorReport();
			AbortOutOfAnyTransaction();
			FlushErrorState();
			RESUME_INTERRUPTS();
			/* The abort left TopMemoryContext current: back to the loop's. */
			MemoryContextSwitchTo(batch_ctx);

			failures++;
			if (error_is_permanent(edata->sqlerrcode))
				failures = stp_max_retries + 1;
			message = edata->detail ?
				psprintf("%s (%s)", edata->message, edata->detail) :
				pstrdup(edata->message);
			set_slot_state(STP_WS_RETRYING);
			record_error(message, failures > stp_max_retries);
			if (failures > stp_max_retries)
			{
				ereport(LOG,
						(errmsg("stp job %d partition %d failed after %d attempts: %s",
								worker.args.job_id, worker.args.partition,
								failures, message)));
				proc_exit(0);
			}
			backoff = Min((int64) 1000 << Min(failures - 1, 6), 60000);
			worker_backoff(backoff);
		}
		PG_END_TRY();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(batch_ctx);

		if (stop)
			proc_exit(0);

		if (!healthy && worker.def != NULL && failures == 0)
		{
			/* A worker that got this far is not crash-looping. */
			healthy = true;
			LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
			worker.slot->restarts = 0;
			LWLockRelease(stp_shared->lock);
		}

		if (!did_work && failures == 0 && worker.def != NULL)
		{
			set_slot_state(STP_WS_IDLE);
			worker_sleep(worker.def->poll_interval_ms);
		}
	}
}
