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
#include "catalog/partition.h"
#include "catalog/pg_database.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "tcop/utility.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "optimizer/paths.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

#include "stp.h"

PG_MODULE_MAGIC;

int			stp_launcher_naptime = 5000;
int			stp_max_retries = 5;
int			stp_distinct_layout = STP_DISTINCT_LAYOUT_AUTO;

static const struct config_enum_entry distinct_layout_options[] = {
	{"auto", STP_DISTINCT_LAYOUT_AUTO, false},
	{"chunks", STP_DISTINCT_LAYOUT_CHUNKS, false},
	{"pairs", STP_DISTINCT_LAYOUT_PAIRS, false},
	{NULL, 0, false}
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static object_access_hook_type prev_object_access_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;
static set_rel_pathlist_hook_type prev_set_rel_pathlist_hook = NULL;

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
 * Creating an extension (it may be stp, which pg_restore creates before it
 * loads the jobs) makes the launcher scan the database from then on.
 * Dropping the extension or the database must not leave partition workers
 * behind.  DROP EXTENSION stops the database's workers once it commits.
 * DROP DATABASE waits a few seconds for other sessions to leave before it
 * gives up, so the workers are told to leave right away; if the drop then
 * fails, the launcher starts them again.
 */
/*
 * A partition was dropped or truncated: a job reads its rows through the
 * partitioned tables above it, so they are noted too.
 */
static void
note_ancestors(Oid relid, bool truncated)
{
	ListCell   *lc;

	foreach(lc, get_partition_ancestors(relid))
	{
		if (truncated)
			stp_note_relation(lfirst_oid(lc), true);
		else
			stp_note_leaf_change(lfirst_oid(lc),
								 psprintf("partition %s of table %s was dropped",
										  quote_identifier(get_rel_name(relid)),
										  quote_identifier(get_rel_name(lfirst_oid(lc)))));
	}
}

/*
 * ALTER TABLE ... ATTACH or DETACH PARTITION, and CREATE TABLE ...
 * PARTITION OF: the partitioned table's set of leaves changes, which
 * jobs reading it check (guard.c).
 */
static void
note_partition_commands(Node *stmt)
{
	if (IsA(stmt, AlterTableStmt))
	{
		AlterTableStmt *ats = (AlterTableStmt *) stmt;
		Oid			relid = RangeVarGetRelid(ats->relation, NoLock, true);
		ListCell   *lc;

		if (!OidIsValid(relid))
			return;
		foreach(lc, ats->cmds)
		{
			AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);
			PartitionCmd *pc = (PartitionCmd *) cmd->def;

			if (cmd->subtype == AT_AttachPartition)
				stp_note_leaf_change(relid,
									 psprintf("table %s was attached as a partition of table %s, with rows whose ids the job may have passed",
											  quote_identifier(pc->name->relname),
											  quote_identifier(get_rel_name(relid))));
			else if (cmd->subtype == AT_DetachPartition ||
					 cmd->subtype == AT_DetachPartitionFinalize)
				stp_note_leaf_change(relid,
									 psprintf("partition %s was detached from table %s",
											  quote_identifier(pc->name->relname),
											  quote_identifier(get_rel_name(relid))));
		}
	}
	else if (IsA(stmt, CreateStmt) && ((CreateStmt *) stmt)->partbound)
	{
		ListCell   *lc;

		foreach(lc, ((CreateStmt *) stmt)->inhRelations)
		{
			Oid			relid = RangeVarGetRelid(lfirst_node(RangeVar, lc), NoLock, true);

			if (OidIsValid(relid))
				stp_note_relation(relid, false);
		}
	}
}

