/*-------------------------------------------------------------------------
 *
 * resize.c
 *		stp_alter_job: change a running job's partition count, batch size
 *		or poll interval.
 *
 * A partition owns groups by xxhash(key) mod N, or owns leaves i with
 * i mod N = p, so changing N changes who owns what.  A resize therefore
 * goes through a common cut, recorded in the catalog so that it survives
 * any crash:
 *
 *	1. stp_alter_job locks the job's partition rows (waiting for batches
 *	   in flight), takes the cut C = the highest progress of any
 *	   partition, and records stop_at = C on every partition row and
 *	   resize_to = M on the job.  Nothing else changes yet.
 *	2. Each old partition processes up to C, and no further: a batch
 *	   reads stop_at from its locked progress row and ends there.
 *	3. Whoever sees every partition at C first (stp_alter_job itself, or
 *	   the worker whose batch reached C, or any worker that finds itself
 *	   at C) replaces, in one transaction, the N progress rows by M rows
 *	   at C, sets the job's partition count to M and clears resize_to.
 *	   The new partitions start from C.
 *
 * Every row below C was read by exactly the old partition that owned it,
 * and every row above C is read by exactly the new partition that owns
 * it.  A crash before step 3 commits leaves the pending cut in the
 * catalog, and the restarted workers go on towards it; a crash after it
 * leaves the new partitions.  A worker that still runs with the old
 * partition count is fenced: its batch locks its progress row, which step
 * 3 deleted, or it finds the job's partition count changed, and it
 * reloads the job instead of reading.  Only this job pauses, and only
 * until its slowest partition has reached the cut.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "stp.h"

PG_FUNCTION_INFO_V1(stp_alter_job);

#define STP_MAX_BATCH_SIZE		100000000

/*
 * If every partition of the job has reached the cut of its pending resize,
 * carry the resize out (step 3 above) and return true.  The caller is
 * connected to SPI, in a transaction that holds no lock on the job's
 * progress rows (so that the lock order is always the job's row, then its
 * progress rows, as in stp_alter_job).  The workers are told to reload the
 * job, and the new partitions' workers start, once the transaction commits.
 */
