/*-------------------------------------------------------------------------
 *
 * status.c
 *		What stp.job_status shows beyond the catalog: live worker pids and
 *		states, and how far the source's sequence has gone.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "stp.h"

PG_FUNCTION_INFO_V1(stp_worker_slots);
PG_FUNCTION_INFO_V1(stp_sequence_last_value_sql);
PG_FUNCTION_INFO_V1(stp_worker_activity);

/*
 * How stp.job_status spells a live worker's state.
 */
static const char *
state_name(StpWorkerState state)
{
	switch (state)
	{
		case STP_WS_STARTING:
			return "starting";
		case STP_WS_RUNNING:
			return "running";
		case STP_WS_IDLE:
			return "idle";
		case STP_WS_RETRYING:
			return "retrying";
		case STP_WS_BLOCKED:
			return "blocked";
		case STP_WS_RESTORED:
			return "restored";
	}
	return "unknown";
}

/*
 * What a restored job's partition waits for, in words.
 */
static char *
restore_note(StpSlot *slot)
{
	switch (slot->restore_wait)
	{
		case STP_RW_NONE:
			break;
		case STP_RW_KEY_INDEX:
			return pstrdup("restored from a dump: waiting for the restore to create the result table's unique index on the group columns");
		case STP_RW_SEQUENCE:
			return psprintf("restored from a dump: waiting for the restore to set the source's sequence, which is at " INT64_FORMAT
							", below the " INT64_FORMAT " the partition has read up to; if the restore is done, set it with setval()",
							slot->restore_have, slot->restore_need);
		case STP_RW_RESULT_ROWS:
			return pstrdup("restored from a dump: the result table is empty while the job has counted rows; waiting for the restore of its data");
		case STP_RW_SOURCE_ROWS:
			return pstrdup("restored from a dump: the source table is empty while the job has counted rows; waiting for the restore of its data");
	}
	return pstrdup("restored from a dump: checking that the restore is complete");
}

/*
 * Count rows a worker committed, in its slot's per-bucket counters, for
 * the rows per second of stp.job_status.  Only the slot's worker writes
 * them; readers take a hint.
 */
void
stp_count_rows(StpSlot *slot, int64 rows)
{
	int64		bucket = GetCurrentTimestamp() / (STP_RATE_BUCKET_SECS * USECS_PER_SEC);
	int			i = (int) (bucket % STP_RATE_BUCKETS);

	if (slot->rate_bucket[i] != bucket)
	{
		slot->rate_rows[i] = 0;
		slot->rate_bucket[i] = bucket;
	}
	slot->rate_rows[i] += rows;
}

/*
 * Has the slot's live worker waited long for a writer's transaction to
 * end?  Writers that commit at once keep a worker waiting for moments all
 * the time; only a long wait is worth showing.  The caller holds the
 * registry lock.
 */
static bool
slot_blocked(StpSlot *slot)
{
	return slot->pid > 0 && slot->blocker_pid > 0 &&
		TimestampDifferenceExceeds(slot->blocked_since, GetCurrentTimestamp(),
								   STP_BLOCKED_AFTER_MS);
}

/*
 * stp.worker_activity() gives, for every partition of this database that
 * had a worker since the server started: the rows committed in the last
 * minute, when its worker last had nothing to do, and the pid of the
 * transaction it waits for while blocked.
 */
Datum
stp_worker_activity(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		now_bucket = GetCurrentTimestamp() / (STP_RATE_BUCKET_SECS * USECS_PER_SEC);

	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(stp_shared->lock, LW_SHARED);
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];
		Datum		values[5];
		bool		nulls[5] = {false, false, false, true, true};
		int64		rows = 0;

		if (!slot->in_use || slot->dboid != MyDatabaseId)
			continue;
		/* The current bucket is partly filled: count 60 s of whole ones and it. */
		for (int b = 0; b < STP_RATE_BUCKETS; b++)
		{
			if (slot->rate_bucket[b] > now_bucket - STP_RATE_BUCKETS &&
				slot->rate_bucket[b] <= now_bucket)
				rows += slot->rate_rows[b];
		}
		values[0] = Int32GetDatum(slot->job_id);
		values[1] = Int32GetDatum(slot->partition);
		values[2] = Int64GetDatum(rows);
		if (slot->caught_up_at != 0)
		{
			values[3] = TimestampTzGetDatum(slot->caught_up_at);
			nulls[3] = false;
		}
		if (slot_blocked(slot))
		{
			values[4] = Int32GetDatum((int32) slot->blocker_pid);
			nulls[4] = false;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(stp_shared->lock);
	return (Datum) 0;
}

/*
 * stp.worker_slots() lists the partitions of this database that have a
 * worker running or starting, or that wait for a free worker slot, with
 * the reason.
 */
Datum
stp_worker_slots(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(stp_shared->lock, LW_SHARED);
	for (int i = 0; i < STP_MAX_SLOTS; i++)
	{
		StpSlot    *slot = &stp_shared->slots[i];
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, true};

		if (!slot->in_use || slot->dboid != MyDatabaseId ||
			(slot->pid == 0 && !slot->no_worker_slot))
			continue;
		values[0] = Int32GetDatum(slot->job_id);
		values[1] = Int32GetDatum(slot->partition);
		if (slot->pid > 0)
			values[2] = Int32GetDatum(slot->pid);
		else
			nulls[2] = true;
		if (slot->pid > 0)
		{
			bool		blocked = slot_blocked(slot);

			values[3] = CStringGetTextDatum(state_name(blocked ? STP_WS_BLOCKED : slot->state));
			if (blocked)
			{
				char	   *relname = get_rel_name(slot->blocker_relid);

				values[4] = CStringGetTextDatum(psprintf("waiting for the transaction of pid %d to end: it holds a lock on %s, and may have drawn an id the job must not skip",
														 (int) slot->blocker_pid,
														 relname ? relname : "the job's source"));
				nulls[4] = false;
			}
			else if (slot->state == STP_WS_RESTORED)
			{
				values[4] = CStringGetTextDatum(restore_note(slot));
				nulls[4] = false;
			}
		}
		else if (slot->pid < 0)
			values[3] = CStringGetTextDatum("starting");
		else
		{
			values[3] = CStringGetTextDatum("waiting");
			values[4] = CStringGetTextDatum("waiting for a free background worker slot; raise max_worker_processes");
			nulls[4] = false;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(stp_shared->lock);
	return (Datum) 0;
}

/*
 * stp.sequence_last_value(seq) is the last value the sequence handed out,
 * or NULL if none.  Anyone may read it for a job's sequence, for the
 * rows_behind of stp.job_status; other sequences are not stp's to show.
 */
Datum
stp_sequence_last_value_sql(PG_FUNCTION_ARGS)
{
	Oid			seqoid = PG_GETARG_OID(0);
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(seqoid)};
	bool		is_called;
	bool		is_job_sequence;
	int64		last;

	SPI_connect();
	if (SPI_execute_with_args("SELECT 1 FROM stp.jobs WHERE sequence OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read stp.jobs");
	is_job_sequence = SPI_processed > 0;
	SPI_finish();
	if (!is_job_sequence)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("\"%s\" is not the sequence of an stp job",
						get_rel_name(seqoid) ? get_rel_name(seqoid) : "?")));

	/* A job whose source was dropped shows as failed, not as an error. */
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(seqoid)))
		PG_RETURN_NULL();
	last = stp_sequence_last_value(seqoid, &is_called);

	if (!is_called)
		PG_RETURN_NULL();
	PG_RETURN_INT64(last);
}