static void
stp_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				  int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (stp_shared == NULL)
		return;

	if (access == OAT_DROP && classId == ExtensionRelationId &&
		objectId == get_extension_oid("stp", true))
	{
		stp_stop_db_workers_at_commit();
		/* The starter then drops the slot jobs' slots (slot.c). */
		stp_request_scan_at_commit();
	}
	else if (access == OAT_POST_CREATE && classId == ExtensionRelationId)
		stp_request_scan_at_commit();
	else if (access == OAT_DROP && classId == DatabaseRelationId)
		stp_database_dropping(objectId);
	else if (classId == RelationRelationId &&
			 (access == OAT_DROP || access == OAT_POST_ALTER || access == OAT_TRUNCATE))
	{
		stp_note_relation(objectId, access == OAT_TRUNCATE);
		if (access != OAT_POST_ALTER && get_rel_relispartition(objectId))
			note_ancestors(objectId, access == OAT_TRUNCATE);
	}
}

/*
 * ProcessUtility_hook: refuse to drop a role that owns a job; run the
 * statement; then follow REASSIGN OWNED and DROP OWNED in the jobs, and
 * check the jobs whose tables the statement touched or truncated (see
 * guard.c).  ALTER TABLE ... SET DEFAULT changes no relation that the
 * object access hook sees, so the altered table is noted here.
 */
static void
stp_process_utility(PlannedStmt *pstmt, const char *queryString,
					bool readOnlyTree, ProcessUtilityContext context,
					ParamListInfo params, QueryEnvironment *queryEnv,
					DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (stp_shared != NULL && IsA(stmt, DropRoleStmt))
		stp_check_drop_role(((DropRoleStmt *) stmt)->roles);
	if (stp_shared != NULL && IsTransactionState() &&
		(IsA(stmt, AlterSeqStmt) || IsA(stmt, AlterTableStmt)) &&
		OidIsValid(get_extension_oid("stp", true)))
	{
		RangeVar   *rv = IsA(stmt, AlterSeqStmt) ?
		((AlterSeqStmt *) stmt)->sequence : ((AlterTableStmt *) stmt)->relation;
		Oid			relid = RangeVarGetRelid(rv, NoLock, true);

		if (OidIsValid(relid))
			stp_note_sequences_before(relid);
	}

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (stp_shared == NULL || !IsTransactionState())
		return;
	note_partition_commands(stmt);
	if (IsA(stmt, AlterTableStmt))
	{
		Oid			relid = RangeVarGetRelid(((AlterTableStmt *) stmt)->relation,
											 NoLock, true);

		if (OidIsValid(relid))
			stp_note_relation(relid, false);
	}
	else if (IsA(stmt, ReassignOwnedStmt))
		stp_reassign_or_drop_owned(((ReassignOwnedStmt *) stmt)->roles,
								   ((ReassignOwnedStmt *) stmt)->newrole);
	else if (IsA(stmt, DropOwnedStmt))
		stp_reassign_or_drop_owned(((DropOwnedStmt *) stmt)->roles, NULL);
	stp_check_noted_relations();
}

/*
 * set_rel_pathlist_hook: after any previous hook, let the StpRoute scan
 * take over the routing filter of stp's batch statements (route.c).
 */
static void
stp_set_rel_pathlist(PlannerInfo *root, RelOptInfo *rel, Index rti,
					 RangeTblEntry *rte)
{
	if (prev_set_rel_pathlist_hook)
		prev_set_rel_pathlist_hook(root, rel, rti, rte);
	stp_route_paths(root, rel, rti, rte);
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

	DefineCustomEnumVariable("stp.distinct_layout",
							 "Layout of the distinct tables of the DISTINCT aggregates of jobs created from now on.",
							 "auto: chunks when a group key is a time bucket (date_bin or date_trunc), else pairs.",
							 &stp_distinct_layout,
							 STP_DISTINCT_LAYOUT_AUTO,
							 distinct_layout_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("stp.route_scan",
							 "Routes rows to partitions with the StpRoute custom scan instead of a call of stp.in_partition per row.",
							 "Read when a statement is planned: a partition worker plans its batch statements when it starts.",
							 &stp_route_scan,
							 true,
							 PGC_USERSET,
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
	prev_set_rel_pathlist_hook = set_rel_pathlist_hook;
	set_rel_pathlist_hook = stp_set_rel_pathlist;
	stp_route_init();

	stp_xact_callback_init();
	stp_register_launcher();
}
