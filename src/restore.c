/*-------------------------------------------------------------------------
 *
 * restore.c
 *		Recognising a job that came from pg_dump, and waiting until its
 *		restore is complete before it runs.
 *
 * stp.jobs keeps its tables as regclass and its owner as regrole, so a
 * dump writes their names and a restore resolves them to the new OIDs.
 * It also keeps the job's origin: the system identifier, the database's
 * OID and the source's OID where the job was created, as plain text that
 * a restore does not translate.  A worker whose job's origin is not where
 * it runs knows that the job came from a restore.
 *
 * While pg_restore is still loading, such a job must not run: its
 * progress is restored, but the source's sequence is set only at the end
 * of the data section, and the result table gets its unique index (which
 * the merge needs) only in the post-data section, after all data.  So the
 * worker waits, shown as state "restored" in stp.job_status, until the
 * result table has its unique key index, the sequence has reached the
 * partition's progress, and neither table is empty while the job has
 * counted rows.  Then it records the new origin and runs as usual.  A
 * restore that left something out keeps the job waiting, with the reason,
 * instead of failing it or counting wrongly.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/xlog.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "stp.h"

/*
 * Where a job on this source is created and runs: the system identifier,
 * the database's OID and the source's OID.  None of them survives a dump
 * and restore into another database or cluster; pg_upgrade keeps the
 * OIDs, and a changed system identifier only makes the workers check the
 * job once.
 */
char *
stp_job_origin(Oid source)
{
	/* Signed, as pg_control_system() shows it, so that SQL can write it. */
	return psprintf(INT64_FORMAT "/%u/%u", (int64) GetSystemIdentifier(),
					MyDatabaseId, source);
}

/*
 * Does the table have a valid index (a unique one with unique) on exactly
 * the columns?  pg_restore creates it in the post-data section, after all
 * data; the merge cannot run without it.
 */
static bool
has_index(Oid relid, List *columns, bool unique)
{
	Relation	rel = try_relation_open(relid, AccessShareLock);
	List	   *indexes;
	ListCell   *lc;
	bool		found = false;

	if (rel == NULL)
		return false;
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index idx;
		bool		match;

		if (!HeapTupleIsValid(tup))
			continue;
		idx = (Form_pg_index) GETSTRUCT(tup);
		match = (idx->indisunique || !unique) && idx->indisvalid &&
			idx->indnkeyatts == list_length(columns);
		for (int i = 0; match && i < idx->indnkeyatts; i++)
		{
			char	   *attname = get_attname(relid, idx->indkey.values[i], true);
			ListCell   *kc;

			match = false;
			foreach(kc, columns)
			{
				if (attname && strcmp(attname, lfirst(kc)) == 0)
					match = true;
			}
		}
		ReleaseSysCache(tup);
		if (match)
		{
			found = true;
			break;
		}
	}
	relation_close(rel, AccessShareLock);
	return found;
}

/*
 * Do the result table, and the distinct table of each count(DISTINCT),
 * have their indexes: the result table's unique one, a distinct table's
 * unique one on its keys and value (pair layout) or its index on its keys
 * (chunk layout, with the column _stp_values)?  A distinct table's index
 * comes after its rows, so a job never counts a value again that the
 * dump held.
 */
static bool
has_key_indexes(StpJobDef *def)
{
	List	   *columns = lappend(list_copy(def->key_names), "_stp_value");
	ListCell   *lc;

	if (!has_index(def->result, def->key_names, true))
		return false;
	foreach(lc, def->agg_kinds)
	{
		Oid			side;

		if (!STP_AGG_IS_DISTINCT((StpAggKind) lfirst_int(lc)))
			continue;
		side = stp_distinct_table(def, foreach_current_index(lc));
		if (!OidIsValid(side))
			return false;
		if (get_attnum(side, "_stp_values") != InvalidAttrNumber ?
			!has_index(side, def->key_names, false) : !has_index(side, columns, true))
			return false;
	}
	return true;
}

/*
 * Does the table hold a row?  Read as the job's owner, who may read both
 * of the job's tables.
 */
static bool
table_has_rows(Oid relid)
{
	bool		isnull;
	int			ret;

	ret = SPI_execute(psprintf("SELECT EXISTS (SELECT FROM %s)",
							   stp_qualified_relname(relid)), true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read %s", stp_qualified_relname(relid));
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The rows the job's partitions have aggregated, all together.
 */
static int64
job_rows_processed(int32 job_id)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(job_id)};
	bool		isnull;

	if (stp_catalog_exec("SELECT COALESCE(pg_catalog.sum(rows_processed), 0)::pg_catalog.int8 "
						 "FROM stp.partitions WHERE job_id OPERATOR(pg_catalog.=) $1",
						 1, types, values, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read stp.partitions");
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Record that the job now runs here, so that its workers and stp's DDL
 * checks treat it as any other job from now on.
 */
static void
stamp_origin(StpJobDef *def)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2];

	values[0] = Int32GetDatum(def->job_id);
	values[1] = CStringGetTextDatum(stp_job_origin(def->source));
	(void) stp_catalog_exec("UPDATE stp.jobs SET origin = $2 "
							"WHERE job_id OPERATOR(pg_catalog.=) $1 "
							"AND (origin IS NULL OR origin OPERATOR(pg_catalog.<>) $2)",
							2, types, values, NULL, false, 0);
}

/*
 * Is the restore of a restored job complete, as far as this partition,
 * whose committed progress is progress, can tell?  If so, record the
 * job's new origin and return true; if not, note in the partition's slot
 * what is missing and return false.  A job whose tables are gone is left
 * to the usual checks, which fail it with the reason.  The caller is
 * connected to SPI and has a snapshot.
 */
bool
stp_restore_complete(StpJobDef *def, int64 progress, StpSlot *slot)
{
	StpRestoreWait wait = STP_RW_NONE;
	int64		high = 0;

	/*
	 * A slot job has no sequence, and its restored progress is a position
	 * in another server's WAL: once the restore is complete, its partitions
	 * find no slot and build their groups again from the whole source.  So
	 * it waits only for the end of the restore, the result table's key
	 * index of the post-data section.
	 */
	if (def->slot_source)
	{
		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(def->source)) &&
			SearchSysCacheExists1(RELOID, ObjectIdGetDatum(def->result)) &&
			!has_key_indexes(def))
			wait = STP_RW_KEY_INDEX;
	}
	else if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(def->source)) &&
			 SearchSysCacheExists1(RELOID, ObjectIdGetDatum(def->result)) &&
			 SearchSysCacheExists1(SEQRELID, ObjectIdGetDatum(def->sequence)))
	{
		if (!has_key_indexes(def))
			wait = STP_RW_KEY_INDEX;
		else if ((high = stp_sequence_high_water(def->sequence)) < progress)
			wait = STP_RW_SEQUENCE;
		else if (job_rows_processed(def->job_id) > 0)
		{
			if (!table_has_rows(def->result))
				wait = STP_RW_RESULT_ROWS;
			else if (!table_has_rows(def->source))
				wait = STP_RW_SOURCE_ROWS;
		}
	}

	slot->restore_have = high;
	slot->restore_need = progress;
	slot->restore_wait = wait;
	if (wait != STP_RW_NONE)
		return false;
	stamp_origin(def);
	return true;
}
