/*-------------------------------------------------------------------------
 *
 * worker.c
 *		A partition worker: the single-threaded pipeline of one partition.
 *
 * The process around the batches (batch.c): it connects as the job's
 * owner, becomes the partition's only worker through the shared registry,
 * pins its settings, and then runs one batch per transaction until the
 * job is stopped or dropped.  Errors a retry can cure are retried with
 * backoff; the others fail the partition at once, with the reason.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlogdefs.h"
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
#include "replication/origin.h"
#include "replication/slot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "stp.h"
#include "worker.h"

StpWorker	stp_worker;


/*
 * Open a GUC nest level with the worker's settings pinned: the names its
 * statements resolve and how they parse (the fixed parse settings), and
 * the job's own settings (TimeZone, DateStyle, ...), which the worker
 * evaluates with.  Code of the job (a function in its WHERE clause) runs
 * as the job's owner and may change a setting for the rest of the session
 * with set_config(); pinned again at the start of every transaction, such
 * a change never reaches how the next batch is planned or computed.
 * The caller ends the level with AtEOXact_GUC before it commits; an
 * abort ends it too.
 */
int
stp_pin_worker_settings(void)
{
	int			nestlevel = NewGUCNestLevel();

	stp_apply_job_settings(stp_worker.def, true);
	return nestlevel;
}

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
void
stp_set_slot_state(StpWorkerState state)
{
	/* Only this process writes its own slot's state; readers take a hint. */
	stp_worker.slot->state = state;
}

/*
 * At exit, give up the partition's registry entry so that the launcher can
 * start a new worker for it.
 */
