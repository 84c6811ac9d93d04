/*-------------------------------------------------------------------------
 *
 * guard.c
 *		Keeping every job on the tables, the sequence and the owner it was
 *		created with.
 *
 * A job's result is exact only while its source is the same append-only
 * table, read in the order of a column fed by one CACHE 1 sequence that
 * never goes back, and while its result table is the one it merges into.
 * stp_check_job_tables checks all of that; a worker runs it before every
 * batch, and the DDL that touches a job's tables runs it in its own
 * transaction, so that a job whose tables were changed fails, with the
 * reason, instead of merging wrongly.  TRUNCATE of any of a job's tables,
 * however it is reached (CASCADE, a parent in an inheritance tree), fails
 * the job the same way.
 *
 * Roles: REASSIGN OWNED hands a role's jobs to the new role, DROP OWNED
 * drops them, and DROP ROLE is refused while the role owns a job in the
 * current database.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "stp.h"

/* Relations the current transaction's DDL touched or truncated. */
#define STP_MAX_NOTED	64
static Oid	noted[STP_MAX_NOTED];
static bool noted_truncated[STP_MAX_NOTED];
static char *noted_leaf_change[STP_MAX_NOTED];	/* why its leaves changed */
static int	nnoted = 0;
static bool noted_overflow = false;

/* Sequences an ALTER may restart, with what they had handed out before. */
#define STP_MAX_SEQUENCES	16
static Oid	seq_before[STP_MAX_SEQUENCES];
static int64 seq_high_before[STP_MAX_SEQUENCES];
static int	nseq_before = 0;

/*
 * Collect the sequences a column default draws from.  A nextval() whose
 * argument is not a constant counts as an unknown sequence.
 */
static bool
default_sequences_walker(Node *node, List **seqs)
{
	if (node == NULL)
		return false;
	if (IsA(node, NextValueExpr))
		*seqs = lappend_oid(*seqs, ((NextValueExpr *) node)->seqid);
	else if (IsA(node, FuncExpr) && ((FuncExpr *) node)->funcid == F_NEXTVAL)
	{
		Node	   *arg = linitial(((FuncExpr *) node)->args);

		if (IsA(arg, Const) && !((Const *) arg)->constisnull)
			*seqs = lappend_oid(*seqs, DatumGetObjectId(((Const *) arg)->constvalue));
		else
			*seqs = lappend_oid(*seqs, InvalidOid);
	}
	return expression_tree_walker(node, default_sequences_walker, (void *) seqs);
}

/*
 * Does the order column still take its values from the job's sequence,
 * and from no other?
 */
static bool
order_column_uses_sequence(Relation rel, AttrNumber attnum, Oid seqoid)
{
	Node	   *expr = build_column_default(rel, attnum);
	List	   *seqs = NIL;
	ListCell   *lc;

	(void) default_sequences_walker(expr, &seqs);
	if (seqs == NIL)
		return false;
	foreach(lc, seqs)
	{
		if (lfirst_oid(lc) != seqoid)
			return false;
	}
	return true;
}

/*
 * Does the order column of a leaf of a partitioned source take its values
 * from the job's sequence alone, or have no default at all?  A leaf
 * inherits a bigserial default, which draws from the parent's sequence;
 * an identity column of the parent is not inherited on PostgreSQL 15, so
 * a direct INSERT into the leaf must give an id (and fails without one).
 */
bool
stp_leaf_order_default_ok(StpJobDef *def, Oid leaf)
{
	Relation	rel = try_relation_open(leaf, AccessShareLock);
	AttrNumber	attnum;
	bool		ok = true;

	if (rel == NULL)
		return true;
	attnum = get_attnum(leaf, def->order_column);
	if (attnum != InvalidAttrNumber && build_column_default(rel, attnum) != NULL)
		ok = order_column_uses_sequence(rel, attnum, def->sequence);
	relation_close(rel, AccessShareLock);
	return ok;
}

/*
 * Why the job's tables no longer are what the job was created on, or NULL
 * if they still are.  progress is the highest order-column value the job
 * has read up to or seen handed out; the sequence must not have gone back
 * below it.  Nothing here raises an error for a missing object, so that
 * DDL can run it on a job of the table it changes.
 */
