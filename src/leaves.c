/*-------------------------------------------------------------------------
 *
 * leaves.c
 *		Partitioned sources: which leaves a job's partition reads, and
 *		keeping the job on the leaves it was created with.
 *
 * A source partitioned BY HASH on plain columns that the job's GROUP BY
 * contains has routed every row at insert time: all rows of a group are
 * in one leaf.  Such a job is in "leaves" mode: it records the source's
 * partitions, in the order of their hash bounds, in stp.jobs.leaves, and
 * its partition p reads the leaves i with i mod partitions = p, each
 * straight and in full, with no routing per row.  The assignment follows
 * from the recorded list and the partition count alone, so a resize
 * (stp_alter_job) moves leaves between partitions at its common cut.
 *
 * Any other partitioned source (by range or list, or by hash on an
 * expression, a column the GROUP BY lacks, another operator class or
 * another collation) is read through its parent and routed per row, as a
 * plain table is ("route" mode).
 *
 * Leaves that change under a job: in leaves mode, any partition attached,
 * detached, created or dropped fails the job, since the recorded
 * assignment no longer covers every row exactly once.  In route mode a
 * partition created empty (CREATE TABLE ... PARTITION OF) is read like
 * the others, while ATTACH, DETACH and DROP of a partition fail the job:
 * the rows an attached table brings may have ids below the job's
 * progress, and the rows of a detached or dropped one stay counted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/partition.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "commands/defrem.h"
#include "lib/stringinfo.h"
#include "partitioning/partdesc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/partcache.h"
#include "utils/rel.h"

#include "stp.h"

/*
 * Is the deparsed group key expr exactly the column attname?
 */
static bool
key_is_column(List *key_exprs, const char *attname)
{
	ListCell   *lc;

	foreach(lc, key_exprs)
	{
		if (strcmp((char *) lfirst(lc), quote_identifier(attname)) == 0)
			return true;
	}
	return false;
}

/*
 * The leaves of a partitioned source that a job can read directly, in the
 * order of their hash bounds, or NIL with the reason in *why.  Every row
 * of a group must be in one leaf: the source is partitioned BY HASH on
 * plain columns that are group keys, with the type's default hash
 * operator class and the column's own collation, so that values GROUP BY
 * finds equal hash alike, and every partition is a plain table.
 */
List *
stp_hash_leaves(Oid source, List *key_exprs, char **why)
{
	Relation	rel = relation_open(source, AccessShareLock);
	PartitionKey key = RelationGetPartitionKey(rel);
	PartitionDesc pd;
	List	   *leaves = NIL;

	*why = NULL;
	if (key->strategy != PARTITION_STRATEGY_HASH)
		*why = psprintf("it is partitioned by %s, not by hash",
						key->strategy == PARTITION_STRATEGY_RANGE ? "range" : "list");
	for (int i = 0; *why == NULL && i < key->partnatts; i++)
	{
		AttrNumber	attnum = key->partattrs[i];
		char	   *attname;
		Oid			opclass;

		if (attnum == 0)
		{
			*why = pstrdup("its partition key is an expression");
			break;
		}
		attname = get_attname(source, attnum, false);
		opclass = GetDefaultOpClass(key->parttypid[i], HASH_AM_OID);
		if (!key_is_column(key_exprs, attname))
			*why = psprintf("its partition key column \"%s\" is not a GROUP BY key of the job", attname);
		else if (!OidIsValid(opclass) || get_opclass_family(opclass) != key->partopfamily[i])
			*why = psprintf("its partition key column \"%s\" is hashed with another operator class than the type's default",
							attname);
		else if (key->partcollation[i] != TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attcollation)
			*why = psprintf("its partition key column \"%s\" is hashed with another collation than the column's",
							attname);
	}
	if (*why == NULL)
	{
		pd = RelationGetPartitionDesc(rel, true);
		if (pd->nparts == 0)
			*why = pstrdup("it has no partitions");
		for (int i = 0; *why == NULL && i < pd->nparts; i++)
		{
			if (get_rel_relkind(pd->oids[i]) != RELKIND_RELATION)
				*why = psprintf("its partition %s is not a plain table",
								stp_qualified_relname(pd->oids[i]));
			else
				leaves = lappend_oid(leaves, pd->oids[i]);
		}
	}
	relation_close(rel, AccessShareLock);
	if (*why != NULL)
	{
		list_free(leaves);
		return NIL;
	}
	return leaves;
}

/*
 * The leaves that partition reads: the i-th recorded leaf for every i
 * with i mod partitions = partition.
 */
List *
stp_partition_leaves(StpJobDef *def, int32 partition)
{
	List	   *result = NIL;
	ListCell   *lc;

	foreach(lc, def->leaves)
	{
		if (foreach_current_index(lc) % def->partitions == partition)
			result = lappend_oid(result, lfirst_oid(lc));
	}
	return result;
}

/*
 * The FROM item that a partition of a job in leaves mode reads: its own
 * leaves, each with ONLY, under one UNION ALL that the planner flattens
 * into an Append.  The source's columns are named, in the parent's order,
 * since an attached leaf may order its columns otherwise; the alias keeps
 * the source's name, so the job's unqualified expressions resolve as they
 * do on the parent.  With one partition the parent itself is read, which
 * is the same rows.
 */
