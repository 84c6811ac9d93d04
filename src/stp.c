/*-------------------------------------------------------------------------
 *
 * stp.c
 *		Entry point of the stp extension: _PG_init, GUCs and hooks.
 *
 * stp must be loaded through shared_preload_libraries, because it reserves
 * shared memory for its worker registry and registers the launcher, a
 * static background worker.  Loading it any other way is an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "tcop/utility.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "stp.h"

PG_MODULE_MAGIC;

int			stp_launcher_naptime = 5000;
int			stp_max_retries = 5;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static object_access_hook_type prev_object_access_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

void		_PG_init(void);

/*
 * Request our shared memory and LWLock tranche, chaining the previous hook.
 */
static void
stp_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	stp_shmem_request();
}

/*
 * Attach to the registry, chaining the previous hook.
 */
static void
stp_shmem_startup_hook(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	stp_shmem_startup();
}

/*
 * Dropping the extension or the database must not leave partition workers
 * behind.  DROP EXTENSION stops the database's workers once it commits.
 * DROP DATABASE waits a few seconds for other sessions to leave before it
 * gives up, so the workers are told to leave right away; if the drop then
 * fails, the launcher starts them again.
 */
static void
stp_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				  int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access != OAT_DROP || stp_shared == NULL)
		return;

	if (classId == ExtensionRelationId &&
		objectId == get_extension_oid("stp", true))
		stp_stop_db_workers_at_commit();
	else if (classId == DatabaseRelationId)
		stp_database_dropping(objectId);
}

/*
 * TRUNCATE of a job's source or result table would leave the result table
 * silently wrong, so the jobs that read or write the table fail, with the
 * reason, in the truncating transaction.  Their workers leave at commit.
 */
static void
fail_jobs_of_truncated(TruncateStmt *stmt)
{
	ListCell   *lc;

	if (!IsTransactionState() || !OidIsValid(get_extension_oid("stp", true)))
		return;

	SPI_connect();
	foreach(lc, stmt->relations)
	{
		Oid			relid = RangeVarGetRelid(lfirst_node(RangeVar, lc), NoLock, true);
		Oid			types[2] = {OIDOID, TEXTOID};
		Datum		values[2];
		int			ret;

		if (!OidIsValid(relid))
			continue;
		values[0] = ObjectIdGetDatum(relid);
		values[1] = CStringGetTextDatum(psprintf("table %s was truncated; the result table no longer matches the job's query",
												 get_rel_name(relid)));
		ret = stp_catalog_exec("UPDATE stp.partitions p SET failed = true, last_error = $2 "
									"FROM stp.jobs j WHERE j.job_id OPERATOR(pg_catalog.=) p.job_id "
									"AND (j.source OPERATOR(pg_catalog.=) $1::pg_catalog.regclass "
									"OR j.result_table OPERATOR(pg_catalog.=) $1::pg_catalog.regclass) "
									"RETURNING p.job_id",
									2, types, values, NULL, false, 0);
		if (ret != SPI_OK_UPDATE_RETURNING)
			elog(ERROR, "could not mark the jobs of truncated table %u failed", relid);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			stp_stop_job_workers_at_commit(DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
																	   SPI_tuptable->tupdesc,
																	   1, &isnull)));
		}
	}
	SPI_finish();
}

/*
 * ProcessUtility_hook: watch TRUNCATE, then run the statement as usual.
 */
static void
stp_process_utility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	if (IsA(pstmt->utilityStmt, TruncateStmt) && stp_shared != NULL)
		fail_jobs_of_truncated((TruncateStmt *) pstmt->utilityStmt);

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stp must be loaded via shared_preload_libraries"),
				 errhint("Add stp to shared_preload_libraries in postgresql.conf and restart the server.")));

	DefineCustomIntVariable("stp.launcher_naptime",
							"Time between the launcher's checks that every job's workers run.",
							NULL,
							&stp_launcher_naptime,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("stp.max_retries",
							"Consecutive failed attempts after which a partition is marked failed.",
							NULL,
							&stp_max_retries,
							5, 0, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("stp");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stp_shmem_request_hook;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stp_shmem_startup_hook;
	prev_object_access_hook = object_access_hook;
	object_access_hook = stp_object_access;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = stp_process_utility;

	stp_xact_callback_init();
	stp_register_launcher();
}