char *
stp_check_job_tables(StpJobDef *def, int64 progress)
{
	HeapTuple	tup;
	Form_pg_class cls;
	Form_pg_sequence seq;
	char	   *srcname;
	char	   *seqname;
	Relation	rel;
	AttrNumber	attnum;
	bool		uses_sequence;
	bool		partitioned;
	int64		high;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(def->source));
	if (!HeapTupleIsValid(tup))
		return psprintf("the source table of job \"%s\" was dropped", def->job_name);
	cls = (Form_pg_class) GETSTRUCT(tup);
	srcname = quote_qualified_identifier(get_namespace_name(cls->relnamespace),
										 NameStr(cls->relname));
	if (cls->relkind != RELKIND_RELATION && cls->relkind != RELKIND_PARTITIONED_TABLE)
	{
		ReleaseSysCache(tup);
		return psprintf("source %s is no longer a plain table", srcname);
	}
	partitioned = (cls->relkind == RELKIND_PARTITIONED_TABLE);
	if (cls->relpersistence != RELPERSISTENCE_PERMANENT)
	{
		ReleaseSysCache(tup);
		return psprintf("source %s is unlogged: a crash would empty it while the result table keeps its rows",
						srcname);
	}
	if (cls->relrowsecurity)
	{
		ReleaseSysCache(tup);
		return psprintf("source %s has row-level security enabled", srcname);
	}
	ReleaseSysCache(tup);

	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(def->result)))
		return psprintf("the result table of job \"%s\" was dropped", def->job_name);

	/*
	 * A slot job reads no order column; it needs the old row of every
	 * UPDATE and DELETE to find the groups they change.
	 */
	if (def->slot_source)
	{
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(def->source));
		if (!HeapTupleIsValid(tup))
			return psprintf("the source table of job \"%s\" was dropped", def->job_name);
		if (((Form_pg_class) GETSTRUCT(tup))->relreplident != REPLICA_IDENTITY_FULL)
		{
			ReleaseSysCache(tup);
			return psprintf("source %s no longer has REPLICA IDENTITY FULL: its UPDATE and DELETE records lack the old rows",
							srcname);
		}
		ReleaseSysCache(tup);
		return NULL;
	}

	attnum = get_attnum(def->source, def->order_column);
	if (attnum == InvalidAttrNumber)
		return psprintf("order column \"%s\" of source %s no longer exists",
						def->order_column, srcname);

	tup = SearchSysCache1(SEQRELID, ObjectIdGetDatum(def->sequence));
	if (!HeapTupleIsValid(tup))
		return psprintf("the sequence of order column \"%s\" of source %s was dropped",
						def->order_column, srcname);
	seq = (Form_pg_sequence) GETSTRUCT(tup);
	seqname = stp_qualified_relname(def->sequence);
	if (seq->seqcache != 1 || seq->seqincrement < 1 || seq->seqcycle)
	{
		char	   *reason = psprintf("sequence %s now has CACHE " INT64_FORMAT ", INCREMENT " INT64_FORMAT "%s; "
									  "a job needs CACHE 1, a positive increment and NO CYCLE, or rows could be skipped",
									  seqname, seq->seqcache, seq->seqincrement,
									  seq->seqcycle ? " and CYCLE" : "");

		ReleaseSysCache(tup);
		return reason;
	}
	ReleaseSysCache(tup);
	if (get_rel_persistence(def->sequence) != RELPERSISTENCE_PERMANENT)
		return psprintf("sequence %s is unlogged: a crash would reset it below the job's progress",
						seqname);

	rel = try_relation_open(def->source, AccessShareLock);
	if (rel == NULL)
		return psprintf("the source table of job \"%s\" was dropped", def->job_name);
	uses_sequence = order_column_uses_sequence(rel, attnum, def->sequence);
	relation_close(rel, AccessShareLock);
	if (!uses_sequence)
		return psprintf("order column \"%s\" of source %s no longer takes its values from sequence %s alone",
						def->order_column, srcname, seqname);
	if (partitioned)
	{
		char	   *reason = stp_check_leaves(def, srcname);

		if (reason)
			return reason;
	}

	high = stp_sequence_high_water(def->sequence);
	if (high < progress)
		return psprintf("sequence %s was set back to " INT64_FORMAT ", below the " INT64_FORMAT
						" the job has read up to; rows with ids it hands out again could be skipped",
						seqname, high, progress);
	return NULL;
}

