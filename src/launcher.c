/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		The launcher and the per-database starter.
 *
 * The launcher is a static background worker.  It connects to no
 * database; it lists the databases from the shared catalog and, for each
 * one that may hold jobs, starts a short-lived starter worker in it.  The
 * starter looks for the stp extension, then starts a partition worker for
 * every partition of every running job that has none.  This runs after
 * server start and crash recovery, whenever a session creates or resumes
 * a job, and every stp.launcher_naptime as a safety net.
 *
 * The launcher never carries data.  A partition that keeps dying before it
 * gets going is started again with exponential backoff.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "stp.h"

/* A registered worker that has not claimed its slot after this is lost. */
#define STP_START_TIMEOUT_MS	10000

/*
 * Register the launcher while preloading.  It restarts after a crash, so
 * that jobs come back with the cluster.
 */
void
stp_register_launcher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 1;
	strlcpy(bgw.bgw_library_name, "stp", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "stp_launcher_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "stp launcher", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "stp launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

/*
 * At exit, stop advertising the launcher's latch.
 */
static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	if (stp_shared->launcher_pid == MyProcPid)
	{
		stp_shared->launcher_pid = 0;
		stp_shared->launcher_latch = NULL;
	}
	LWLockRelease(stp_shared->lock);
}

/*
 * The databases a job could run in: those that accept connections.  The
 * list is built in the caller's memory context, since the transaction's
 * context is gone once the catalog scan commits.
 */
static List *
database_list(void)
{
	List	   *dbs = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext caller_ctx = CurrentMemoryContext;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		MemoryContext old_ctx;

		if (!db->datallowconn || db->datistemplate || db->datconnlimit == -2)
			continue;
		old_ctx = MemoryContextSwitchTo(caller_ctx);
		dbs = lappend_oid(dbs, db->oid);
		MemoryContextSwitchTo(old_ctx);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	return dbs;
}

static void retry_scan_later(Oid dboid);

/*
 * Start a starter worker in a database.  Returns false if no background
 * worker slot is free, so that the scan is tried again later.
 */
static bool
start_starter(Oid dboid)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, "stp", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "stp_starter_main", BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "stp starter for database %u", dboid);
	strlcpy(bgw.bgw_type, "stp starter", BGW_MAXLEN);
	bgw.bgw_main_arg = ObjectIdGetDatum(dboid);
	bgw.bgw_notify_pid = 0;
	return RegisterDynamicBackgroundWorker(&bgw, NULL);
}

/*
 * Decide which databases to scan in this round and start their starters.
 * full: scan every database, not only those known to have stp.
 */
static void
launcher_round(bool full)
{
	List	   *all = full ? database_list() : NIL;
	List	   *todo = NIL;
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	foreach(lc, all)
	{
		Oid			dboid = lfirst_oid(lc);
		int			i,
					free_entry = -1;

		for (i = 0; i < STP_MAX_DATABASES; i++)
		{
			if (stp_shared->dbs[i].dboid == dboid)
				break;
			if (free_entry < 0 && stp_shared->dbs[i].dboid == InvalidOid)
				free_entry = i;
		}
		if (i == STP_MAX_DATABASES && free_entry >= 0)
		{
			stp_shared->dbs[free_entry].dboid = dboid;
			stp_shared->dbs[free_entry].has_stp = true;	/* unknown yet */
		}
	}
	for (int i = 0; i < STP_MAX_DATABASES; i++)
	{
		StpDatabase *db = &stp_shared->dbs[i];

		if (db->dboid == InvalidOid)
			continue;
		if (full && !list_member_oid(all, db->dboid))
		{
			/* dropped */
			memset(db, 0, sizeof(StpDatabase));
			continue;
		}
		if (db->skip_until > now)
			continue;
		if (db->scan_requested || (full && db->has_stp))
		{
			todo = lappend_oid(todo, db->dboid);
			db->scan_requested = false;
		}
	}
	LWLockRelease(stp_shared->lock);

	foreach(lc, todo)
	{
		if (!start_starter(lfirst_oid(lc)))
		{
			ereport(LOG,
					(errmsg("stp launcher could not start a worker to scan database %u",
							lfirst_oid(lc)),
					 errhint("Raise max_worker_processes.")));
			retry_scan_later(lfirst_oid(lc));
		}
	}
}

