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
	List	   *distinct_plans; /* of SPIPlanPtr, one per count(DISTINCT) */
	SPIPlanPtr	progress_plan;
	char	   *source_name;	/* the names the batch plan was made with */
	char	   *result_name;
	bool		recheck;		/* source or result table may have changed */
	int64		offset;			/* committed progress */
	int64		safe_upto;		/* every id <= this has settled */
	int64		rows_processed;
	bool		failed;			/* the log said that the partition failed */
	bool		healthy;		/* ran a step without an error */
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
	"SELECT 1 FROM stp.partitions p JOIN stp.jobs j ON j.job_id OPERATOR(pg_catalog.=) p.job_id " \
	"WHERE p.job_id OPERATOR(pg_catalog.=) $1 AND p.partition OPERATOR(pg_catalog.=) $2 " \
	"AND p.processed_upto OPERATOR(pg_catalog.=) $3 " \
	"AND j.state OPERATOR(pg_catalog.=) 'running' AND NOT p.failed FOR UPDATE OF p"

#define PROGRESS_SQL \
	"UPDATE stp.partitions SET processed_upto = $3, " \
	"rows_processed = rows_processed OPERATOR(pg_catalog.+) $4, last_batch_at = pg_catalog.now(), " \
	"last_error = NULL, error_count = 0 " \
	"WHERE job_id OPERATOR(pg_catalog.=) $1 AND partition OPERATOR(pg_catalog.=) $2"

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
static int
pin_worker_settings(void)
{
	int			nestlevel = NewGUCNestLevel();

	stp_apply_job_settings(worker.def, true);
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
	/* Said once per worker, whether it was stopped, dropped or shut down. */
	if (worker.def != NULL && !worker.failed)
		ereport(LOG,
				(errmsg("stp job \"%s\" partition %d stopped",
						worker.def->job_name, worker.args.partition)));
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	if (worker.healthy)
		worker.slot->start_logged = false;
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
		slot->blocker_pid = 0;
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
		if (VirtualXactLock(*vxids, false))
			continue;
		/* Show whom the partition waits for, in stp.job_status. */
		worker.slot->blocked_since = GetCurrentTimestamp();
		worker.slot->blocker_relid = relid;
		worker.slot->blocker_pid = proc ? proc->pid : 0;
		pgstat_report_activity(STATE_RUNNING, "stp: waiting for writers of the source");
		VirtualXactLock(*vxids, true);
		worker.slot->blocker_pid = 0;
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
 * Check one result column's type, type modifier and collation against what
 * the job's query produces now: a numeric(10,0) column would round a
 * numeric sum, and another collation would merge or split groups.
 */
static void
check_result_column(const char *name, Form_pg_attribute produced)
{
	AttrNumber	attnum = get_attnum(worker.def->result, name);
	Oid			atttype;
	int32		atttypmod;
	Oid			attcoll;

	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("result table %s has no column \"%s\" any more",
						stp_qualified_relname(worker.def->result), name)));
	get_atttypetypmodcoll(worker.def->result, attnum, &atttype, &atttypmod, &attcoll);
	if (atttype != produced->atttypid || atttypmod != produced->atttypmod)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of result table %s has type %s, but the job's query now produces %s",
						name, stp_qualified_relname(worker.def->result),
						format_type_with_typemod(atttype, atttypmod),
						format_type_with_typemod(produced->atttypid, produced->atttypmod)),
				 errdetail("The source or the result table was altered after the job was created.")));
	if (attcoll != produced->attcollation)
		ereport(ERROR,
				(errcode(ERRCODE_COLLATION_MISMATCH),
				 errmsg("column \"%s\" of result table %s has collation %s, but the job's query now produces %s",
						name, stp_qualified_relname(worker.def->result),
						OidIsValid(attcoll) ? get_collation_name(attcoll) : "none",
						OidIsValid(produced->attcollation) ?
						get_collation_name(produced->attcollation) : "none"),
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

	worker.recheck = false;

	if (SPI_execute_with_args(stp_probe_sql(def), 2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not check the job's column types");
	desc = SPI_tuptable->tupdesc;
	foreach(lc, def->key_names)
		check_result_column(lfirst(lc), TupleDescAttr(desc, col++));
	forboth(lc, def->agg_names, lc2, def->agg_kinds)
	{
		StpAggKind	kind = (StpAggKind) lfirst_int(lc2);

		check_result_column(lfirst(lc), TupleDescAttr(desc, col++));
		if (kind == STP_AGG_AVG_NUMERIC || kind == STP_AGG_AVG_FLOAT)
		{
			check_result_column(stp_avg_sum_column(lfirst(lc)),
								TupleDescAttr(desc, col++));
			check_result_column(stp_avg_count_column(lfirst(lc)),
								TupleDescAttr(desc, col++));
		}
		if (STP_AGG_IS_VARIANCE(kind))
			check_result_column(stp_variance_state_column(lfirst(lc)),
								TupleDescAttr(desc, col++));
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Prepare the batch statement with the current names of the job's tables,
 * replacing the one made with their old names.
 */
static void
prepare_batch_plan(StpJobDef *def)
{
	Oid			types[2] = {INT8OID, INT8OID};
	char	   *sql = stp_batch_sql(def, worker.args.partition);
	SPIPlanPtr	plan;
	MemoryContext old;
	ListCell   *lc;

	elog(DEBUG1, "stp job %d partition %d batch: %s",
		 worker.args.job_id, worker.args.partition, sql);
	plan = SPI_prepare(sql, 2, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the batch statement: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	if (worker.batch_plan)
		SPI_freeplan(worker.batch_plan);
	worker.batch_plan = plan;

	foreach(lc, worker.distinct_plans)
		SPI_freeplan(lfirst(lc));
	list_free(worker.distinct_plans);
	worker.distinct_plans = NIL;
	foreach(lc, def->agg_kinds)
	{
		if ((StpAggKind) lfirst_int(lc) != STP_AGG_COUNT_DISTINCT)
			continue;
		sql = stp_distinct_sql(def, worker.args.partition, foreach_current_index(lc));
		elog(DEBUG1, "stp job %d partition %d distinct: %s",
			 worker.args.job_id, worker.args.partition, sql);
		plan = SPI_prepare(sql, 2, types);
		if (plan == NULL)
			elog(ERROR, "could not prepare a distinct count statement: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		old = MemoryContextSwitchTo(TopMemoryContext);
		worker.distinct_plans = lappend(worker.distinct_plans, plan);
		MemoryContextSwitchTo(old);
	}

	old = MemoryContextSwitchTo(TopMemoryContext);
	if (worker.source_name)
		pfree(worker.source_name);
	if (worker.result_name)
		pfree(worker.result_name);
	worker.source_name = stp_qualified_relname(def->source);
	worker.result_name = stp_qualified_relname(def->result);
	MemoryContextSwitchTo(old);
}

/*
 * Lock the job's tables by OID and check that they still are what the job
 * was created on (guard.c), failing the partition with the reason if not.
 * The batch statement names its tables, and a cached plan is re-analysed
 * by name after a change; so if a table was renamed, the statement is
 * prepared again with its new name.  With the locks held no rename can
 * commit before the batch does, and a job never switches to another table
 * that took the old name.
 */
static void
guard_tables(void)
{
	StpJobDef  *def = worker.def;
	char	   *reason;
	ListCell   *lc;

	LockRelationOid(def->source, AccessShareLock);
	LockRelationOid(def->result, AccessShareLock);
	reason = stp_check_job_tables(def, Max(worker.offset, worker.safe_upto));
	if (reason)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s", reason)));

	/* Each count(DISTINCT) needs its distinct table, found by name. */
	foreach(lc, def->agg_kinds)
	{
		int			agg = foreach_current_index(lc);
		Oid			side;

		if ((StpAggKind) lfirst_int(lc) != STP_AGG_COUNT_DISTINCT)
			continue;
		side = stp_distinct_table(def, agg);
		if (!OidIsValid(side))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the distinct table %s of job \"%s\" was dropped or renamed",
							stp_distinct_table_name(get_rel_name(def->result), agg),
							def->job_name),
					 errdetail("The job keeps the values of column \"%s\" in it.",
							   (char *) list_nth(def->agg_names, agg)),
					 errhint("Drop the job and create it again.")));
		LockRelationOid(side, AccessShareLock);
	}
	if (strcmp(stp_qualified_relname(def->source), worker.source_name) != 0 ||
		strcmp(stp_qualified_relname(def->result), worker.result_name) != 0)
		prepare_batch_plan(def);
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
	bool		ok = true;
	int			ret;
	int			nestlevel;
	MemoryContext caller_ctx = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	nestlevel = pin_worker_settings();
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

		stp_apply_job_settings(def, false);

		ret = stp_catalog_exec("SELECT processed_upto, failed FROM stp.partitions "
							   "WHERE job_id OPERATOR(pg_catalog.=) $1 AND partition OPERATOR(pg_catalog.=) $2",
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
		SPIPlanPtr	progress_plan;

		prepare_batch_plan(def);
		lock_plan = SPI_prepare(LOCK_SQL, 3, types);
		progress_plan = SPI_prepare(PROGRESS_SQL, 4, types);
		if (lock_plan == NULL || progress_plan == NULL)
			elog(ERROR, "could not prepare the progress statements: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(lock_plan);
		SPI_keepplan(progress_plan);
		worker.lock_plan = lock_plan;
		worker.progress_plan = progress_plan;
		worker.def = def;
	}

	PopActiveSnapshot();
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
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

	ret = stp_catalog_exec("SELECT 1 FROM stp.jobs j JOIN stp.partitions p ON p.job_id OPERATOR(pg_catalog.=) j.job_id "
						   "WHERE j.job_id OPERATOR(pg_catalog.=) $1 AND p.partition OPERATOR(pg_catalog.=) $2 "
						   "AND j.state OPERATOR(pg_catalog.=) 'running' "
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
	ListCell   *lc;
	Datum		values[4];
	bool		isnull;
	int			ret;
	int			nestlevel;
	MemoryContext caller_ctx = CurrentMemoryContext;

	started = GetCurrentTimestamp();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	nestlevel = pin_worker_settings();
	SPI_connect();

	if (worker.def->restored)
	{
		bool		complete;

		/* A job from a restore runs once the restore is complete. */
		pgstat_report_activity(STATE_RUNNING, "stp: checking a restored job");
		PushActiveSnapshot(GetTransactionSnapshot());
		complete = stp_restore_complete(worker.def, worker.offset, worker.slot);
		PopActiveSnapshot();
		if (!complete)
		{
			set_slot_state(STP_WS_RESTORED);
			SPI_finish();
			AtEOXact_GUC(true, nestlevel);
			CommitTransactionCommand();
			pgstat_report_activity(STATE_IDLE, NULL);
			return false;
		}
		worker.def->restored = false;
		ereport(LOG,
				(errmsg("stp job \"%s\" partition %d: its restore is complete, the job runs",
						worker.def->job_name, worker.args.partition)));
	}

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
		/* Caught up: still check the tables, so that a change shows now. */
		guard_tables();
		worker.slot->caught_up_at = GetCurrentTimestamp();
		SPI_finish();
		AtEOXact_GUC(true, nestlevel);
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

	/*
	 * Only now, holding the progress row, lock and check the tables: a
	 * stp_drop_job that holds the job's rows and waits to drop the result
	 * table then never waits for this worker while it waits for them.
	 */
	guard_tables();

	pgstat_report_activity(STATE_RUNNING, "stp: batch");
	values[0] = Int64GetDatum(worker.offset);
	values[1] = Int64GetDatum(hi);
	ret = SPI_execute_plan(worker.batch_plan, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "batch statement failed: %s", SPI_result_code_string(ret));
	rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));

	/* The distinct counts, after the batch made their groups. */
	foreach(lc, worker.distinct_plans)
	{
		ret = SPI_execute_plan(lfirst(lc), values, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "distinct count statement failed: %s",
				 SPI_result_code_string(ret));
	}

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
	AtEOXact_GUC(true, nestlevel);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	pgstat_report_activity(STATE_IDLE, NULL);

	elog(DEBUG1, "stp job %d partition %d: ids (" INT64_FORMAT ", " INT64_FORMAT "], "
		 INT64_FORMAT " rows in %ld ms",
		 worker.args.job_id, worker.args.partition, worker.offset, hi, rows,
		 TimestampDifferenceMilliseconds(started, GetCurrentTimestamp()));
	worker.offset = hi;
	worker.rows_processed += rows;
	stp_count_rows(worker.slot, rows);
	return true;
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

	args[0] = Int32GetDatum(worker.args.job_id);
	args[1] = Int32GetDatum(worker.args.partition);
	args[2] = CStringGetTextDatum(message);
	args[3] = BoolGetDatum(failed);
	args[4] = ObjectIdGetDatum(worker.args.owner);

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
	logged = worker.slot->start_logged;
	worker.slot->start_logged = true;
	LWLockRelease(stp_shared->lock);
	if (worker.slot->caught_up_at == 0)
		worker.slot->caught_up_at = GetCurrentTimestamp();
	ereport(logged ? DEBUG1 : LOG,
			(errmsg("stp job \"%s\" partition %d started from %s " INT64_FORMAT "%s",
					worker.def->job_name, worker.args.partition,
					worker.def->order_column, worker.offset,
					worker.def->restored ? ", restored from a dump" : "")));
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
	SetConfigOption("exit_on_error", "off", PGC_SUSET, PGC_S_OVERRIDE);
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
				else
					log_started();
			}
			else
				did_work = worker_step((bool *) &stop);
			if (failures > 0)
				ereport(LOG,
						(errmsg("stp job %d partition %d recovered after %d failed attempts",
								worker.args.job_id, worker.args.partition, failures)));
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
								worker.args.job_id, worker.args.partition, message)));
			set_slot_state(STP_WS_RETRYING);
			if (!record_error(message, failures > stp_max_retries))
				proc_exit(0);
			if (failures > stp_max_retries)
			{
				worker.failed = true;
				if (error_is_permanent(edata->sqlerrcode))
					ereport(LOG,
							(errmsg("stp job %d partition %d failed: %s",
									worker.args.job_id, worker.args.partition, message)));
				else
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

		if (!worker.healthy && worker.def != NULL && failures == 0)
		{
			/* A worker that got this far is not crash-looping. */
			worker.healthy = true;
			LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
			worker.slot->restarts = 0;
			LWLockRelease(stp_shared->lock);
		}

		if (!did_work && failures == 0 && worker.def != NULL)
		{
			if (worker.def->restored)
				worker_sleep(Max(worker.def->poll_interval_ms, 1000));
			else
			{
				set_slot_state(STP_WS_IDLE);
				worker_sleep(worker.def->poll_interval_ms);
			}
		}
	}
}