bool
stp_finish_resize(int32 job_id)
{
	Oid			types[4] = {INT4OID, INT4OID, INT4OID, INT8OID};
	Datum		values[4];
	bool		isnull;
	int32		new_parts;
	Oid			owner;
	int64		cut = 0;
	int64		rows[STP_MAX_PARTITIONS];
	Datum		elems[STP_MAX_PARTITIONS];
	int			ret;

	values[0] = Int32GetDatum(job_id);
	ret = stp_catalog_exec("SELECT resize_to, partitions, owner::pg_catalog.oid FROM stp.jobs "
						   "WHERE job_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
						   1, types, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		return false;
	(void) SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;
	new_parts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));

	/* Every partition at its cut, holding their rows against batches. */
	ret = stp_catalog_exec("SELECT processed_upto, stop_at FROM stp.partitions "
						   "WHERE job_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
						   1, types, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read the job's progress");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		int64		upto = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull));
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);

		if (isnull || DatumGetInt64(d) != upto)
			return false;
		cut = upto;
	}

	/*
	 * The old progress rows go, so that a batch of an old worker that waits
	 * for one of them finds none.  The kept partitions keep their counts of
	 * rows, and those of the removed ones go to partition 0, so the job's
	 * total stays.
	 */
	ret = stp_catalog_exec("DELETE FROM stp.partitions WHERE job_id OPERATOR(pg_catalog.=) $1 "
						   "RETURNING partition, rows_processed",
						   1, types, values, NULL, false, 0);
	if (ret != SPI_OK_DELETE_RETURNING)
		elog(ERROR, "could not remove the job's progress rows");
	memset(rows, 0, sizeof(rows));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		int32		p = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 1, &isnull));
		int64		n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc, 2, &isnull));

		if (p >= 0 && p < new_parts)
			rows[p] += n;
		else
			rows[0] += n;
	}
	for (int p = 0; p < new_parts; p++)
		elems[p] = Int64GetDatum(rows[p]);
	types[2] = INT8ARRAYOID;
	values[1] = Int32GetDatum(new_parts);
	values[2] = PointerGetDatum(construct_array(elems, new_parts, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[3] = Int64GetDatum(cut);
	ret = stp_catalog_exec("INSERT INTO stp.partitions (job_id, partition, processed_upto, rows_processed) "
						   "SELECT $1, g, $4, $3[g OPERATOR(pg_catalog.+) 1] "
						   "FROM pg_catalog.generate_series(0, $2 OPERATOR(pg_catalog.-) 1) g",
						   4, types, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT || SPI_processed != new_parts)
		elog(ERROR, "could not insert the job's new progress rows");
	ret = stp_catalog_exec("UPDATE stp.jobs SET partitions = $2, resize_to = NULL "
						   "WHERE job_id OPERATOR(pg_catalog.=) $1",
						   2, types, values, NULL, false, 0);
	if (ret != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "could not record the job's new partition count");
	ereport(LOG,
			(errmsg("stp job %d now has %d partitions, from id " INT64_FORMAT " on",
					job_id, new_parts, cut)));
	stp_reload_job_workers_at_commit(job_id);
	stp_start_job_at_commit(job_id, owner, new_parts);
	return true;
}

/*
 * Check a new partition count against the job: at least 1, at most
 * STP_MAX_PARTITIONS, one for a job without GROUP BY, and at most the
 * number of leaves of a source read leaf by leaf.  The messages are
 * stp_start_job's.
 */
static void
check_new_partitions(StpJobDef *def, int32 partitions)
{
	if (partitions < 1 || partitions > STP_MAX_PARTITIONS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions must be between 1 and %d", STP_MAX_PARTITIONS),
				 errhint("Each partition is a background worker; more partitions than CPU cores rarely help.")));
	if (partitions > 1 && list_length(def->key_names) == 1 &&
		strcmp(linitial(def->key_names), "_stp_all") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job's query without GROUP BY cannot have more than one partition"),
				 errdetail("The query has one group, which one partition computes."),
				 errhint("Use partitions => 1.")));
	if (def->rows_mode && partitions != def->partitions)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the partition count of job \"%s\" cannot change: it runs in strategy \"rows\"", def->job_name),
				 errdetail("In row mode each partition owns every N-th id range, and its progress is counted in those ranges."),
				 errhint("Stop the job and start a new one with the new partition count and start_from => 'now' after the old one's progress, or drop it and start it again.")));
	if (def->slot_source && partitions != def->partitions)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the partition count of job \"%s\" cannot change: its source is 'slot'", def->job_name),
				 errdetail("Each partition of a slot job owns a replication slot and the groups it built from it."),
				 errhint("Drop the job and start it again with the new partition count; it builds its groups from the source.")));
	stp_check_leaves_partitions(def, partitions);
}

/*
 * Record a resize to new_parts partitions (step 1 above), or change the
 * target of one that is pending, and carry it out at once if every
 * partition is at the cut already.  The job's row is locked.
 */
