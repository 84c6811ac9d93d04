/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		The shared registry of partition workers and databases.
 *
 * The registry lets any backend find a job's live workers (to signal them,
 * wake them or show their pid), lets a worker make sure it is the only one
 * for its partition, and lets the launcher know which databases to scan.
 * Progress itself is never kept here: it lives in stp.partitions and
 * commits with the results.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "stp.h"

StpShared  *stp_shared = NULL;

/* Work to do when the current transaction commits. */
static bool kick_launcher_at_commit = false;
static bool stop_db_workers_at_commit = false;
static int32 jobs_to_stop[STP_MAX_SLOTS];
static int	njobs_to_stop = 0;
static int32 jobs_to_reload[STP_MAX_SLOTS];
static int	njobs_to_reload = 0;

/* Jobs whose workers start when the transaction commits. */
typedef struct StpPendingStart
{
	int32		job_id;
	Oid			owner;
	int32		partitions;
} StpPendingStart;
static StpPendingStart jobs_to_start[STP_MAX_SLOTS];
static int	njobs_to_start = 0;

/*
 * Ask for the registry's shared memory and its LWLock (shmem_request_hook).
 */
void
stp_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(StpShared)));
	RequestNamedLWLockTranche("stp", 1);
}

/*
 * Create or attach to the registry (shmem_startup_hook).
 */
void
stp_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	stp_shared = ShmemInitStruct("stp", sizeof(StpShared), &found);
	if (!found)
	{
		memset(stp_shared, 0, sizeof(StpShared));
		stp_shared->lock = &(GetNamedLWLockTranche("stp"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Find the entry of a partition.  The caller holds the registry lock.
 */
StpSlot *
stp_slot_find(Oid dboid, int32 job_id, int32 partition)
{
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid &&
			slot->job_id == job_id && slot->partition == partition)
			return slot;
	}
	return NULL;
}

/*
 * Find or create the entry of a partition.  The caller holds the registry
 * lock exclusively.  When the registry is full, an entry without a worker
 * is reused; NULL means every entry has a live worker.
 */
StpSlot *
stp_slot_get(Oid dboid, int32 job_id, int32 partition)
{
	StpSlot    *slot = stp_slot_find(dboid, job_id, partition);
	StpSlot    *spare = NULL;

	if (slot)
		return slot;

	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *s = &stp_shared->slots[i];

		if (!s->in_use)
		{
			spare = s;
			break;
		}
		if (spare == NULL && s->pid == 0)
			spare = s;
	}
	if (spare == NULL)
		return NULL;

	memset(spare, 0, sizeof(StpSlot));
	spare->in_use = true;
	spare->dboid = dboid;
	spare->job_id = job_id;
	spare->partition = partition;
	return spare;
}

/*
 * Ask the launcher to scan a database for jobs to start.
 */
void
stp_request_scan(Oid dboid)
{
	int			free_entry = -1;
	Latch	   *launcher_latch;

	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < STP_MAX_DATABASES; i++)
	{
		if (stp_shared->dbs[i].dboid == dboid)
		{
			stp_shared->dbs[i].scan_requested = true;
			free_entry = -2;
			break;
		}
		if (free_entry == -1 && stp_shared->dbs[i].dboid == InvalidOid)
			free_entry = i;
	}
	if (free_entry >= 0)
	{
		stp_shared->dbs[free_entry].dboid = dboid;
		stp_shared->dbs[free_entry].scan_requested = true;
	}
	/* Read under the lock: a launcher that exits clears it. */
	launcher_latch = stp_shared->launcher_latch;
	LWLockRelease(stp_shared->lock);

	if (launcher_latch)
		SetLatch(launcher_latch);
}

/*
 * Send a signal to the live workers of one job, or of every job in the
 * database when job_id is -1.  Returns how many were signalled.
 */
int
stp_signal_job_workers(Oid dboid, int32 job_id, int signo)
{
	int			n = 0;

	LWLockAcquire(stp_shared->lock, LW_SHARED);
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid && slot->pid > 0 &&
			(job_id < 0 || slot->job_id == job_id))
		{
			kill(slot->pid, signo);
			n++;
		}
	}
	LWLockRelease(stp_shared->lock);
	return n;
}

/*
 * A database is being dropped: its workers leave, and the launcher keeps
 * away from it for a while so that DROP DATABASE finds it empty.
 */
void
stp_database_dropping(Oid dboid)
{
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < STP_MAX_DATABASES; i++)
	{
		if (stp_shared->dbs[i].dboid == dboid)
			stp_shared->dbs[i].skip_until =
				TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 30000);
	}
	LWLockRelease(stp_shared->lock);
	stp_signal_job_workers(dboid, -1, SIGTERM);
}

/*
 * Wait until no worker of the job is alive, or the timeout passes, sending
 * SIGTERM again every 100 ms.  A worker that the launcher started after
 * the first signal (it saw the job running, since the caller has not
 * committed) would otherwise wait for a lock that the caller holds, and
 * the caller for it, until the timeout.
 */