/*
 * Scan a database again in the next round, without waking the launcher
 * now: with no free worker slot, trying again at once would only spin.
 */
static void
retry_scan_later(Oid dboid)
{
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < STP_MAX_DATABASES; i++)
	{
		if (stp_shared->dbs[i].dboid == dboid)
			stp_shared->dbs[i].scan_requested = true;
	}
	LWLockRelease(stp_shared->lock);
}

/*
 * Start the partitions that found no free worker slot last time.  The
 * registry knows their database, job and owner, so no starter (which
 * would need a slot of its own) is involved.
 */
static void
start_waiting_partitions(void)
{
	StpSlot    *waiting = palloc(sizeof(StpSlot) * STP_MAX_SLOTS);
	int			n = 0;

	LWLockAcquire(stp_shared->lock, LW_SHARED);
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];

		if (slot->in_use && slot->pid == 0 && slot->no_worker_slot)
			waiting[n++] = *slot;
	}
	LWLockRelease(stp_shared->lock);

	for (int i = 0; i < n; i++)
		(void) stp_start_partition(waiting[i].dboid, waiting[i].owner,
								   waiting[i].job_id, waiting[i].partition);
	pfree(waiting);
}

/*
 * The launcher's loop: start the partitions that wait for a worker slot,
 * then scan the databases that asked for it, and all of them every
 * stp.launcher_naptime.
 */
