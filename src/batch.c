/*-------------------------------------------------------------------------
 *
 * batch.c
 *		One batch of a partition worker, in one transaction.
 *
 * The worker finds how far the source may safely be read, locks its
 * progress row, checks that the job's tables are still what it was
 * created on, runs its prepared batch statement (read the new rows, keep
 * its own groups, aggregate, upsert into the result table) and advances
 * its progress row in stp.partitions.  Results and progress commit
 * together, so a crash at any instant loses nothing and counts nothing
 * twice.  The progress update is fenced on the previous offset: a second
 * worker for the same partition could not commit a batch twice.
 *
 * In row mode (strategy 'rows') the partitions own id ranges instead of
 * groups: ranges batch_size / N ids wide, range r owned by partition
 * r mod N.  A partition reads only its own ranges, without routing, and
 * merges every group it found into the shared result rows.  The batch
 * statement upserts in key order, so two partitions that merge into the
 * same rows lock them in the same order and cannot deadlock; a row lock
 * is held from the merge to the commit.  The progress row says exactly
 * which ranges are done: every id of the partition's own ranges up to
 * processed_upto, which also moves over the other partitions' ranges up
 * to the next range of its own (as far as ids have settled), so that
 * every partition's progress passes an id once every range below it is
 * done.
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
#include "worker.h"

/*
 * A batch first locks its partition's progress row, fenced on the offset
 * it read, before it touches the result table.  A second worker for the
 * same partition, or a stop or drop in progress, then waits here holding
 * nothing that the other side needs, so neither can deadlock and no batch
 * commits twice.
 */
#define LOCK_SQL \
	"SELECT %s, j.partitions FROM stp.partitions p JOIN stp.jobs j ON j.job_id OPERATOR(pg_catalog.=) p.job_id " \
	"WHERE p.job_id OPERATOR(pg_catalog.=) $1 AND p.partition OPERATOR(pg_catalog.=) $2 " \
	"AND p.processed_upto OPERATOR(pg_catalog.=) $3 " \
	"AND j.state OPERATOR(pg_catalog.=) 'running' AND NOT p.failed FOR UPDATE OF p"

#define PROGRESS_SQL \
	"UPDATE stp.partitions SET processed_upto = $3, " \
	"rows_processed = rows_processed OPERATOR(pg_catalog.+) $4, last_batch_at = pg_catalog.now(), " \
	"last_error = NULL, error_count = 0 " \
	"WHERE job_id OPERATOR(pg_catalog.=) $1 AND partition OPERATOR(pg_catalog.=) $2"

/*
 * The common cut of a pending resize (resize.c), as this partition last
 * read it, and whether the worker should see whether every partition has
 * reached it: after it started, and after its own batch reached it.
 */
static bool cut_known = false;
static int64 cut_at = 0;
static bool cut_check = false;

/*
 * The memory of the loaded job's definition (stp_worker.def): deleted
 * when the worker forgets the job to load it again after stp_alter_job.
 */
static MemoryContext def_ctx = NULL;

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
		stp_worker.slot->blocked_since = GetCurrentTimestamp();
		stp_worker.slot->blocker_relid = relid;
		stp_worker.slot->blocker_pid = proc ? proc->pid : 0;
		pgstat_report_activity(STATE_RUNNING, "stp: waiting for writers of the source");
		VirtualXactLock(*vxids, true);
		stp_worker.slot->blocker_pid = 0;
	}
}

/*
 * Check one result column's type, type modifier and collation against what
 * the job's query produces now: a numeric(10,0) column would round a
 * numeric sum, and another collation would merge or split groups.
 */