/*
 * Remember a relation that the current statement touches (from the object
 * access hook).  Cheap: the jobs are looked up once the statement is done.
 */
void
stp_note_relation(Oid relid, bool truncated)
{
	for (int i = 0; i < nnoted; i++)
	{
		if (noted[i] == relid)
		{
			noted_truncated[i] |= truncated;
			return;
		}
	}
	if (nnoted < STP_MAX_NOTED)
	{
		noted[nnoted] = relid;
		noted_truncated[nnoted] = truncated;
		noted_leaf_change[nnoted] = NULL;
		nnoted++;
	}
	else
		noted_overflow = true;
}

/*
 * Remember that a partitioned table lost a partition or gained one by
 * ATTACH, with what happened, for the jobs that read it through the
 * parent (route mode): the rows of a detached or dropped partition stay
 * counted, and an attached table brings rows whose ids the job may have
 * passed.  Jobs that read the leaves directly check the whole set of
 * partitions anyway (stp_check_leaves).
 */
void
stp_note_leaf_change(Oid parent, const char *what)
{
	stp_note_relation(parent, false);
	for (int i = 0; i < nnoted; i++)
	{
		if (noted[i] == parent && noted_leaf_change[i] == NULL)
			noted_leaf_change[i] = MemoryContextStrdup(TopTransactionContext, what);
	}
}

/*
 * Forget the noted relations, at the end of a transaction.
 */
void
stp_forget_noted_relations(void)
{
	nnoted = 0;
	noted_overflow = false;
	nseq_before = 0;
}

/*
 * Before ALTER SEQUENCE or ALTER TABLE: remember what the sequence, or the
 * sequences the table's columns own, have handed out, so that a RESTART
 * below that fails the jobs that read in its order, even when the job has
 * not yet read that far.
 */
void
stp_note_sequences_before(Oid relid)
{
	List	   *seqs;
	ListCell   *lc;
	char		relkind = get_rel_relkind(relid);

	if (relkind == RELKIND_SEQUENCE)
		seqs = list_make1_oid(relid);
	else if (relkind == RELKIND_RELATION)
		seqs = getOwnedSequences(relid);
	else
		return;
	foreach(lc, seqs)
	{
		if (nseq_before >= STP_MAX_SEQUENCES)
			break;
		seq_before[nseq_before] = lfirst_oid(lc);
		seq_high_before[nseq_before] = stp_sequence_high_water(lfirst_oid(lc));
		nseq_before++;
	}
}

/*
 * Did the statement set the sequence back below what it had handed out?
 */
static char *
sequence_set_back(Oid seqoid)
{
	for (int i = 0; i < nseq_before; i++)
	{
		int64		now;

		if (seq_before[i] != seqoid || !SearchSysCacheExists1(SEQRELID, ObjectIdGetDatum(seqoid)))
			continue;
		now = stp_sequence_high_water(seqoid);
		if (now < seq_high_before[i])
			return psprintf("sequence %s was restarted at " INT64_FORMAT ", below the " INT64_FORMAT
							" it had handed out; rows with ids it hands out again could be skipped",
							stp_qualified_relname(seqoid), now + 1, seq_high_before[i]);
	}
	return NULL;
}

/*
 * Is stp's catalog usable in this transaction?  Not while the extension
 * is being created or dropped.
 */
static bool
catalog_ready(void)
{
	Oid			nsp;

	if (!IsTransactionState() || creating_extension ||
		!OidIsValid(get_extension_oid("stp", true)))
		return false;
	nsp = get_namespace_oid("stp", true);
	return OidIsValid(nsp) && OidIsValid(get_relname_relid("jobs", nsp)) &&
		OidIsValid(get_relname_relid("partitions", nsp));
}