void
stp_launcher_main(Datum main_arg)
{
	TimestampTz last_full = 0;
	MemoryContext round_ctx;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	stp_shared->launcher_pid = MyProcPid;
	stp_shared->launcher_latch = MyLatch;
	LWLockRelease(stp_shared->lock);
	before_shmem_exit(launcher_detach, (Datum) 0);

	/* What one round allocates is freed before the next. */
	round_ctx = AllocSetContextCreate(TopMemoryContext, "stp launcher round",
									  ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		bool		full = TimestampDifferenceExceeds(last_full, now,
													  stp_launcher_naptime);

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		MemoryContextSwitchTo(round_ctx);
		start_waiting_partitions();
		launcher_round(full);
		if (full)
			last_full = now;
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(round_ctx);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 stp_launcher_naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Remember whether a database has the extension, so that rounds skip the
 * databases without it.
 */
static void
set_has_stp(Oid dboid, bool has_stp)
{
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < STP_MAX_DATABASES; i++)
	{
		if (stp_shared->dbs[i].dboid == dboid)
			stp_shared->dbs[i].has_stp = has_stp;
	}
	LWLockRelease(stp_shared->lock);
}

/*
 * May a worker be started for this partition now?  Marks the slot as
 * starting if so.
 */
static bool
claim_start(Oid dboid, Oid owner, int32 job_id, int32 partition)
{
	StpSlot    *slot;
	TimestampTz now = GetCurrentTimestamp();
	bool		ok = false;

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	slot = stp_slot_get(dboid, job_id, partition);
	if (slot == NULL)
		ok = false;
	else if (slot->pid > 0)
		ok = false;
	else if (slot->pid < 0 &&
			 !TimestampDifferenceExceeds(slot->last_start, now, STP_START_TIMEOUT_MS))
		ok = false;
	else if (slot->restarts > 0 &&
			 !TimestampDifferenceExceeds(slot->last_start, now,
										 Min(1000 << Min(slot->restarts - 1, 6), 60000)))
		ok = false;
	else
	{
		slot->pid = -1;
		slot->owner = owner;
		slot->last_start = now;
		slot->restarts++;
		ok = true;
	}
	LWLockRelease(stp_shared->lock);
	return ok;
}

/*
 * Undo claim_start after the worker could not be registered, and remember
 * that the partition waits for a slot.  Returns whether it was already
 * known to wait.
 */
static bool
unclaim_start(Oid dboid, int32 job_id, int32 partition)
{
	StpSlot    *slot;
	bool		was_waiting = false;

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	slot = stp_slot_find(dboid, job_id, partition);
	if (slot && slot->pid == -1)
	{
		was_waiting = slot->no_worker_slot;
		slot->pid = 0;
		slot->restarts--;
		slot->no_worker_slot = true;
	}
	LWLockRelease(stp_shared->lock);
	return was_waiting;
}

/*
 * Start the worker of one partition unless it runs, is starting, or is
 * backing off.  Returns false only when no background worker slot was
 * free; the registry then remembers that the partition waits for one, for
 * stp.job_status and for the launcher's next round.
 */
bool
stp_start_partition(Oid dboid, Oid owner, int32 job_id, int32 partition)
{
	if (!claim_start(dboid, owner, job_id, partition))
		return true;
	if (stp_register_worker(dboid, owner, job_id, partition))
		return true;
	if (!unclaim_start(dboid, job_id, partition))
		ereport(LOG,
				(errmsg("stp could not start a worker for job %d partition %d: no free background worker slot",
						job_id, partition),
				 errhint("Raise max_worker_processes.")));
	return false;
}

/*
 * A worker connects as its job's owner, and dies before it can record
 * anything if the role was dropped or lost LOGIN.  So the starter fails
 * such jobs' partitions first, with the reason, instead of starting
 * workers that cannot connect.  A running worker keeps its connection.
 */
static void
fail_jobs_without_owner(void)
{
	int			ret;

	ret = SPI_execute("UPDATE stp.partitions p SET failed = true, last_error = "
					  "CASE WHEN r.oid IS NULL THEN 'the job''s owner, role with OID ' "
					  "OPERATOR(pg_catalog.||) j.owner::pg_catalog.oid::pg_catalog.text "
					  "OPERATOR(pg_catalog.||) ', no longer exists' "
					  "ELSE 'the job''s owner, role ' OPERATOR(pg_catalog.||) "
					  "pg_catalog.quote_ident(r.rolname) OPERATOR(pg_catalog.||) "
					  "', cannot log in, so no worker can connect as it' END "
					  "FROM stp.jobs j LEFT JOIN pg_catalog.pg_authid r "
					  "ON r.oid OPERATOR(pg_catalog.=) j.owner::pg_catalog.oid "
					  "WHERE p.job_id OPERATOR(pg_catalog.=) j.job_id "
					  "AND j.state OPERATOR(pg_catalog.=) 'running' AND NOT p.failed "
					  "AND (r.oid IS NULL OR NOT r.rolcanlogin)", false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "could not mark the jobs without an owner failed: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("stp: %d partitions failed because their job's owner was dropped or cannot log in",
						(int) SPI_processed)));
}

/*
 * The starter: start the missing partition workers of one database.
 */
void
stp_starter_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	int			ret;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "stp: looking for jobs to start");

	if (!OidIsValid(get_extension_oid("stp", true)))
	{
		/* Slots of a dropped extension's jobs whose workers still leave. */
		if (stp_drop_orphan_slots())
			retry_scan_later(dboid);
		set_has_stp(dboid, false);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		proc_exit(0);
	}
	set_has_stp(dboid, true);

	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);
	fail_jobs_without_owner();
	if (stp_drop_orphan_slots())
		retry_scan_later(dboid);
	ret = SPI_execute("SELECT j.job_id, j.owner::pg_catalog.oid, p.partition "
					  "FROM stp.jobs j JOIN stp.partitions p "
					  "ON p.job_id OPERATOR(pg_catalog.=) j.job_id "
					  "WHERE j.state OPERATOR(pg_catalog.=) 'running' AND NOT p.failed "
					  "ORDER BY j.job_id, p.partition", false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read stp.jobs: %s", SPI_result_code_string(ret));

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int32		job_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		Oid			owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		int32		partition = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));

		(void) stp_start_partition(dboid, owner, job_id, partition);
	}

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	proc_exit(0);
}