void
stp_wait_job_workers_exit(Oid dboid, int32 job_id, int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   timeout_ms);

	for (int round = 1;; round++)
	{
		bool		alive = false;

		if (round % 10 == 0)
			stp_signal_job_workers(dboid, job_id, SIGTERM);

		LWLockAcquire(stp_shared->lock, LW_SHARED);
		for (int i = 0; i < STP_MAX_SLOTS; i++)
		{
			StpSlot    *slot = &stp_shared->slots[i];

			if (slot->in_use && slot->dboid == dboid &&
				slot->job_id == job_id && slot->pid > 0)
				alive = true;
		}
		LWLockRelease(stp_shared->lock);

		if (!alive || GetCurrentTimestamp() >= deadline)
			return;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Wake a job's idle workers so that they look for new rows now.
 */
void
stp_wake_job_workers(Oid dboid, int32 job_id)
{
	LWLockAcquire(stp_shared->lock, LW_SHARED);
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid &&
			slot->job_id == job_id && slot->pid > 0 && slot->latch)
			SetLatch(slot->latch);
	}
	LWLockRelease(stp_shared->lock);
}

/*
 * Drop the registry entries of a job that no longer exists, so that a job
 * created later with the same id starts with no backoff.
 */
void
stp_forget_job(Oid dboid, int32 job_id)
{
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid &&
			slot->job_id == job_id && slot->pid == 0)
			slot->in_use = false;
	}
	LWLockRelease(stp_shared->lock);
}

/*
 * Start a job's workers right after the transaction commits, without
 * waiting for the launcher.  What cannot start then (no free slot) is left
 * to the launcher, which also says why the partition waits.
 */
void
stp_start_job_at_commit(int32 job_id, Oid owner, int32 partitions)
{
	if (njobs_to_start < STP_MAX_SLOTS)
	{
		jobs_to_start[njobs_to_start].job_id = job_id;
		jobs_to_start[njobs_to_start].owner = owner;
		jobs_to_start[njobs_to_start].partitions = partitions;
		njobs_to_start++;
	}
	kick_launcher_at_commit = true;
}

/*
 * Ask the launcher to scan this database when the transaction commits.
 */
void
stp_request_scan_at_commit(void)
{
	kick_launcher_at_commit = true;
}

/*
 * Signal every worker of this database when the transaction commits (DROP
 * EXTENSION).
 */
void
stp_stop_db_workers_at_commit(void)
{
	stop_db_workers_at_commit = true;
}

/*
 * Signal one job's workers when the transaction commits; if too many jobs
 * are listed, all of the database's workers are signalled, and the
 * launcher restarts those that should run.
 */
void
stp_stop_job_workers_at_commit(int32 job_id)
{
	if (njobs_to_stop < STP_MAX_SLOTS)
		jobs_to_stop[njobs_to_stop++] = job_id;
	else
		stop_db_workers_at_commit = true;
}

/*
 * Tell one job's workers, when the transaction commits, to load the job
 * again (stp_alter_job changed it), and wake them so that they do it now.
 */
void
stp_reload_job_workers_at_commit(int32 job_id)
{
	if (njobs_to_reload < STP_MAX_SLOTS)
		jobs_to_reload[njobs_to_reload++] = job_id;
}

/*
 * Set the reload flag of a job's workers and wake them.
 */
static void
reload_job_workers(Oid dboid, int32 job_id)
{
	LWLockAcquire(stp_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];

		if (slot->in_use && slot->dboid == dboid && slot->job_id == job_id)
		{
			slot->reload_requested = true;
			if (slot->pid > 0 && slot->latch)
				SetLatch(slot->latch);
		}
	}
	LWLockRelease(stp_shared->lock);
}

/*
 * Act on what the transaction asked for, once it has committed: the
 * launcher must only look for new or resumed jobs when they are visible.
 */
static void
stp_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			for (int i = 0; stp_shared && i < njobs_to_start; i++)
			{
				StpPendingStart *job = &jobs_to_start[i];

				for (int p = 0; p < job->partitions; p++)
					(void) stp_start_partition(MyDatabaseId, job->owner,
											   job->job_id, p);
			}
			if (stp_shared && kick_launcher_at_commit)
				stp_request_scan(MyDatabaseId);
			if (stp_shared && stop_db_workers_at_commit)
				stp_signal_job_workers(MyDatabaseId, -1, SIGTERM);
			for (int i = 0; stp_shared && i < njobs_to_stop; i++)
				stp_signal_job_workers(MyDatabaseId, jobs_to_stop[i], SIGTERM);
			for (int i = 0; stp_shared && i < njobs_to_reload; i++)
				reload_job_workers(MyDatabaseId, jobs_to_reload[i]);
			njobs_to_reload = 0;
			kick_launcher_at_commit = false;
			stop_db_workers_at_commit = false;
			njobs_to_stop = 0;
			njobs_to_start = 0;
			stp_forget_noted_relations();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			stp_forget_noted_relations();
			kick_launcher_at_commit = false;
			stop_db_workers_at_commit = false;
			njobs_to_stop = 0;
			njobs_to_start = 0;
			njobs_to_reload = 0;
			break;
		default:
			break;
	}
}

/*
 * Register the commit callback once per process, while preloading.
 */
void
stp_xact_callback_init(void)
{
	RegisterXactCallback(stp_xact_callback, NULL);
}