static void
check_result_column(const char *name, Form_pg_attribute produced)
{
	AttrNumber	attnum = get_attnum(stp_worker.def->result, name);
	Oid			atttype;
	int32		atttypmod;
	Oid			attcoll;

	if (attnum == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("result table %s has no column \"%s\" any more",
						stp_qualified_relname(stp_worker.def->result), name)));
	get_atttypetypmodcoll(stp_worker.def->result, attnum, &atttype, &atttypmod, &attcoll);
	if (atttype != produced->atttypid || atttypmod != produced->atttypmod)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of result table %s has type %s, but the job's query now produces %s",
						name, stp_qualified_relname(stp_worker.def->result),
						format_type_with_typemod(atttype, atttypmod),
						format_type_with_typemod(produced->atttypid, produced->atttypmod)),
				 errdetail("The source or the result table was altered after the job was created.")));
	if (attcoll != produced->attcollation)
		ereport(ERROR,
				(errcode(ERRCODE_COLLATION_MISMATCH),
				 errmsg("column \"%s\" of result table %s has collation %s, but the job's query now produces %s",
						name, stp_qualified_relname(stp_worker.def->result),
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
	StpJobDef  *def = stp_worker.def;
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2] = {Int64GetDatum(0), Int64GetDatum(0)};
	TupleDesc	desc;
	ListCell   *lc,
			   *lc2;
	int			col = 0;

	stp_worker.recheck = false;

	if (SPI_execute_with_args(stp_probe_sql(def), 2, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not check the job's column types");
	desc = SPI_tuptable->tupdesc;
	foreach(lc, def->key_names)
		check_result_column(lfirst(lc), TupleDescAttr(desc, col++));
	forboth(lc, def->agg_names, lc2, def->agg_kinds)
	{
		StpAggKind	kind = (StpAggKind) lfirst_int(lc2);

		check_result_column(lfirst(lc), TupleDescAttr(desc, col++));
		if (STP_AGG_IS_AVG(kind))
		{
			check_result_column(stp_avg_sum_column(lfirst(lc)),
								TupleDescAttr(desc, col++));
			check_result_column(stp_avg_count_column(lfirst(lc)),
								TupleDescAttr(desc, col++));
		}
		if (STP_AGG_KEEPS_STATE(kind))
			check_result_column(stp_variance_state_column(lfirst(lc)),
								TupleDescAttr(desc, col++));
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Prepare one of the worker's statements (what names it in messages), with
 * its two int8 parameters, and keep it for the worker's life.
 */
static SPIPlanPtr
prepare_kept(const char *what, const char *sql)
{
	Oid			types[2] = {INT8OID, INT8OID};
	SPIPlanPtr	plan;

	elog(DEBUG1, "stp job %d partition %d %s: %s",
		 stp_worker.args.job_id, stp_worker.args.partition, what, sql);
	plan = SPI_prepare(sql, 2, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare the %s statement: %s", what,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Replace the kept statement *kept with sql prepared (what names it), or
 * with none when sql is NULL.
 */
static void
replace_kept(SPIPlanPtr *kept, const char *what, const char *sql)
{
	SPIPlanPtr	plan = sql ? prepare_kept(what, sql) : NULL;

	if (*kept)
		SPI_freeplan(*kept);
	*kept = plan;
}

/*
 * Prepare the batch statement with the current names of the job's tables,
 * replacing the one made with their old names.
 */
static void
prepare_batch_plan(StpJobDef *def)
{
	int32		partition = stp_worker.args.partition;
	MemoryContext old;
	ListCell   *lc;

	replace_kept(&stp_worker.batch_plan, "batch", def->slot_source ?
				 stp_slot_batch_sql(def, partition) : stp_batch_sql(def, partition));
	if (def->slot_source)
	{
		replace_kept(&stp_worker.slot_merge_plan, "merge",
					 stp_slot_merge_sql(def, partition, false));
		replace_kept(&stp_worker.slot_retract_plan, "retract", def->slot_retract ?
					 stp_slot_merge_sql(def, partition, true) : NULL);
		replace_kept(&stp_worker.slot_delete_plan, "delete", def->slot_retract ?
					 stp_slot_delete_sql(def) : NULL);
	}

	foreach(lc, stp_worker.distinct_plans)
		SPI_freeplan(lfirst(lc));
	list_free(stp_worker.distinct_plans);
	stp_worker.distinct_plans = NIL;

	foreach(lc, def->agg_kinds)
	{
		SPIPlanPtr	plan;

		if (!STP_AGG_IS_DISTINCT((StpAggKind) lfirst_int(lc)))
			continue;
		plan = prepare_kept("distinct count",
							stp_distinct_sql(def, partition, foreach_current_index(lc)));
		old = MemoryContextSwitchTo(TopMemoryContext);
		stp_worker.distinct_plans = lappend(stp_worker.distinct_plans, plan);
		MemoryContextSwitchTo(old);
	}

	old = MemoryContextSwitchTo(TopMemoryContext);
	if (stp_worker.source_name)
		pfree(stp_worker.source_name);
	if (stp_worker.result_name)
		pfree(stp_worker.result_name);
	stp_worker.source_name = stp_source_names(def, stp_worker.args.partition);
	stp_worker.result_name = stp_qualified_relname(def->result);
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
 *
 * With nowait (the caller holds its progress row), a table whose lock is
 * not free at once is not waited for: its OID goes to *busy and the
 * function returns false, and the caller lets go of the row before it
 * waits (stp_wait_for_table).  DDL on a job's table holds its
 * AccessExclusiveLock while it fails the job in the same transaction,
 * which updates the job's progress rows: a worker that waited for the
 * table while it held its row would deadlock with it.
 */
static bool
lock_table(Oid relid, bool nowait, Oid *busy)
{
	if (!nowait)
	{
		LockRelationOid(relid, AccessShareLock);
		return true;
	}
	if (ConditionalLockRelationOid(relid, AccessShareLock))
		return true;
	*busy = relid;
	return false;
}

static bool
guard_tables(bool nowait, Oid *busy)
{
	StpJobDef  *def = stp_worker.def;
	char	   *reason;
	ListCell   *lc;

	if (!lock_table(def->source, nowait, busy) ||
		!lock_table(def->result, nowait, busy))
		return false;
	/* The leaves the batch reads: TRUNCATE of a leaf locks only the leaf. */
	foreach(lc, stp_leaves_to_wait(def, stp_worker.args.partition))
	{
		if (!lock_table(lfirst_oid(lc), nowait, busy))
			return false;
	}
	reason = stp_check_job_tables(def, Max(stp_worker.offset, stp_worker.safe_upto));
	if (reason)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s", reason)));

	/* Each count(DISTINCT) needs its distinct table, found by name. */
	foreach(lc, def->agg_kinds)
	{
		int			agg = foreach_current_index(lc);
		Oid			side;

		if (!STP_AGG_IS_DISTINCT((StpAggKind) lfirst_int(lc)))
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
		if (!lock_table(side, nowait, busy))
			return false;
	}
	if (strcmp(stp_source_names(def, stp_worker.args.partition), stp_worker.source_name) != 0 ||
		strcmp(stp_qualified_relname(def->result), stp_worker.result_name) != 0)
		prepare_batch_plan(def);
	return true;
}

/*
 * guard_tables, for a slot job's step (slot.c).
 */
bool
stp_guard_tables(bool nowait, Oid *busy)
{
	return guard_tables(nowait, busy);
}

/*
 * Wait, in a transaction of its own, until a table whose lock guard_tables
 * did not get at once is free: the caller has let go of its progress row,
 * and steps again after this.
 */
void
stp_wait_for_table(Oid relid)
{
	pgstat_report_activity(STATE_RUNNING, "stp: waiting for a lock on a table of the job");
	StartTransactionCommand();
	LockRelationOid(relid, AccessShareLock);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

void
stp_check_job_relations(void)
{
	check_job_relations();
}

/*
 * Load the job and prepare the worker's statements.  Returns false if the
 * job no longer exists or should not run.
 */
bool
stp_worker_setup(void)
{
	char	   *state;
	StpJobDef  *def;
	Oid			types[4] = {INT4OID, INT4OID, INT8OID, INT8OID};
	bool		ok = true;
	int			ret;
	int			nestlevel;
	bool		has_cut;
	MemoryContext caller_ctx = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	nestlevel = stp_pin_worker_settings();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	has_cut = stp_catalog_has_column("partitions", "stop_at");

	if (def_ctx != NULL)
		MemoryContextDelete(def_ctx);
	def_ctx = AllocSetContextCreate(TopMemoryContext, "stp job definition",
									ALLOCSET_SMALL_SIZES);
	def = stp_load_job(stp_worker.args.job_id, &state, def_ctx);
	if (def == NULL || strcmp(state, "running") != 0)
		ok = false;
	else
	{
		Oid			argtypes[2] = {INT4OID, INT4OID};
		Datum		args[2] = {Int32GetDatum(stp_worker.args.job_id),
		Int32GetDatum(stp_worker.args.partition)};
		bool		isnull;

		stp_apply_job_settings(def, false);

		ret = stp_catalog_exec(psprintf("SELECT processed_upto, failed, %s FROM stp.partitions "
										"WHERE job_id OPERATOR(pg_catalog.=) $1 AND partition OPERATOR(pg_catalog.=) $2",
										has_cut ? "stop_at" : "NULL::pg_catalog.int8"),
							   2, argtypes, args, NULL, true, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			ok = false;
		else
		{
			stp_worker.offset = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1, &isnull));
			if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull)))
				ok = false;
			stp_worker.safe_upto = stp_worker.offset;
			cut_at = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 3, &cut_known));
			cut_known = !cut_known;
			cut_check = cut_known;
		}
	}

	if (ok)
	{
		SPIPlanPtr	lock_plan;
		SPIPlanPtr	progress_plan;

		stp_create_combine_aggregates(def);
		prepare_batch_plan(def);
		/* A catalog older than 1.2 has no resizes. */
		lock_plan = SPI_prepare(psprintf(LOCK_SQL, has_cut ? "p.stop_at" : "NULL::pg_catalog.int8"),
								3, types);
		progress_plan = SPI_prepare(PROGRESS_SQL, 4, types);
		if (lock_plan == NULL || progress_plan == NULL)
			elog(ERROR, "could not prepare the progress statements: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(lock_plan);
		SPI_keepplan(progress_plan);
		stp_worker.lock_plan = lock_plan;
		stp_worker.progress_plan = progress_plan;
		stp_worker.def = def;
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
	Datum		args[2] = {Int32GetDatum(stp_worker.args.job_id),
	Int32GetDatum(stp_worker.args.partition)};
	int			ret;

	ret = stp_catalog_exec("SELECT 1 FROM stp.jobs j JOIN stp.partitions p ON p.job_id OPERATOR(pg_catalog.=) j.job_id "
						   "WHERE j.job_id OPERATOR(pg_catalog.=) $1 AND p.partition OPERATOR(pg_catalog.=) $2 "
						   "AND j.state OPERATOR(pg_catalog.=) 'running' "
						   "AND NOT p.failed",
						   2, argtypes, args, NULL, false, 1);
	return ret == SPI_OK_SELECT && SPI_processed == 1;
}

/*
 * The job's partition count now, or -1 if it does not run.
 */
static int32
job_partitions_now(void)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(stp_worker.args.job_id)};
	bool		isnull;
	int			ret;

	ret = stp_catalog_exec("SELECT partitions FROM stp.jobs WHERE job_id OPERATOR(pg_catalog.=) $1 "
						   "AND state OPERATOR(pg_catalog.=) 'running'",
						   1, argtypes, args, NULL, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		return -1;
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Forget the job's definition and statements: the next round of the
 * worker's loop loads the job again (stp_worker_setup), with its new
 * partition count, batch size and poll interval, or ends the worker if
 * its partition is gone.
 */
static void
forget_job(void)
{
	if (stp_worker.lock_plan)
		SPI_freeplan(stp_worker.lock_plan);
	if (stp_worker.progress_plan)
		SPI_freeplan(stp_worker.progress_plan);
	stp_worker.lock_plan = NULL;
	stp_worker.progress_plan = NULL;
	stp_worker.def = NULL;
	if (def_ctx != NULL)
		MemoryContextDelete(def_ctx);
	def_ctx = NULL;
	stp_worker.recheck = true;
	cut_known = false;
	cut_check = false;
}

/*
 * In a transaction of its own, carry out the job's pending resize if every
 * partition has reached its cut (resize.c).  It holds no progress row, so
 * it takes the job's row and then the progress rows, as stp_alter_job does.
 */
static void
try_finish_resize(void)
{
	int			nestlevel;
	MemoryContext caller_ctx = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	nestlevel = stp_pin_worker_settings();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "stp: at the cut of a resize");
	(void) stp_finish_resize(stp_worker.args.job_id);
	PopActiveSnapshot();
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	pgstat_report_activity(STATE_IDLE, NULL);
	cut_check = false;
}

/*
 * Row mode: the width of the id ranges that the partitions take in turn.
 * One round of ranges, one per partition, is one batch_size: a backlog of
 * one batch already gives every partition work.
 */
static int64
row_range_width(StpJobDef *def)
{
	return Max((def->batch_size + def->partitions - 1) / def->partitions, 1);
}

/*
 * Row mode: the range number of the id just above offset.  Range r holds
 * the ids (r * width, (r + 1) * width], and partition r mod N owns it.
 */
static int64
row_range_of(int64 offset, int64 width)
{
	int64		r = offset / width;

	if (offset < 0 && r * width != offset)
		r--;					/* round towards minus infinity */
	return r;
}

/*
 * Row mode: the start of the next range that this partition owns at or
 * after offset; offset itself if the id above it is the partition's.  Every
 * id between offset and the result belongs to other partitions, so the
 * partition's progress may move over them without reading them.
 */
static int64
row_next_own(StpJobDef *def, int32 partition, int64 offset)
{
	int64		width = row_range_width(def);
	int64		r = row_range_of(offset, width);
	int64		owner = ((r % def->partitions) + def->partitions) % def->partitions;
	int64		skip = ((partition - owner) % def->partitions + def->partitions) % def->partitions;

	if (skip == 0)
		return offset;
	if (r + skip > PG_INT64_MAX / width - 1)
		return PG_INT64_MAX;
	return (r + skip) * width;
}

/*
 * The ids of the partition's next batch, (*lo, *hi], and the progress it
 * records when that batch commits, *upto.  Groups mode reads on from its
 * offset.  Row mode reads the rest of its current own range, or of the
 * next one, and records progress past the ranges of the other partitions
 * that follow, as far as every id has settled: so a partition that has
 * nothing of its own left to read still shows that it has caught up (and
 * stp_wait, which waits for every partition's progress, returns).  *lo ==
 * *hi when there is nothing to read; *upto > offset then still moves the
 * progress on.
 */
static void
next_batch_range(int64 *lo, int64 *hi, int64 *upto)
{
	StpJobDef  *def = stp_worker.def;
	int64		offset = stp_worker.offset;
	int64		safe = stp_worker.safe_upto;

	if (!def->rows_mode || def->partitions == 1)
	{
		int64		width = Max(stp_worker.batch_ids, def->batch_size);

		*lo = offset;
		*hi = width >= safe - offset ? safe : offset + width;
		*hi = Max(*hi, offset);
		*upto = *hi;
		return;
	}
	*lo = row_next_own(def, stp_worker.args.partition, offset);
	if (*lo >= safe)
	{
		*lo = *hi = *upto = Max(offset, safe);
		return;
	}
	{
		int64		width = row_range_width(def);
		int64		r = row_range_of(*lo, width);
		int64		end = r < PG_INT64_MAX / width - 1 ? (r + 1) * width : PG_INT64_MAX;

		*hi = Min(end, safe);
		*upto = Min(row_next_own(def, stp_worker.args.partition, *hi), safe);
	}
}

/*
 * Adapt the size of the next batch to the backlog (groups mode).  A
 * partition far behind merges each of its groups once per batch, so
 * larger batches merge less: W3 (2M keys) spends most of its time
 * merging.  The batch grows only while batches take less than
 * STP_GROW_BELOW_MS, so that a batch keeps a time bound, and only while
 * growing makes it merge fewer groups per row (STP_GROW_MIN_GAIN); memory
 * stays bounded by work_mem, past which the aggregation and the sort
 * before the merge spill to disk.  Row mode keeps its ranges, batch_size /
 * N ids wide: they are what the partitions' progress is counted in, and
 * they give every partition work while the backlog lasts.  rows and
 * groups are the source rows the last batch aggregated and the groups it
 * merged.
 */
static void
adapt_batch_size(int64 hi, long ms, int64 rows, int64 groups)
{
	StpJobDef  *def = stp_worker.def;
	int64		max_ids = def->batch_size * STP_GROW_MAX_FACTOR;
	int64		last = Max(stp_worker.batch_ids, def->batch_size);
	double		density = rows > 0 ? (double) groups / rows : 0;

	if (def->rows_mode && def->partitions > 1)
		return;
	stp_worker.batch_ids = last;
	if (hi >= stp_worker.safe_upto)
	{
		/* Caught up. */
		stp_worker.batch_ids = def->batch_size;
		stp_worker.batch_held = false;
	}
	else if (stp_worker.batch_grew && stp_worker.batch_density > 0 &&
			 density > STP_GROW_MIN_GAIN * stp_worker.batch_density)
	{
		/* The larger batch merged as many groups per row: it saved nothing. */
		stp_worker.batch_ids = Max(last / 2, def->batch_size);
		stp_worker.batch_held = true;
	}
	else if (ms < STP_GROW_BELOW_MS && !stp_worker.batch_held)
		stp_worker.batch_ids = Min(last * 2, max_ids);
	else if (ms > 2 * STP_GROW_BELOW_MS)
		stp_worker.batch_ids = Max(last / 2, def->batch_size);
	stp_worker.batch_grew = stp_worker.batch_ids > last;
	stp_worker.batch_density = density;
}

/*
 * Run one batch if there is one.  Returns whether it did work; sets *stop
 * when the job was stopped or dropped under the worker.
 */
bool
stp_worker_step(bool *stop)
{
	int64		lo,
				hi,
				upto;
	int64		rows = 0;
	int64		groups = 0;
	TimestampTz started;
	ListCell   *lc;
	Datum		values[4];
	bool		isnull;
	int			ret;
	int			nestlevel;
	Oid			busy = InvalidOid;
	MemoryContext caller_ctx = CurrentMemoryContext;

	/* stp_alter_job changed the job: load it again. */
	if (stp_worker.slot->reload_requested)
	{
		stp_worker.slot->reload_requested = false;
		forget_job();
		return false;
	}
	if (cut_check && cut_known && stp_worker.offset >= cut_at)
	{
		try_finish_resize();
		return false;
	}

	/* A slot job decodes its source's changes instead (slot.c). */
	if (stp_worker.def->slot_source && !stp_worker.def->restored)
		return stp_slot_step(stop);

	started = GetCurrentTimestamp();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	nestlevel = stp_pin_worker_settings();
	SPI_connect();

	if (stp_worker.def->restored)
	{
		bool		complete;

		/* A job from a restore runs once the restore is complete. */
		pgstat_report_activity(STATE_RUNNING, "stp: checking a restored job");
		PushActiveSnapshot(GetTransactionSnapshot());
		complete = stp_restore_complete(stp_worker.def, stp_worker.offset, stp_worker.slot);
		PopActiveSnapshot();
		if (!complete)
		{
			stp_set_slot_state(STP_WS_RESTORED);
			SPI_finish();
			AtEOXact_GUC(true, nestlevel);
			CommitTransactionCommand();
			pgstat_report_activity(STATE_IDLE, NULL);
			return false;
		}
		stp_worker.def->restored = false;
		ereport(LOG,
				(errmsg("stp job \"%s\" partition %d: its restore is complete, the job runs",
						stp_worker.def->job_name, stp_worker.args.partition)));
	}

	/* A restored slot job's first step, once its restore is complete. */
	if (stp_worker.def->slot_source)
	{
		SPI_finish();
		AtEOXact_GUC(true, nestlevel);
		CommitTransactionCommand();
		MemoryContextSwitchTo(caller_ctx);
		return stp_slot_step(stop);
	}

	next_batch_range(&lo, &hi, &upto);
	if (upto <= stp_worker.offset)
	{
		bool		is_called;
		int64		last;

		pgstat_report_activity(STATE_RUNNING, "stp: reading the sequence");
		last = stp_sequence_last_value(stp_worker.def->sequence, &is_called);
		if (is_called && last > stp_worker.safe_upto)
		{
			wait_for_lockers(stp_worker.def->sequence);
			wait_for_lockers(stp_worker.def->source);
			foreach(lc, stp_leaves_to_wait(stp_worker.def, stp_worker.args.partition))
				wait_for_lockers(lfirst_oid(lc));
			stp_worker.safe_upto = last;
		}
		next_batch_range(&lo, &hi, &upto);
	}

	if (upto <= stp_worker.offset)
	{
		/* Caught up: still check the tables, so that a change shows now. */
		(void) guard_tables(false, NULL);
		stp_worker.slot->caught_up_at = GetCurrentTimestamp();
		SPI_finish();
		AtEOXact_GUC(true, nestlevel);
		CommitTransactionCommand();
		MemoryContextSwitchTo(caller_ctx);
		pgstat_report_activity(STATE_IDLE, NULL);
		return false;
	}

	stp_set_slot_state(STP_WS_RUNNING);

	/* Taken after the wait, so that it sees every settled writer. */
	PushActiveSnapshot(GetTransactionSnapshot());

	values[0] = Int32GetDatum(stp_worker.args.job_id);
	values[1] = Int32GetDatum(stp_worker.args.partition);
	values[2] = Int64GetDatum(stp_worker.offset);
	ret = stp_catalog_exec_plan(stp_worker.lock_plan, values);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not lock the partition's progress: %s", SPI_result_code_string(ret));
	if (SPI_processed != 1)
	{
		int32		now = job_partitions_now();

		if (now > 0 && now != stp_worker.def->partitions)
		{
			/* A resize replaced the progress rows: load the job again. */
			PopActiveSnapshot();
			SPI_finish();
			AbortCurrentTransaction();
			MemoryContextSwitchTo(caller_ctx);
			forget_job();
			return false;
		}
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
						stp_worker.args.job_id, stp_worker.args.partition)));
	}
	else
	{
		bool		no_cut;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &no_cut);
		int32		now = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 2, &isnull));

		/* The progress row was locked: its cut is the one that holds. */
		cut_known = !no_cut;
		if (cut_known)
			cut_at = DatumGetInt64(d);
		if (now != stp_worker.def->partitions)
		{
			/* The job was resized since it was loaded: load it again. */
			PopActiveSnapshot();
			SPI_finish();
			AbortCurrentTransaction();
			MemoryContextSwitchTo(caller_ctx);
			forget_job();
			return false;
		}
		/* A job with a pending resize owns groups, so upto is hi. */
		if (cut_known && hi > cut_at)
			hi = upto = cut_at;
		if (hi <= stp_worker.offset)
		{
			/* At the cut of a pending resize: nothing to read until it is done. */
			PopActiveSnapshot();
			SPI_finish();
			AbortCurrentTransaction();
			MemoryContextSwitchTo(caller_ctx);
			stp_set_slot_state(STP_WS_IDLE);
			try_finish_resize();
			return false;
		}
	}

	/*
	 * Only now, holding the progress row, lock and check the tables: a
	 * stp_drop_job that holds the job's rows and waits to drop the result
	 * table then never waits for this worker while it waits for them.  A
	 * table lock that is not free at once is waited for without the row
	 * (guard_tables), and the step starts again.
	 */
	if (!guard_tables(true, &busy))
	{
		PopActiveSnapshot();
		SPI_finish();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(caller_ctx);
		stp_wait_for_table(busy);
		return true;
	}

	/*
	 * In row mode the range may hold nothing of this partition's own, and
	 * the progress alone moves over the other partitions' ranges.
	 */
	if (hi > lo)
	{
		pgstat_report_activity(STATE_RUNNING, "stp: batch");
		values[0] = Int64GetDatum(lo);
		values[1] = Int64GetDatum(hi);
		ret = SPI_execute_plan(stp_worker.batch_plan, values, NULL, false, 0);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "batch statement failed: %s", SPI_result_code_string(ret));
		rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
		groups = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 2, &isnull));

		/*
		 * The distinct counts, after the batch made their groups.  Their
		 * statement joins the batch's pairs, sorted for the distinct
		 * table's index, to its few groups: a hash join keeps the pairs'
		 * order, where a merge join would sort them all again and a
		 * nested loop would compare every pair with every group (its
		 * plan is made at its first run, with these settings; the
		 * statement has no other join).  The chunk layout's statement
		 * (sqlgen.c) has no nested loop either.
		 */
		if (stp_worker.distinct_plans != NIL)
		{
			int			nest = NewGUCNestLevel();

			(void) set_config_option("enable_mergejoin", "off", PGC_USERSET,
									 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
			(void) set_config_option("enable_nestloop", "off", PGC_USERSET,
									 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
			foreach(lc, stp_worker.distinct_plans)
			{
				ret = SPI_execute_plan(lfirst(lc), values, NULL, false, 0);
				if (ret != SPI_OK_INSERT)
					elog(ERROR, "distinct count statement failed: %s",
						 SPI_result_code_string(ret));
			}
			AtEOXact_GUC(true, nest);
		}
	}

	/*
	 * The batch holds its locks on both tables until it commits, so no
	 * ALTER TABLE can commit between the batch and this check: the check
	 * sees the catalog state that the batch's plan was made with.
	 */
	if (stp_worker.recheck)
		check_job_relations();

	values[0] = Int32GetDatum(stp_worker.args.job_id);
	values[1] = Int32GetDatum(stp_worker.args.partition);
	values[2] = Int64GetDatum(upto);
	values[3] = Int64GetDatum(rows);
	ret = stp_catalog_exec_plan(stp_worker.progress_plan, values);
	if (ret != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "progress update failed: %s", SPI_result_code_string(ret));

	PopActiveSnapshot();
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	pgstat_report_activity(STATE_IDLE, NULL);

	{
		long		ms = TimestampDifferenceMilliseconds(started, GetCurrentTimestamp());

		elog(DEBUG1, "stp job %d partition %d: ids (" INT64_FORMAT ", " INT64_FORMAT "], "
			 INT64_FORMAT " rows, " INT64_FORMAT " groups in %ld ms",
			 stp_worker.args.job_id, stp_worker.args.partition, lo, hi, rows, groups, ms);
		adapt_batch_size(hi, ms, rows, groups);
	}
	stp_worker.offset = upto;
	stp_worker.rows_processed += rows;
	stp_count_rows(stp_worker.slot, rows);
	if (cut_known && hi >= cut_at)
		try_finish_resize();
	return true;
}