static void
request_resize(StpJobDef *def, int32 new_parts)
{
	Oid			types[2] = {INT4OID, INT4OID};
	Datum		values[2];
	bool		isnull;
	bool		pending = false;
	bool		failed = false;
	int			ret;

	values[0] = Int32GetDatum(def->job_id);
	values[1] = Int32GetDatum(new_parts);

	/* Batches in flight commit first; a failed partition never reaches a cut. */
	ret = stp_catalog_exec("SELECT failed, stop_at IS NOT NULL FROM stp.partitions "
						   "WHERE job_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
						   1, types, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not lock the job's progress");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		failed |= DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		pending |= DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
	}
	if (!pending && new_parts == def->partitions)
		return;
	if (failed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job \"%s\" has a failed partition", def->job_name),
				 errdetail("A resize waits until every partition has reached a common cut, which a failed partition never does."),
				 errhint("Fix the cause shown in stp.job_status, run stp_resume_job(), then resize the job.")));

	if (pending && new_parts == def->partitions)
	{
		/* Back to the count the workers run with: no partition passed the cut. */
		stp_catalog_exec("UPDATE stp.partitions SET stop_at = NULL WHERE job_id OPERATOR(pg_catalog.=) $1",
						 1, types, values, NULL, false, 0);
		stp_catalog_exec("UPDATE stp.jobs SET resize_to = NULL WHERE job_id OPERATOR(pg_catalog.=) $1",
						 1, types, values, NULL, false, 0);
		stp_reload_job_workers_at_commit(def->job_id);
		return;
	}
	if (!pending)
		stp_catalog_exec("UPDATE stp.partitions SET stop_at = "
						 "(SELECT pg_catalog.max(processed_upto) FROM stp.partitions "
						 "WHERE job_id OPERATOR(pg_catalog.=) $1) "
						 "WHERE job_id OPERATOR(pg_catalog.=) $1",
						 1, types, values, NULL, false, 0);
	stp_catalog_exec("UPDATE stp.jobs SET resize_to = $2 WHERE job_id OPERATOR(pg_catalog.=) $1",
					 2, types, values, NULL, false, 0);
	if (!stp_finish_resize(def->job_id))
		stp_reload_job_workers_at_commit(def->job_id);
}

/*
 * stp_alter_job(job_name, partitions, batch_size, poll_interval): change
 * what is not NULL.  A new partition count takes effect at a common cut
 * (see the file's header); batch size and poll interval at each worker's
 * next batch.  Only the job's owner may alter it.
 */
Datum
stp_alter_job(PG_FUNCTION_ARGS)
{
	char	   *job_name;
	StpJobRef  *job;
	StpJobDef  *def;
	Oid			types[3] = {INT4OID, INT8OID, INTERVALOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	stp_check_not_null(fcinfo, 0, "job_name");
	job_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PG_ARGISNULL(2) &&
		(PG_GETARG_INT32(2) < 1 || PG_GETARG_INT32(2) > STP_MAX_BATCH_SIZE))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and %d", STP_MAX_BATCH_SIZE),
				 errhint("A batch is this many order-column ids, read and merged in one transaction.")));
	if (!PG_ARGISNULL(3))
	{
		int64		poll_ms = stp_interval_ms(PG_GETARG_INTERVAL_P(3), "poll_interval");

		if (poll_ms < 1 || poll_ms > 3600 * 1000)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("poll_interval must be between 1 millisecond and 1 hour"),
					 errhint("Use an interval such as '50 ms'.")));
	}
	if (!stp_catalog_has_column("jobs", "resize_to"))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the stp extension in this database is older than its library"),
				 errdetail("Changing a job needs version 1.2 of the extension."),
				 errhint("Run ALTER EXTENSION stp UPDATE.")));

	SPI_connect();
	job = stp_lookup_job(job_name, true);
	def = stp_load_job(job->job_id, NULL, CurrentMemoryContext);
	if (!PG_ARGISNULL(1))
		check_new_partitions(def, PG_GETARG_INT32(1));

	values[0] = Int32GetDatum(job->job_id);
	values[1] = PG_ARGISNULL(2) ? (Datum) 0 : Int64GetDatum((int64) PG_GETARG_INT32(2));
	values[2] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[1] = PG_ARGISNULL(2) ? 'n' : ' ';
	nulls[2] = PG_ARGISNULL(3) ? 'n' : ' ';
	if (!PG_ARGISNULL(2) || !PG_ARGISNULL(3))
	{
		stp_catalog_exec("UPDATE stp.jobs SET batch_size = COALESCE($2, batch_size), "
						 "poll_interval = COALESCE($3, poll_interval) "
						 "WHERE job_id OPERATOR(pg_catalog.=) $1",
						 3, types, values, nulls, false, 0);
		stp_reload_job_workers_at_commit(job->job_id);
	}
	if (!PG_ARGISNULL(1))
		request_resize(def, PG_GETARG_INT32(1));
	SPI_finish();
	PG_RETURN_VOID();
}