/*
 * Mark every partition of a job failed with the reason, keeping the first
 * reason of a partition that had failed already, and end its workers once
 * the transaction commits.
 */
static void
fail_job(int32 job_id, const char *reason)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];

	values[0] = Int32GetDatum(job_id);
	values[1] = CStringGetTextDatum(reason);
	(void) stp_catalog_exec("UPDATE stp.partitions SET last_error = CASE WHEN failed "
							"THEN last_error ELSE $2 END, failed = true "
							"WHERE job_id OPERATOR(pg_catalog.=) $1 AND NOT failed",
							2, types, values, NULL, false, 0);
	if (SPI_processed > 0)
		ereport(LOG,
				(errmsg("stp job %d fails: %s", job_id, reason)));
	stp_stop_job_workers_at_commit(job_id);
}

/*
 * Once a utility statement is done: fail the jobs whose tables it
 * truncated, and check again, in the same transaction, the jobs whose
 * source, sequence or result table it touched.
 */
void
stp_check_noted_relations(void)
{
	Oid			relids[STP_MAX_NOTED];
	bool		truncated[STP_MAX_NOTED];
	char	   *leaf_change[STP_MAX_NOTED];
	int			n = nnoted;
	bool		all = noted_overflow;
	Datum	   *elems;
	Oid			types[1] = {OIDARRAYOID};
	Datum		values[1];
	int32	   *jobs;
	int64	   *progress;
	uint64		njobs;

	if (n == 0 && !all)
	{
		nseq_before = 0;
		return;
	}
	memcpy(relids, noted, sizeof(Oid) * n);
	memcpy(truncated, noted_truncated, sizeof(bool) * n);
	memcpy(leaf_change, noted_leaf_change, sizeof(char *) * n);
	nnoted = 0;
	noted_overflow = false;
	if (!catalog_ready())
	{
		nseq_before = 0;
		return;
	}

	CommandCounterIncrement();
	SPI_connect();
	elems = palloc(sizeof(Datum) * Max(n, 1));
	for (int i = 0; i < n; i++)
		elems[i] = ObjectIdGetDatum(relids[i]);
	values[0] = PointerGetDatum(construct_array(elems, n, OIDOID, sizeof(Oid),
												true, TYPALIGN_INT));
	(void) stp_catalog_exec(all ?
							"SELECT j.job_id, (SELECT pg_catalog.max(p.processed_upto) FROM stp.partitions p "
							"WHERE p.job_id OPERATOR(pg_catalog.=) j.job_id) FROM stp.jobs j "
							"WHERE $1 IS NOT NULL" :
							"SELECT j.job_id, (SELECT pg_catalog.max(p.processed_upto) FROM stp.partitions p "
							"WHERE p.job_id OPERATOR(pg_catalog.=) j.job_id) FROM stp.jobs j "
							"WHERE j.source::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1) "
							"OR j.result_table::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1) "
							"OR j.sequence::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)",
							1, types, values, NULL, true, 0);
	njobs = SPI_processed;
	jobs = palloc(sizeof(int32) * Max(njobs, 1));
	progress = palloc(sizeof(int64) * Max(njobs, 1));
	for (uint64 i = 0; i < njobs; i++)
	{
		bool		isnull;
		Datum		d;

		jobs[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											  SPI_tuptable->tupdesc, 1, &isnull));
		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull);
		progress[i] = isnull ? PG_INT64_MIN : DatumGetInt64(d);
	}

	for (uint64 j = 0; j < njobs; j++)
	{
		StpJobDef  *def = stp_load_job(jobs[j], NULL, CurrentMemoryContext);
		char	   *reason = NULL;

		/*
		 * A job from a restore that its workers have not found complete
		 * yet is checked by them (restore.c): pg_restore's own statements
		 * (a TRUNCATE before COPY in a parallel restore, indexes created
		 * after the data) must not fail it.
		 */
		if (def == NULL || def->restored)
			continue;
		for (int i = 0; i < n && reason == NULL; i++)
		{
			/* A slot job decodes a TRUNCATE of its source and rebuilds. */
			if (truncated[i] && relids[i] == def->source && def->slot_source)
				continue;
			if (truncated[i] && (relids[i] == def->source || relids[i] == def->result))
				reason = psprintf("table %s was truncated; the result table no longer matches the job's query",
								  get_rel_name(relids[i]));
		}
		for (int i = 0; i < n && reason == NULL; i++)
		{
			if (leaf_change[i] && relids[i] == def->source && def->leaves == NIL)
				reason = psprintf("%s; the result table no longer matches the job's query",
								  leaf_change[i]);
		}
		if (reason == NULL)
			reason = stp_check_job_tables(def, progress[j]);
		if (reason == NULL && !def->slot_source)
			reason = sequence_set_back(def->sequence);
		if (reason)
			fail_job(def->job_id, reason);
	}
	nseq_before = 0;
	SPI_finish();
}