char *
stp_leaves_from_item(StpJobDef *def, int32 partition)
{
	StringInfoData buf;
	StringInfoData cols;
	Relation	rel;
	TupleDesc	desc;
	ListCell   *lc;

	if (def->partitions == 1)
		return stp_qualified_relname(def->source);

	initStringInfo(&cols);
	rel = relation_open(def->source, AccessShareLock);
	desc = RelationGetDescr(rel);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		appendStringInfo(&cols, "%s%s", cols.len > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)));
	}
	relation_close(rel, AccessShareLock);

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	foreach(lc, stp_partition_leaves(def, partition))
		appendStringInfo(&buf, "%sSELECT %s FROM ONLY %s",
						 foreach_current_index(lc) > 0 ? " UNION ALL " : "",
						 cols.data, stp_qualified_relname(lfirst_oid(lc)));
	appendStringInfo(&buf, ") AS %s", quote_identifier(get_rel_name(def->source)));
	return buf.data;
}

/*
 * The names a partition's batch statement reads its source by: the
 * source's, and in leaves mode its own leaves'.  A batch statement is
 * prepared again when they change, since a cached plan is re-analysed by
 * name (a renamed leaf would no longer be found).
 */
char *
stp_source_names(StpJobDef *def, int32 partition)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoString(&buf, stp_qualified_relname(def->source));
	if (def->leaves != NIL && def->partitions > 1)
	{
		foreach(lc, stp_partition_leaves(def, partition))
			appendStringInfo(&buf, " %s", stp_qualified_relname(lfirst_oid(lc)));
	}
	return buf.data;
}

/*
 * The leaves whose writers a partition waits for before it reads up to
 * the sequence's last value.  An INSERT straight into a leaf locks the
 * leaf, and takes only AccessShareLock on the parent, so waiting for the
 * parent's writers would miss it.  In leaves mode the partition's own
 * leaves; in route mode every leaf of the source; NIL for a plain table.
 */
List *
stp_leaves_to_wait(StpJobDef *def, int32 partition)
{
	List	   *all;

	if (def->leaves != NIL)
		return stp_partition_leaves(def, partition);
	if (get_rel_relkind(def->source) != RELKIND_PARTITIONED_TABLE)
		return NIL;
	all = find_all_inheritors(def->source, NoLock, NULL);
	return list_delete_first(all);
}

/*
 * Why the leaves of a partitioned source no longer fit the job, or NULL.
 * Every leaf must be logged (a crash would empty an unlogged one), and
 * each leaf's order column must take its values from the job's sequence
 * or have no default (an identity column of a partitioned parent is not
 * inherited on PostgreSQL 15: a direct INSERT into such a leaf fails
 * unless it gives an id).  In leaves mode the source's partitions must
 * still be the recorded ones, plain tables without row-level security,
 * since they are read directly.  Nothing here raises an error for a
 * missing object.
 */
char *
stp_check_leaves(StpJobDef *def, const char *srcname)
{
	List	   *all = find_all_inheritors(def->source, NoLock, NULL);
	ListCell   *lc;

	foreach(lc, all)
	{
		Oid			leaf = lfirst_oid(lc);
		char	   *name;

		if (leaf == def->source || get_rel_relkind(leaf) == RELKIND_PARTITIONED_TABLE)
			continue;
		name = get_rel_name(leaf);
		if (name == NULL)
			continue;
		if (get_rel_persistence(leaf) != RELPERSISTENCE_PERMANENT)
			return psprintf("partition %s of source %s is unlogged: a crash would empty it while the result table keeps its rows",
							quote_identifier(name), srcname);
		if (!stp_leaf_order_default_ok(def, leaf))
			return psprintf("order column \"%s\" of partition %s of source %s takes its values from elsewhere than sequence %s",
							def->order_column, quote_identifier(name), srcname,
							stp_qualified_relname(def->sequence));
	}

	if (def->leaves != NIL)
	{
		List	   *now = find_inheritance_children(def->source, NoLock);

		foreach(lc, def->leaves)
		{
			if (!list_member_oid(now, lfirst_oid(lc)))
				return psprintf("a partition of source %s that the job reads directly was detached or dropped; "
								"the job's assignment of partitions to workers no longer covers the source",
								srcname);
		}
		foreach(lc, now)
		{
			Oid			leaf = lfirst_oid(lc);

			if (!list_member_oid(def->leaves, leaf))
				return psprintf("partition %s was added to source %s, whose partitions the job reads directly; "
								"no worker of the job reads it",
								stp_qualified_relname(leaf), srcname);
			if (get_rel_relkind(leaf) != RELKIND_RELATION)
				return psprintf("partition %s of source %s is no longer a plain table",
								stp_qualified_relname(leaf), srcname);
			{
				Relation	rel = try_relation_open(leaf, AccessShareLock);
				bool		rls = rel != NULL && rel->rd_rel->relrowsecurity;

				if (rel)
					relation_close(rel, AccessShareLock);
				if (rls)
					return psprintf("partition %s of source %s has row-level security enabled",
									stp_qualified_relname(leaf), srcname);
			}
		}
	}
	return NULL;
}

/*
 * A job that reads its source's partitions directly has at most as many
 * partitions as the source: each worker reads whole source partitions.
 */
void
stp_check_leaves_partitions(StpJobDef *def, int32 partitions)
{
	if (def->leaves != NIL && partitions > list_length(def->leaves))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions must be at most %d, the number of partitions of source %s",
						list_length(def->leaves), stp_qualified_relname(def->source)),
				 errdetail("Each worker of the job reads whole partitions of the hash-partitioned source."),
				 errhint("Use fewer partitions, or partition the source into more.")));
}