static void
release_slot(int code, Datum arg)
{
	if (stp_worker.slot == NULL)
		return;
	/* Said once per worker, whether it was stopped, dropped or shut down. */
	if (stp_worker.def != NULL && !stp_worker.failed)
		ereport(LOG,
				(errmsg("stp job \"%s\" partition %d stopped",
						stp_worker.def->job_name, stp_worker.args.partition)));

	/*
	 * A slot job's replication slot is released before the registry entry:
	 * stp_drop_job drops the slots once the entries are free, and
	 * PostgreSQL's own release runs after this callback.
	 */
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	if (stp_worker.healthy)
		stp_worker.slot->start_logged = false;
	if (stp_worker.slot->pid == MyProcPid)
	{
		stp_worker.slot->pid = 0;
		stp_worker.slot->latch = NULL;
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
	slot = stp_slot_get(stp_worker.args.dboid, stp_worker.args.job_id, stp_worker.args.partition);
	if (slot && (slot->pid <= 0 || slot->pid == MyProcPid))
	{
		slot->pid = MyProcPid;
		slot->latch = MyLatch;
		slot->state = STP_WS_STARTING;
		slot->no_worker_slot = false;
		slot->blocker_pid = 0;
		stp_worker.slot = slot;
		ok = true;
	}
	LWLockRelease(stp_shared->lock);
	return ok;
}

/*
 * Any change to the source or the result table (ALTER TABLE, GRANT,
 * row-level security, ...) makes the worker check them again before its
 * next batch.
 */
static void
relation_changed(Datum arg, Oid relid)
{
	if (stp_worker.def == NULL || relid == InvalidOid ||
		relid == stp_worker.def->source || relid == stp_worker.def->result)
		stp_worker.recheck = true;
}

/*
 * Record an error in stp.partitions; mark the partition failed when the
 * worker gives up.  Returns false, recording nothing, if the job is no
 * longer owned by the role the worker connected as (REASSIGN OWNED): the
 * error came from the change of owner, and a worker that connects as the
 * new owner takes over.  Allocates in the caller's context, the worker's
 * per-loop one, and returns to it.
 */
static bool
record_error(const char *message, bool failed)
{
	Oid			argtypes[5] = {INT4OID, INT4OID, TEXTOID, BOOLOID, OIDOID};
	Datum		args[5];
	bool		recorded;
	MemoryContext caller_ctx = CurrentMemoryContext;

	args[0] = Int32GetDatum(stp_worker.args.job_id);
	args[1] = Int32GetDatum(stp_worker.args.partition);
	args[2] = CStringGetTextDatum(message);
	args[3] = BoolGetDatum(failed);
	args[4] = ObjectIdGetDatum(stp_worker.args.owner);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	(void) stp_catalog_exec("UPDATE stp.partitions SET last_error = $3, "
							"error_count = error_count OPERATOR(pg_catalog.+) 1, failed = $4 "
							"WHERE job_id OPERATOR(pg_catalog.=) $1 "
							"AND partition OPERATOR(pg_catalog.=) $2 "
							"AND EXISTS (SELECT 1 FROM stp.jobs j WHERE j.job_id OPERATOR(pg_catalog.=) $1 "
							"AND j.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $5)",
							5, argtypes, args, NULL, false, 0);
	recorded = (SPI_processed > 0);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	return recorded;
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
			/* The job's tables are no longer what it was created on. */
			return sqlerrcode == ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
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
 * Say in the server log that the partition's worker runs, once: until a
 * worker has run without an error, the workers that the launcher starts
 * again and again for the partition say it only at DEBUG1.
 */
static void
log_started(void)
{
	bool		logged;

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	logged = stp_worker.slot->start_logged;
	stp_worker.slot->start_logged = true;
	LWLockRelease(stp_shared->lock);
	if (stp_worker.slot->caught_up_at == 0)
		stp_worker.slot->caught_up_at = GetCurrentTimestamp();
	if (stp_worker.def->slot_source)
		ereport(logged ? DEBUG1 : LOG,
				(errmsg("stp job \"%s\" partition %d started from WAL position %X/%X",
						stp_worker.def->job_name, stp_worker.args.partition,
						LSN_FORMAT_ARGS((XLogRecPtr) stp_worker.offset))));
	else
		ereport(logged ? DEBUG1 : LOG,
				(errmsg("stp job \"%s\" partition %d started from %s " INT64_FORMAT "%s",
						stp_worker.def->job_name, stp_worker.args.partition,
						stp_worker.def->order_column, stp_worker.offset,
						stp_worker.def->restored ? ", restored from a dump" : "")));
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

	memcpy(&stp_worker.args, MyBgworkerEntry->bgw_extra, sizeof(StpWorkerArgs));

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnectionByOid(stp_worker.args.dboid, stp_worker.args.owner, 0);

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
	SetConfigOption("exit_on_error", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Tag the worker's writes (state, distinct and progress rows) in the
	 * WAL with the origin that says "do not replicate": a slot job's
	 * decoding drops them before its reorder buffer queues them, as it
	 * drops any change that is not its source's (slot.c).  Commits carry
	 * no origin, so nothing is tracked for it.
	 */
	replorigin_session_origin = DoNotReplicateId;
	{
		char		appname[NAMEDATALEN];

		snprintf(appname, sizeof(appname), "stp job %d partition %d",
				 stp_worker.args.job_id, stp_worker.args.partition);
		SetConfigOption("application_name", appname, PGC_SUSET, PGC_S_OVERRIDE);
	}

	batch_ctx = AllocSetContextCreate(TopMemoryContext, "stp batch",
									  ALLOCSET_DEFAULT_SIZES);
	stp_worker.recheck = true;
	CacheRegisterRelcacheCallback(relation_changed, (Datum) 0);

	for (;;)
	{
		volatile bool did_work = false;
		volatile bool stop = false;
		volatile bool set_up = (stp_worker.def != NULL);

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
				if (!stp_worker_setup())
					stop = true;
				else
					log_started();
			}
			else
				did_work = stp_worker_step((bool *) &stop);
			if (failures > 0)
				ereport(LOG,
						(errmsg("stp job %d partition %d recovered after %d failed attempts",
								stp_worker.args.job_id, stp_worker.args.partition, failures)));
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
			/* The server log gets the first error of a series, and the last. */
			if (failures == 0 || failures >= stp_max_retries ||
				error_is_permanent(edata->sqlerrcode))
				EmitErrorReport();
			AbortOutOfAnyTransaction();
			stp_slot_abort();
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
			if (failures == 1 && failures <= stp_max_retries)
				ereport(LOG,
						(errmsg("stp job %d partition %d is retrying after an error: %s",
								stp_worker.args.job_id, stp_worker.args.partition, message)));
			stp_set_slot_state(STP_WS_RETRYING);
			if (!record_error(message, failures > stp_max_retries))
				proc_exit(0);
			if (failures > stp_max_retries)
			{
				stp_worker.failed = true;
				if (error_is_permanent(edata->sqlerrcode))
					ereport(LOG,
							(errmsg("stp job %d partition %d failed: %s",
									stp_worker.args.job_id, stp_worker.args.partition, message)));
				else
					ereport(LOG,
							(errmsg("stp job %d partition %d failed after %d attempts: %s",
									stp_worker.args.job_id, stp_worker.args.partition,
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

		/*
		 * Report the table statistics of what the step wrote, as a backend
		 * does when it goes idle: autovacuum vacuums and analyzes the result
		 * table on them.  A busy worker reports at most once a second; an
		 * idle one at once.
		 */
		(void) pgstat_report_stat(!did_work);

		if (!stp_worker.healthy && stp_worker.def != NULL && failures == 0)
		{
			/* A worker that got this far is not crash-looping. */
			stp_worker.healthy = true;
			LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
			stp_worker.slot->restarts = 0;
			LWLockRelease(stp_shared->lock);
		}

		if (did_work && failures == 0 && stp_worker.next_step_at != 0)
		{
			long		ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															 stp_worker.next_step_at);

			stp_worker.next_step_at = 0;
			if (ms > 0)
				worker_sleep(ms);
		}
		if (!did_work && failures == 0 && stp_worker.def != NULL)
		{
			if (stp_worker.def->restored)
				worker_sleep(Max(stp_worker.def->poll_interval_ms, 1000));
			else
			{
				stp_set_slot_state(STP_WS_IDLE);
				worker_sleep(stp_worker.def->poll_interval_ms);
			}
		}
	}
}
