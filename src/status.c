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
	}
	return "unknown";
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
			/*
			 * Writers that commit at once keep a worker waiting for
			 * moments all the time; only a long wait is worth showing.
			 */
			bool		blocked = slot->blocker_pid > 0 &&
				TimestampDifferenceExceeds(slot->blocked_since, GetCurrentTimestamp(),
										   STP_BLOCKED_AFTER_MS);

			values[3] = CStringGetTextDatum(state_name(blocked ? STP_WS_BLOCKED : slot->state));
			if (blocked)
			{
				char	   *relname = get_rel_name(slot->blocker_relid);

				values[4] = CStringGetTextDatum(psprintf("waiting for the transaction of pid %d to end: it holds a lock on %s, and may have drawn an id the job must not skip",
														 (int) slot->blocker_pid,
														 relname ? relname : "the job's source"));
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