/*
 * The OIDs of a list of RoleSpecs, skipping roles that do not exist.
 */
static List *
role_oids(List *roles)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, roles)
	{
		Oid			roleid = get_rolespec_oid(lfirst(lc), true);

		if (OidIsValid(roleid))
			result = lappend_oid(result, roleid);
	}
	return result;
}

/*
 * Before DROP ROLE: refuse to drop a role that owns a job in this
 * database, as PostgreSQL refuses to drop a role that owns a table.  Jobs
 * in other databases cannot be seen from here; their partitions fail, with
 * the reason, when the launcher next looks at them.
 */
void
stp_check_drop_role(List *roles)
{
	List	   *oids = role_oids(roles);
	ListCell   *lc;

	if (oids == NIL || !catalog_ready())
		return;
	SPI_connect();
	foreach(lc, oids)
	{
		Oid			types[1] = {OIDOID};
		Datum		values[1] = {ObjectIdGetDatum(lfirst_oid(lc))};

		(void) stp_catalog_exec("SELECT job_name FROM stp.jobs WHERE owner::pg_catalog.oid "
								"OPERATOR(pg_catalog.=) $1 ORDER BY job_name",
								1, types, values, NULL, true, 1);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("role \"%s\" cannot be dropped because it owns stp job \"%s\"",
							GetUserNameFromId(lfirst_oid(lc), false),
							SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)),
					 errhint("Drop the role's jobs with stp_drop_job(), or give them to another role with REASSIGN OWNED.")));
	}
	SPI_finish();
}

/*
 * After REASSIGN OWNED or DROP OWNED: the roles' jobs in this database go
 * to the new role, whose workers then connect as it, or are dropped with
 * the rest of what the roles own.  Either way their workers leave at
 * commit; the launcher starts the reassigned jobs' workers again.
 */
void
stp_reassign_or_drop_owned(List *roles, RoleSpec *newrole)
{
	List	   *oids = role_oids(roles);
	Oid			newoid = newrole ? get_rolespec_oid(newrole, false) : InvalidOid;
	ListCell   *lc;

	if (oids == NIL || !catalog_ready())
		return;
	SPI_connect();
	foreach(lc, oids)
	{
		Oid			types[2] = {OIDOID, OIDOID};
		Datum		values[2] = {ObjectIdGetDatum(lfirst_oid(lc)), ObjectIdGetDatum(newoid)};

		if (newrole)
			(void) stp_catalog_exec("UPDATE stp.jobs SET owner = $2::pg_catalog.regrole "
									"WHERE owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1 RETURNING job_id",
									2, types, values, NULL, false, 0);
		else
			(void) stp_catalog_exec("DELETE FROM stp.jobs WHERE owner::pg_catalog.oid "
									"OPERATOR(pg_catalog.=) $1 RETURNING job_id",
									1, types, values, NULL, false, 0);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			int32		job_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc, 1, &isnull));

			stp_stop_job_workers_at_commit(job_id);
			if (newrole)
				stp_start_job_at_commit(job_id, newoid, 0);
		}
	}
	SPI_finish();
}
