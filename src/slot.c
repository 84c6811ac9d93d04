/*-------------------------------------------------------------------------
 *
 * slot.c
 *		Jobs whose source is a logical replication slot: the output plugin,
 *		a partition worker's decoding step, and the slots' life cycle.
 *
 * Each partition of a slot job owns one logical replication slot, named
 * stp_<database OID>_<job id>_<partition>, whose output plugin is this
 * library ("stp").  The partition worker decodes the WAL in its own
 * process: CreateDecodingContext, then an XLogReadRecord /
 * LogicalDecodingProcessRecord loop, as pg_logical_slot_get_changes does.
 * The plugin's callbacks run under a historic snapshot inside a
 * subtransaction that the reorder buffer rolls back, so they write no
 * table: they keep the old and new rows of the job's source in a
 * tuplestore, which spills to a temporary file past work_mem.  Changes to
 * other tables are dropped at once, and so, when every group key is a
 * plain column, are the rows of other partitions' groups (routed as
 * stp.in_partition routes them; the batch statement's filter stays).
 * Transactions that roll back never reach the callbacks, and a prepared
 * transaction reaches them at COMMIT PREPARED.  A transaction larger than
 * logical_decoding_work_mem is spilled to disk by the reorder buffer.
 *
 * A step decodes the WAL up to what is flushed, and first flushes it up to
 * the insert position unless another process is flushing it, so that
 * transactions that committed asynchronously are decoded at once rather
 * than when the walwriter flushes them.  The slot is confirmed only once
 * the batch's own (asynchronous) commit is flushed.
 *
 * After the loop, a batch whose decoded rows are all new rows (INSERTs,
 * and new rows of UPDATEs whose old row belongs to another partition) is
 * merged: the rows are aggregated and merged into the result table as a
 * table job merges its batch, without reading the source, when the
 * horizon below allows it.  A job whose aggregates are all counts and
 * integer sums (it keeps each group's row count, _stp_rows) merges old
 * rows too, subtracting them, deletes the groups whose count reached 0,
 * and takes a TRUNCATE as the deletion of every group at that point of
 * the stream: it never reads the source after its groups were built.  Any
 * other batch (an old row of an UPDATE or DELETE, whose value a min, max,
 * or an emptied group cannot take back) reads the decoded rows through
 * stp.slot_changes(), finds the partition's groups they touched, and
 * computes each of them again from the source, replacing its row in the
 * result table or deleting it when it has no row any more.  The WAL
 * position up to which the batch decoded commits with the result changes
 * in the partition's progress row; the slot is confirmed only after that
 * commit.  After a crash the slot may restart below the stored position:
 * the transactions at or below it are skipped.
 *
 * Why recomputing is exact: before the batch reads the source, it waits
 * until every transaction it decoded has left the proc array, so its
 * snapshot sees each of them.  The snapshot may also see transactions
 * committed after the decoded position; a group they touched is then
 * computed once more when they are decoded.  So once the job has decoded
 * every commit, each group was last computed under a snapshot that holds
 * every change to it, and equals the job's query.
 *
 * Why mixing merges with recomputations is exact: a merge adds exactly the
 * decoded transactions to each group, so it needs every group to hold
 * exactly the transactions up to the batch's start position P, and no
 * later one.  A recomputed group may hold later ones, those its snapshot
 * saw, and merging one of them again would count it twice.  Right after
 * taking the snapshot S that recomputes, the worker reads the WAL insert
 * position H (the recompute horizon): every transaction S sees ended
 * below H.  The batch then decodes on up to H, and checks that S sees
 * every transaction so decoded (one that left the proc array after S was
 * taken is waited for, and S and H taken again); the recomputation runs
 * under S (SPI_execute_snapshot).  So the batch ends at or past H, and a
 * recomputed group holds exactly the decoded transactions.  (A rebuild
 * after TRUNCATE, or a batch cut at batch_size, takes H after its
 * statement instead, and ends below it.)  A batch merges only when
 * P >= H; below H every batch recomputes the groups it touched, so a
 * transaction a snapshot saw early is never added as a delta.  A worker
 * that starts takes H = the insert position at its first step, which is
 * above every snapshot of an earlier process.  So the result equals the
 * job's query once every commit is decoded, whichever batches merged.
 * (A job that retracts never recomputes, so its horizon stays 0.)
 *
 * A partition whose slot is missing (never created, lost in a crash
 * before it was made persistent, or dropped by hand to rebuild the job)
 * creates it and builds its groups from the whole source, under the
 * slot's initial snapshot: every transaction that commits after it is
 * decoded, and every one before it is in the snapshot.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/resource.h>

#include "access/detoast.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogreader.h"
#include "access/xlogutils.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/origin.h"
#include "replication/output_plugin.h"
#include "replication/slot.h"
#include "replication/snapbuild.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/sinval.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"
#include "utils/varlena.h"

#include "stp.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(stp_slot_changes);

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

/*
 * What the output plugin collects for the worker's current step.  NULL in
 * every other process, and outside a step, so that the plugin does
 * nothing when a slot of ours is read otherwise.
 */
typedef struct StpDecoded
{
	Oid			relid;			/* the job's source */
	XLogRecPtr	skip_upto;		/* transactions ending at or below: applied */
	MemoryContext mcxt;			/* lives for the step */
	Tuplestorestate *rows;		/* new rows of the source */
	Tuplestorestate *old_rows;	/* old rows (UPDATE, DELETE) */
	int64		nrows;			/* in both */
	int64		nretracted;		/* of which old rows */
	bool		truncated;		/* the source was truncated: rebuild */
	bool		cleared;		/* a retracting job's rows follow a TRUNCATE */
	int			hand_over;		/* STP_NEW_ROWS | STP_OLD_ROWS: see below */
	TransactionId *xids;		/* the transactions that changed it */
	int			nxids;
	int			maxxids;
	int			natts;			/* the source's columns at the step's start */
	Oid		   *atttypes;		/* ... their types, InvalidOid if dropped */
	int32	   *atttypmods;
	bool		altered;		/* a decoded row has other column types */
	/* Routing in the change callback, when every group key is a column. */
	StpRouter  *router;			/* NULL: every row is kept */
	int			nkeys;
	AttrNumber *key_atts;		/* the key columns */
	Datum	   *key_values;
	bool	   *key_nulls;
	int32		partition;
	int32		partitions;
	int64		nforeign;		/* rows dropped as another partition's */
} StpDecoded;

static StpDecoded *decoded = NULL;

/*
 * The step's statement that reads a tuplestore for the last time gets it
 * from stp.slot_changes() as its own result, and ends it; the others get
 * a copy.
 */
#define STP_NEW_ROWS	1
#define STP_OLD_ROWS	2

/* How long a busy slot worker rests between steps: see stp_slot_step. */
#define STP_SLOT_REST		4	/* times the CPU time of its last step */
#define STP_SLOT_REST_MAX	10	/* poll intervals at most */
#define STP_SLOT_REST_ROWS	1000	/* after a step of this many rows or more */

/*
 * The position the slot may be confirmed up to once the WAL is flushed up
 * to confirm_commit_end (the commit of the batch that stored it).
 */
static XLogRecPtr confirm_upto = InvalidXLogRecPtr;
static XLogRecPtr confirm_commit_end = InvalidXLogRecPtr;

/* While a step starts decoding (see quiet_decoding_hook). */
static bool quiet_decoding = false;

/*
 * The worker's decoding context, kept from step to step with its slot
 * acquired, as a walsender keeps it: each step reads on from where the
 * last one stopped, instead of decoding again from the slot's restart
 * position.  It is dropped after an error, since the rows it decoded in
 * that step were lost with the step.
 */
static LogicalDecodingContext *decoding = NULL;

/*
 * Whether the catalog caches may be kept across the switch between
 * decoding (under historic snapshots) and the step's statements (under
 * the current catalogs): see decode_to.  caches_agree_at is the count of
 * shared invalidation messages this process had received when they last
 * agreed.
 */
static bool caches_agree = false;
static uint64 caches_agree_at = 0;
static bool decoded_catalog_changes = false;
static bool in_decode = false;	/* between decode_to's start and end */

/*
 * No transaction that a recomputation's snapshot saw ends after this WAL
 * position: it is read after each recomputing batch statement, and, since
 * an earlier process may have recomputed, at the worker's first step.  A
 * batch may merge its new rows only when it starts at or past it (see the
 * file's header).
 */
static XLogRecPtr recompute_horizon = InvalidXLogRecPtr;
static bool recompute_horizon_known = false;

/*
 * The name of a partition's slot: from the database, job and partition, so
 * that stp finds its slots again after a crash, and only its own.
 */
void
stp_slot_name(char *name, Oid dboid, int32 job_id, int32 partition)
{
	snprintf(name, NAMEDATALEN, "stp_%u_%d_%d", dboid, job_id, partition);
}

/* ---- the output plugin ---- */

/*
 * The plugin writes nothing out: it only collects rows for the worker.
 */
static void
plugin_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	opt->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
	opt->receive_rewrites = false;
}

/*
 * Drop, before the reorder buffer queues them, the changes that stp's own
 * workers write (worker.c tags them with DoNotReplicateId): no job's
 * source is written by a worker, and a table they write may be younger
 * than the slot.
 */
static bool
plugin_filter_by_origin(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	return origin_id == DoNotReplicateId;
}

/*
 * Nothing happens at a transaction's start: rolled-back transactions never
 * get here at all.
 */
static void
plugin_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
}

/*
 * A commit's changes were kept as they came.  A transaction that changed
 * the catalogs is noted: the caches that decoding filled no longer match
 * the catalogs as the step's own statements see them (decode_to).
 */
static void
plugin_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
	if (rbtxn_has_catalog_changes(txn))
		decoded_catalog_changes = true;
}

/*
 * Remember a transaction that changed the source, so that the worker can
 * wait for it to leave the proc array before it reads the source.
 */
static void
remember_xid(TransactionId xid)
{
	MemoryContext old;

	if (decoded->nxids > 0 && decoded->xids[decoded->nxids - 1] == xid)
		return;
	old = MemoryContextSwitchTo(decoded->mcxt);
	if (decoded->nxids == decoded->maxxids)
	{
		decoded->maxxids = Max(16, decoded->maxxids * 2);
		decoded->xids = decoded->xids ?
			repalloc(decoded->xids, sizeof(TransactionId) * decoded->maxxids) :
			palloc(sizeof(TransactionId) * decoded->maxxids);
	}
	decoded->xids[decoded->nxids++] = xid;
	MemoryContextSwitchTo(old);
}

/*
 * A decoded row with every value in line: the tuplestore outlives the
 * reorder buffer's memory.  A TOASTed value that the transaction wrote
 * arrives as an indirect pointer to the value that the reorder buffer put
 * together, and is copied.  In a new row, a TOASTed value that the UPDATE
 * left unchanged arrives as a pointer to the old value on disk, which the
 * old row (REPLICA IDENTITY FULL logs it whole) holds.
 */
static HeapTuple
row_in_line(Relation relation, HeapTuple tuple, HeapTuple old_tuple)
{
	TupleDesc	desc = RelationGetDescr(relation);
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	Datum	   *old_values = NULL;
	bool	   *old_nulls = NULL;

	heap_deform_tuple(tuple, desc, values, nulls);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->attlen != -1 || nulls[i] ||
			!VARATT_IS_EXTERNAL(DatumGetPointer(values[i])))
			continue;
		if (!VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(values[i])))
		{
			values[i] = PointerGetDatum(detoast_external_attr((struct varlena *)
															  DatumGetPointer(values[i])));
			continue;
		}
		if (old_tuple == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a decoded row of table %s lacks the unchanged value of column \"%s\"",
							RelationGetRelationName(relation), NameStr(att->attname)),
					 errhint("Run ALTER TABLE %s REPLICA IDENTITY FULL.",
							 RelationGetRelationName(relation))));
		if (old_values == NULL)
		{
			old_values = palloc(sizeof(Datum) * desc->natts);
			old_nulls = palloc(sizeof(bool) * desc->natts);
			heap_deform_tuple(old_tuple, desc, old_values, old_nulls);
		}
		values[i] = old_values[i];
		nulls[i] = old_nulls[i];
		if (!nulls[i] && VARATT_IS_EXTERNAL(DatumGetPointer(values[i])))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a decoded row of table %s lacks the unchanged value of column \"%s\"",
							RelationGetRelationName(relation), NameStr(att->attname)),
					 errhint("Run ALTER TABLE %s REPLICA IDENTITY FULL.",
							 RelationGetRelationName(relation))));
	}
	return heap_form_tuple(desc, values, nulls);
}

/*
 * Keep one decoded row; the tuplestore copies it.
 */
static void
keep_row(Relation relation, HeapTuple tuple, HeapTuple old_tuple, bool retracted)
{
	HeapTuple	row = tuple;

	if (HeapTupleHasExternal(tuple))
		row = row_in_line(relation, tuple, old_tuple);
	tuplestore_puttuple(retracted ? decoded->old_rows : decoded->rows, row);
	decoded->nrows++;
	if (retracted)
		decoded->nretracted++;
}

/*
 * Do rows of descriptor desc have the column types that the source had at
 * the step's start?  A row that a transaction wrote before an ALTER
 * COLUMN ... TYPE must not be read as a row of the new type.  Dropped
 * columns and columns added later do not matter.
 */
static bool
same_column_types(TupleDesc desc)
{
	for (int i = 0; i < desc->natts && i < decoded->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || !OidIsValid(decoded->atttypes[i]))
			continue;
		if (att->atttypid != decoded->atttypes[i] || att->atttypmod != decoded->atttypmods[i])
			return false;
	}
	return true;
}

/*
 * Does the worker's partition own the group of this decoded row?  Only
 * asked when every group key is a plain column of the source (the
 * router); the keys are hashed as stp.in_partition hashes them, so the
 * batch statement's own filter, which stays, keeps the same rows.  A key
 * that is stored out of line (TOASTed) or a column the row lacks is not
 * looked at here: such a row is kept, and left to that filter.
 */
static bool
row_is_ours(HeapTuple tuple, TupleDesc desc)
{
	for (int i = 0; i < decoded->nkeys; i++)
	{
		AttrNumber	attnum = decoded->key_atts[i];
		Form_pg_attribute att;

		if (attnum > desc->natts)
			return true;
		att = TupleDescAttr(desc, attnum - 1);
		if (att->attisdropped)
			return true;
		decoded->key_values[i] = heap_getattr(tuple, attnum, desc, &decoded->key_nulls[i]);
		if (!decoded->key_nulls[i] && att->attlen == -1 &&
			VARATT_IS_EXTERNAL(DatumGetPointer(decoded->key_values[i])))
			return true;
	}
	if (stp_router_route(decoded->router, decoded->key_values, decoded->key_nulls,
						 decoded->partitions) == decoded->partition)
		return true;
	decoded->nforeign++;
	return false;
}

/*
 * Keep a decoded row if its group may be the partition's own.
 */
static bool
keep_own_row(Relation relation, HeapTuple tuple, HeapTuple old_tuple,
			 bool retracted)
{
	if (decoded->router != NULL && !row_is_ours(tuple, RelationGetDescr(relation)))
		return false;
	keep_row(relation, tuple, old_tuple, retracted);
	return true;
}

/*
 * Keep the old and new rows of a change to the job's source; drop every
 * other change at once, those of transactions already applied, and (with
 * a router) the rows of other partitions' groups.
 */
static void
plugin_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			  Relation relation, ReorderBufferChange *change)
{
	HeapTuple	newtup = NULL;
	HeapTuple	oldtup = NULL;
	bool		kept = false;

	if (decoded == NULL || RelationGetRelid(relation) != decoded->relid ||
		txn->end_lsn <= decoded->skip_upto)
		return;

	if (!same_column_types(RelationGetDescr(relation)))
	{
		decoded->altered = true;
		return;
	}
	if (change->data.tp.newtuple)
		newtup = &change->data.tp.newtuple->tuple;
	if (change->data.tp.oldtuple)
		oldtup = &change->data.tp.oldtuple->tuple;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			if (newtup)
				kept = keep_own_row(relation, newtup, NULL, false);
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
		case REORDER_BUFFER_CHANGE_DELETE:
			if (oldtup == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("a decoded UPDATE or DELETE of table %s has no old row",
								RelationGetRelationName(relation)),
						 errhint("Run ALTER TABLE %s REPLICA IDENTITY FULL.",
								 RelationGetRelationName(relation))));
			kept = keep_own_row(relation, oldtup, NULL, true);
			if (newtup)
				kept |= keep_own_row(relation, newtup, oldtup, false);
			break;
		default:
			return;
	}
	/* A transaction that changed none of the partition's groups: no wait. */
	if (kept)
		remember_xid(txn->xid);
}

/*
 * A TRUNCATE of the source.  A job that retracts old rows holds exactly
 * the decoded changes, so it empties the partition's groups at this point
 * of the stream: the rows kept so far are dropped, and the batch deletes
 * the groups before it merges the rows decoded after the TRUNCATE.  Any
 * other job builds its groups again from the source.
 */
static void
plugin_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				int nrelations, Relation relations[], ReorderBufferChange *change)
{
	if (decoded == NULL || txn->end_lsn <= decoded->skip_upto)
		return;
	for (int i = 0; i < nrelations; i++)
	{
		if (RelationGetRelid(relations[i]) != decoded->relid)
			continue;
		if (stp_worker.def->slot_retract)
		{
			tuplestore_clear(decoded->rows);
			tuplestore_clear(decoded->old_rows);
			decoded->nrows = 0;
			decoded->nretracted = 0;
			decoded->cleared = true;
		}
		else
			decoded->truncated = true;
		remember_xid(txn->xid);
	}
}

/*
 * The output plugin "stp", in the extension's own library.
 */
void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = plugin_startup;
	cb->begin_cb = plugin_begin;
	cb->change_cb = plugin_change;
	cb->truncate_cb = plugin_truncate;
	cb->commit_cb = plugin_commit;
	cb->filter_by_origin_cb = plugin_filter_by_origin;
}

/*
 * stp.slot_changes(NULL::source) returns the rows that the worker's
 * current step decoded, as rows of the source's type; nothing in any
 * other process or for another type.  stp.slot_changes(NULL::source, old)
 * returns only the old rows (of UPDATEs and DELETEs) when old is true, and
 * only the new ones when it is false.
 */
Datum
stp_slot_changes(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TupleTableSlot *slot;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (decoded == NULL ||
		rsinfo->setDesc->tdtypeid != get_rel_type_id(decoded->relid))
		return (Datum) 0;
	if (!same_column_types(rsinfo->setDesc))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the column types of source %s changed while the job decoded its changes",
						stp_qualified_relname(decoded->relid)),
				 errhint("Drop the job and create it again.")));

	slot = MakeSingleTupleTableSlot(rsinfo->setDesc, &TTSOpsMinimalTuple);
	for (int old = 0; old <= 1; old++)
	{
		Tuplestorestate *rows = old ? decoded->old_rows : decoded->rows;
		int			which = old ? STP_OLD_ROWS : STP_NEW_ROWS;

		if (PG_NARGS() > 1 && !PG_ARGISNULL(1) && PG_GETARG_BOOL(1) != (bool) old)
			continue;
		if (rows == NULL)
			elog(ERROR, "the decoded rows were read already");
		tuplestore_rescan(rows);
		if (PG_NARGS() > 1 && !PG_ARGISNULL(1) && (decoded->hand_over & which))
		{
			/* The last read: the executor ends the tuplestore. */
			tuplestore_end(rsinfo->setResult);
			rsinfo->setResult = rows;
			if (old)
				decoded->old_rows = NULL;
			else
				decoded->rows = NULL;
			continue;
		}
		while (tuplestore_gettupleslot(rows, true, false, slot))
			tuplestore_puttupleslot(rsinfo->setResult, slot);
	}
	ExecDropSingleTupleTableSlot(slot);
	return (Datum) 0;
}

/* ---- the worker's side ---- */

/*
 * The CPU time this process used, in microseconds.
 */
static int64
process_cpu_us(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0;
	return (int64) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
		ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

/*
 * Forget what the last step collected.
 */
static void
decoded_reset(void)
{
	if (decoded == NULL)
		return;
	if (decoded->rows)
		tuplestore_end(decoded->rows);
	if (decoded->old_rows)
		tuplestore_end(decoded->old_rows);
	MemoryContextDelete(decoded->mcxt);
	decoded = NULL;
}

/*
 * With more than one partition, route the decoded rows in the change
 * callback when every group key is a plain column of the source (its
 * deparsed expression is the column's quoted name): the tuplestore then
 * holds the partition's rows only.  Other keys (expressions, collations
 * other than the column's) leave the routing to the batch statement.
 * Called in the step's memory context, outside any historic snapshot.
 */
static void
setup_router(TupleDesc desc)
{
	StpJobDef  *def = stp_worker.def;
	int			nkeys = list_length(def->key_exprs);
	Oid		   *types;
	Oid		   *colls;
	ListCell   *lc;

	if (def->partitions <= 1 || nkeys == 0)
		return;
	types = palloc(sizeof(Oid) * nkeys);
	colls = palloc(sizeof(Oid) * nkeys);
	decoded->key_atts = palloc(sizeof(AttrNumber) * nkeys);
	foreach(lc, def->key_exprs)
	{
		const char *expr = lfirst(lc);
		int			k = foreach_current_index(lc);
		AttrNumber	found = InvalidAttrNumber;

		for (int i = 0; i < desc->natts && found == InvalidAttrNumber; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (!att->attisdropped &&
				strcmp(expr, quote_identifier(NameStr(att->attname))) == 0)
			{
				found = att->attnum;
				types[k] = att->atttypid;
				colls[k] = att->attcollation;
			}
		}
		if (found == InvalidAttrNumber)
			return;				/* an expression: the batch statement routes */
		decoded->key_atts[k] = found;
	}
	decoded->nkeys = nkeys;
	decoded->key_values = palloc(sizeof(Datum) * nkeys);
	decoded->key_nulls = palloc(sizeof(bool) * nkeys);
	decoded->partition = stp_worker.args.partition;
	decoded->partitions = def->partitions;
	decoded->router = stp_router_create(nkeys, types, colls);
}

/*
 * Start collecting for one step.  The tuplestores (new rows, old rows) are
 * not tied to the transaction's resource owner: the reorder buffer's
 * subtransactions abort around every callback, and must not close their
 * files.
 */
static void
decoded_begin(Oid relid, XLogRecPtr skip_upto)
{
	MemoryContext mcxt = AllocSetContextCreate(TopMemoryContext, "stp decoded rows",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);

	decoded_reset();
	decoded = palloc0(sizeof(StpDecoded));
	decoded->mcxt = mcxt;
	decoded->relid = relid;
	decoded->skip_upto = skip_upto;
	decoded->rows = tuplestore_begin_heap(false, true, work_mem);
	tuplestore_set_eflags(decoded->rows, EXEC_FLAG_REWIND);
	decoded->old_rows = tuplestore_begin_heap(false, true, work_mem);
	tuplestore_set_eflags(decoded->old_rows, EXEC_FLAG_REWIND);

	/* The source's column types now, outside any historic snapshot. */
	{
		Relation	rel = try_relation_open(relid, AccessShareLock);
		TupleDesc	desc;

		if (rel == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the source table of job \"%s\" was dropped",
							stp_worker.def->job_name)));
		desc = RelationGetDescr(rel);
		decoded->natts = desc->natts;
		decoded->atttypes = palloc(sizeof(Oid) * Max(desc->natts, 1));
		decoded->atttypmods = palloc(sizeof(int32) * Max(desc->natts, 1));
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			decoded->atttypes[i] = att->attisdropped ? InvalidOid : att->atttypid;
			decoded->atttypmods[i] = att->atttypmod;
		}
		setup_router(desc);
		relation_close(rel, NoLock);
	}
	MemoryContextSwitchTo(old);
}

/*
 * Forget the decoding context and release the slot.  After an error
 * (clean = false) the context may be in the middle of a transaction's
 * replay: its memory is dropped without its callbacks, its WAL segment
 * closed; the spill files it left are removed by the next context on
 * the slot.
 */
static void
decoding_end(bool clean)
{
	if (decoding != NULL)
	{
		if (clean)
			FreeDecodingContext(decoding);
		else
		{
			XLogReaderFree(decoding->reader);
			MemoryContextDelete(decoding->context);
		}
		decoding = NULL;
	}
	caches_agree = false;
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();
}

/*
 * After an error in a step: release the slot (an ephemeral one, not yet
 * built, is dropped) and forget the decoded rows.  Called by worker.c
 * after it aborted the transaction.
 */
void
stp_slot_abort(void)
{
	quiet_decoding = false;
	decoding_end(false);
	decoded_reset();
	if (in_decode)
	{
		/*
		 * The error came while decoding: entries built under a historic
		 * snapshot must not serve the statements that record it.
		 */
		in_decode = false;
		StartTransactionCommand();
		InvalidateSystemCaches();
		CommitTransactionCommand();
	}
}

/*
 * The routines with which a partition worker reads the local WAL.
 */
static XLogReaderRoutine *
local_wal_routine(void)
{
	static XLogReaderRoutine routine;

	routine.page_read = read_local_xlog_page;
	routine.segment_open = wal_segment_open;
	routine.segment_close = wal_segment_close;
	return &routine;
}

/*
 * Lock the partition's progress row, fenced on the position the worker
 * has, as a table job's batch does.  Returns false if the job was stopped
 * or dropped meanwhile.
 */
static bool
lock_progress(void)
{
	Datum		values[3];
	int			ret;

	values[0] = Int32GetDatum(stp_worker.args.job_id);
	values[1] = Int32GetDatum(stp_worker.args.partition);
	values[2] = Int64GetDatum(stp_worker.offset);
	ret = stp_catalog_exec_plan(stp_worker.lock_plan, values);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not lock the partition's progress: %s", SPI_result_code_string(ret));
	if (SPI_processed == 1)
		return true;
	ret = stp_catalog_exec("SELECT 1 FROM stp.jobs j JOIN stp.partitions p ON p.job_id OPERATOR(pg_catalog.=) j.job_id "
						   "WHERE j.job_id OPERATOR(pg_catalog.=) $1 AND p.partition OPERATOR(pg_catalog.=) $2 "
						   "AND j.state OPERATOR(pg_catalog.=) 'running' AND NOT p.failed",
						   2, (Oid[]) {INT4OID, INT4OID}, values, NULL, false, 1);
	if (SPI_processed == 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("progress of job %d partition %d moved under its worker",
						stp_worker.args.job_id, stp_worker.args.partition)));
	return false;
}

/*
 * Advance the partition's progress row to upto, counting rows.
 */
static void
store_progress(XLogRecPtr upto, int64 rows)
{
	Datum		values[4];
	int			ret;

	values[0] = Int32GetDatum(stp_worker.args.job_id);
	values[1] = Int32GetDatum(stp_worker.args.partition);
	values[2] = Int64GetDatum((int64) upto);
	values[3] = Int64GetDatum(rows);
	ret = stp_catalog_exec_plan(stp_worker.progress_plan, values);
	if (ret != SPI_OK_UPDATE || SPI_processed != 1)
		elog(ERROR, "progress update failed: %s", SPI_result_code_string(ret));
}

/*
 * Delete the partition's groups from the result table.
 */
static void
clear_groups(void)
{
	int			ret;

	ret = SPI_execute(stp_slot_clear_sql(stp_worker.def, stp_worker.args.partition), false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "could not clear the partition's groups: %s", SPI_result_code_string(ret));
}

/*
 * Merge the decoded rows into the partition's groups: the new rows only,
 * or, for a job that retracts, the new rows less the old ones, and then
 * delete the groups that lost their last row, in the same transaction.
 */
static void
merge_decoded(Datum *values)
{
	bool		isnull;
	int			ret;

	if (decoded->nretracted == 0)
	{
		decoded->hand_over = STP_NEW_ROWS;
		ret = SPI_execute_plan(stp_worker.slot_merge_plan, values, NULL, false, 0);
	}
	else
	{
		/* The deletion reads the old rows again. */
		decoded->hand_over = STP_NEW_ROWS;
		ret = SPI_execute_plan(stp_worker.slot_retract_plan, values, NULL, false, 0);
		if (ret == SPI_OK_SELECT && SPI_processed == 1 && stp_worker.def->slot_retract &&
			DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										3, &isnull)) > 0)
		{
			decoded->hand_over = STP_OLD_ROWS;
			ret = SPI_execute_plan(stp_worker.slot_delete_plan, values, NULL, false, 0);
		}
	}
	decoded->hand_over = 0;
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "batch statement failed: %s", SPI_result_code_string(ret));
}

/*
 * Build the partition's groups from the whole source under the current
 * snapshot: delete its rows from the result table, insert them again.
 * Returns the number of groups.
 */
static int64
rebuild_groups(void)
{
	StpJobDef  *def = stp_worker.def;
	int			ret;

	clear_groups();
	ret = SPI_execute(stp_slot_fill_sql(def, stp_worker.args.partition), false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "could not build the partition's groups: %s", SPI_result_code_string(ret));
	return (int64) SPI_processed;
}

/*
 * Create the partition's slot and build its groups under the slot's
 * initial snapshot, in one REPEATABLE READ transaction; the slot is made
 * persistent once the groups and the slot's start position committed.
 * A crash before that drops the ephemeral slot, and the next worker
 * starts over.  Returns false if the job was stopped or dropped.
 */
static bool
create_slot(const char *name, bool *stop)
{
	MemoryContext caller_ctx = CurrentMemoryContext;
	LogicalDecodingContext *ctx;
	Snapshot	snap;
	XLogRecPtr	start;
	int			nestlevel;
	int64		groups;

	decoding_end(true);
	pgstat_report_activity(STATE_RUNNING, "stp: creating the partition's replication slot");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	XactIsoLevel = XACT_REPEATABLE_READ;
	MemoryContextSwitchTo(caller_ctx);

	CheckLogicalDecodingRequirements();
	ReplicationSlotCreate(name, true, RS_EPHEMERAL, false);
	/*
	 * The context that finds the start point decodes on from there in the
	 * steps that follow (it lives, and its reader keeps its buffers, in
	 * TopMemoryContext): a new context would start over from the slot's
	 * restart point, older than the start point, and build its snapshot
	 * again from there.
	 */
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		ctx = CreateInitDecodingContext("stp", NIL, true, InvalidXLogRecPtr,
										local_wal_routine(), NULL, NULL, NULL);
		decoding = ctx;
		MemoryContextSwitchTo(ctx->context);
		DecodingContextFindStartpoint(ctx);
		MemoryContextSwitchTo(old);
	}
	start = MyReplicationSlot->data.confirmed_flush;

	InvalidateCatalogSnapshot();
	snap = SnapBuildInitialSnapshot(ctx->snapshot_builder);
	RestoreTransactionSnapshot(snap, MyProc);

	nestlevel = stp_pin_worker_settings();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!lock_progress())
	{
		PopActiveSnapshot();
		SPI_finish();
		FreeDecodingContext(ctx);
		decoding = NULL;
		AbortCurrentTransaction();
		ReplicationSlotRelease();
		MemoryContextSwitchTo(caller_ctx);
		*stop = true;
		return false;
	}
	(void) stp_guard_tables(false, NULL);
	pgstat_report_activity(STATE_RUNNING, "stp: building the partition's groups");
	groups = rebuild_groups();
	if (stp_worker.recheck)
		stp_check_job_relations();
	store_progress(start, 0);
	PopActiveSnapshot();
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);

	/*
	 * The slot becomes persistent at the built groups' position: their
	 * commit must not be lost behind it.
	 */
	XLogFlush(XactLastCommitEnd);
	ReplicationSlotPersist();
	confirm_upto = InvalidXLogRecPtr;
	stp_worker.offset = start;
	ereport(LOG,
			(errmsg("stp job \"%s\" partition %d built " INT64_FORMAT " groups and decodes slot \"%s\" from %X/%X",
					stp_worker.def->job_name, stp_worker.args.partition, groups, name,
					LSN_FORMAT_ARGS(start))));
	pgstat_report_activity(STATE_IDLE, NULL);
	return true;
}

/*
 * Does a slot of this name exist?  stp_slot_step creates a missing one;
 * one that exists while the partition has no progress stored (made by
 * hand under stp's name) is dropped and made again.
 */
static bool
slot_exists(const char *name)
{
	ReplicationSlot *s;
	bool		found;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	s = SearchNamedReplicationSlot(name, false);
	found = (s != NULL);
	LWLockRelease(ReplicationSlotControlLock);
	return found;
}

/*
 * Decoding says at LOG where it starts, at every start: each step of every
 * partition would write two lines to the server log.  While a step starts
 * decoding, those two messages stay out of it; every other message,
 * errors included, goes through.
 */
static emit_log_hook_type prev_emit_log_hook = NULL;
static bool quiet_hook_set = false;

static void
quiet_decoding_hook(ErrorData *edata)
{
	if (quiet_decoding && edata->elevel == LOG && edata->message != NULL &&
		(strncmp(edata->message, "starting logical decoding for slot", 34) == 0 ||
		 strncmp(edata->message, "logical decoding found consistent point", 39) == 0))
		edata->output_to_server = false;
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
quiet_decoding_start(void)
{
	if (!quiet_hook_set)
	{
		prev_emit_log_hook = emit_log_hook;
		emit_log_hook = quiet_decoding_hook;
		quiet_hook_set = true;
	}
	quiet_decoding = true;
}

/*
 * Is a process using the slot?
 */
static bool
slot_active(const char *name)
{
	ReplicationSlot *s;
	bool		active;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	s = SearchNamedReplicationSlot(name, false);
	active = (s != NULL && s->active_pid != 0);
	LWLockRelease(ReplicationSlotControlLock);
	return active;
}

/*
 * The end of the WAL inserted so far: every record inserted before the
 * call ends at or below it.  GetXLogInsertRecPtr() gives the position where
 * the next record would start, which, at a page boundary, is past the next
 * page's header: a page nobody wrote yet.  Flushing up to there fails
 * ("xlog flush request ... is not satisfied"), and decoding up to there
 * waits for a record that may never come.
 */
XLogRecPtr
stp_wal_insert_end(void)
{
	XLogRecPtr	insert = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(insert, wal_segment_size) == SizeOfXLogLongPHD)
		return insert - SizeOfXLogLongPHD;
	if (insert % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		return insert - SizeOfXLogShortPHD;
	return insert;
}

/*
 * Flush the WAL up to the current insert position, if part of it is not
 * flushed yet, so that a step decodes every transaction that has
 * committed, including those that committed asynchronously, which the
 * walwriter writes and flushes only every wal_writer_delay.  Decoding
 * reads flushed WAL only, as PostgreSQL's own decoding does.  When another
 * process holds WALWriteLock it is flushing the WAL already, and the
 * worker does not queue behind its fsync: the step decodes what is
 * flushed, and the next step the rest.
 */
static void
flush_inserted_wal(void)
{
	XLogRecPtr	insert = stp_wal_insert_end();

	if (insert > GetFlushRecPtr(NULL) &&
		LWLockConditionalAcquire(WALWriteLock, LW_SHARED))
	{
		LWLockRelease(WALWriteLock);
		XLogFlush(insert);
	}
}

/*
 * Confirm the slot up to the position of the last batch that committed,
 * once that commit is flushed: the worker commits asynchronously, and a
 * slot confirmed past a commit that a crash then loses would skip the
 * batch's transactions for good.  Until then the slot keeps them, and
 * after a crash the stored position says which to skip.  A worker that
 * has caught up (flush) flushes the commit itself, so that stp_wait, which
 * waits for the slot's confirmed position, returns without waiting for
 * the walwriter.
 */
static void
confirm_durable(bool flush)
{
	if (XLogRecPtrIsInvalid(confirm_upto))
		return;
	if (GetFlushRecPtr(NULL) < confirm_commit_end)
	{
		if (!flush)
			return;
		XLogFlush(confirm_commit_end);
	}
	if (confirm_upto > MyReplicationSlot->data.confirmed_flush)
		LogicalConfirmReceivedLocation(confirm_upto);
	confirm_upto = InvalidXLogRecPtr;
}

/*
 * Wait until the decoded transactions from the from-th on have left the
 * proc array.  Their commit records are decoded, so they have committed;
 * one that a snapshot taken now does not show as running has left the
 * proc array already, and most have: the lock table is visited only for
 * the others, not once per transaction (a step of single-row
 * transactions decodes thousands).
 */
static void
wait_for_decoded(int from)
{
	Snapshot	now = GetLatestSnapshot();

	for (int i = from; i < decoded->nxids; i++)
	{
		if (XidInMVCCSnapshot(decoded->xids[i], now))
			XactLockTableWait(decoded->xids[i], NULL, NULL, XLTW_None);
	}
}

/*
 * Decode the WAL up to end (with limited, stopping once the step holds
 * batch_size rows), in the step's transaction, restoring its resource
 * owner and memory context.
 */
static void
decode_to(LogicalDecodingContext *ctx, XLogRecPtr end, bool limited,
		  ResourceOwner owner, MemoryContext caller_ctx)
{
	bool		caches_reset = false;

	quiet_decoding_start();

	/*
	 * As pg_logical_slot_get_changes does, decoding starts and ends with
	 * empty catalog caches: an entry built under the current catalogs may
	 * be newer than the WAL being decoded, and one built under a historic
	 * snapshot older than the catalogs.  Emptying them costs the step its
	 * plans and relation descriptors, and under a steady stream of small
	 * transactions that is most of its work, so they are kept when no
	 * catalog change can lie between the two:
	 *
	 * - this process received no invalidation message since the caches
	 *   last agreed (at the end of the previous decoding).  A catalog
	 *   change that commits sends its messages after its commit record;
	 *   one the process has not received yet invalidates, when it is,
	 *   whatever entries it touches.  A change to the source itself needs
	 *   an AccessExclusiveLock, so it commits between two steps and its
	 *   messages are received when the step locks the source, before it
	 *   decodes;
	 * - no decoded transaction changed the catalogs (plugin_commit): the
	 *   reorder buffer applies its invalidations at its place in the WAL,
	 *   but the entries built before it served the statements before.
	 */
	InvalidateCatalogSnapshot();
	if (!caches_agree || SharedInvalidMessageCounter != caches_agree_at)
	{
		InvalidateSystemCaches();
		caches_reset = true;
	}
	caches_agree = false;
	decoded_catalog_changes = false;
	in_decode = true;
	while (ctx->reader->EndRecPtr < end)
	{
		XLogRecord *record;
		char	   *errm = NULL;

		/*
		 * The reader allocates its decode and record buffers when it
		 * first needs them, and keeps them: in the context's memory, which
		 * outlives the step.
		 */
		MemoryContext old = MemoryContextSwitchTo(ctx->context);

		record = XLogReadRecord(ctx->reader, &errm);
		MemoryContextSwitchTo(old);
		if (errm)
			elog(ERROR, "could not read the WAL for logical decoding: %s", errm);
		if (record != NULL)
			LogicalDecodingProcessRecord(ctx, ctx->reader);
		if (limited && decoded->nrows >= stp_worker.def->batch_size)
			break;
		CHECK_FOR_INTERRUPTS();
	}
	CurrentResourceOwner = owner;
	InvalidateCatalogSnapshot();
	if (caches_reset || decoded_catalog_changes ||
		SharedInvalidMessageCounter != caches_agree_at)
		InvalidateSystemCaches();
	caches_agree = true;
	caches_agree_at = SharedInvalidMessageCounter;
	in_decode = false;
	quiet_decoding = false;
	MemoryContextSwitchTo(caller_ctx);
}

/*
 * Roll back a step that decoded but applies nothing, with its snapshot
 * and SPI connection: the slot is not confirmed, so a new decoding context
 * decodes the same transactions again.
 */
static void
abandon_step(MemoryContext caller_ctx)
{
	PopActiveSnapshot();
	SPI_finish();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(caller_ctx);
	decoding_end(false);
	decoded_reset();
}

/*
 * One step of a slot job's partition: decode the WAL from the slot up to
 * the flushed position (or batch_size rows), then apply the touched groups
 * and the position in one transaction, and confirm the slot after it
 * committed.  Returns whether it did work; sets *stop when the job was
 * stopped or dropped.
 */
bool
stp_slot_step(bool *stop)
{
	char		name[NAMEDATALEN];
	MemoryContext caller_ctx = CurrentMemoryContext;
	ResourceOwner owner;
	LogicalDecodingContext *ctx;
	XLogRecPtr	end;
	XLogRecPtr	upto;
	int			nestlevel;
	int64		rows;
	bool		merge;
	Snapshot	snap = NULL;
	XLogRecPtr	horizon = InvalidXLogRecPtr;
	Datum		values[2] = {Int64GetDatum(0), Int64GetDatum(0)};
	int			ret;
	Oid			busy = InvalidOid;
	TimestampTz started = GetCurrentTimestamp();
	int64		cpu_started = process_cpu_us();

	if (!recompute_horizon_known)
	{
		/* A job that retracts old rows computes no group from the source. */
		recompute_horizon = stp_worker.def->slot_retract ? InvalidXLogRecPtr :
			stp_wal_insert_end();
		recompute_horizon_known = true;
	}
	stp_slot_name(name, MyDatabaseId, stp_worker.args.job_id, stp_worker.args.partition);
	if (!slot_exists(name))
	{
		if (stp_worker.offset != 0)
			ereport(LOG,
					(errmsg("stp job \"%s\" partition %d has no replication slot \"%s\": it builds its groups again",
							stp_worker.def->job_name, stp_worker.args.partition, name)));
		return create_slot(name, stop);
	}
	if (stp_worker.offset == 0)
	{
		/* A slot whose groups were never built: start over. */
		ReplicationSlotDrop(name, true);
		return create_slot(name, stop);
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);
	if (decoding == NULL)
		ReplicationSlotAcquire(name, true);
	if (XLogRecPtrIsInvalid(MyReplicationSlot->data.restart_lsn))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replication slot \"%s\" of job \"%s\" was invalidated",
						name, stp_worker.def->job_name),
				 errdetail("The server removed WAL that the slot still needed, as max_slot_wal_keep_size allows."),
				 errhint("Drop the slot with pg_drop_replication_slot('%s'), then run stp_resume_job('%s'): the partition builds its groups again.",
						 name, stp_worker.def->job_name)));

	pgstat_report_activity(STATE_RUNNING, "stp: decoding");

	/*
	 * The end first, then the source's column types (decoded_begin locks
	 * the source until the batch commits): every row up to the end was
	 * written before the types were read, so a row of the types before an
	 * ALTER is told from a row of the types after it.
	 *
	 * Decoding reads only flushed WAL.  A transaction that committed with
	 * synchronous_commit = off is flushed by the walwriter up to
	 * wal_writer_delay (200 ms by default) later, and would wait that long
	 * for its group: the worker flushes the WAL up to the insert position
	 * itself, unless another process is flushing it already
	 * (flush_inserted_wal).
	 */
	flush_inserted_wal();
	confirm_durable(false);
	end = GetFlushRecPtr(NULL);
	decoded_begin(stp_worker.def->source, (XLogRecPtr) stp_worker.offset);
	owner = CurrentResourceOwner;

	if (decoding == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		quiet_decoding_start();
		decoding = CreateDecodingContext(InvalidXLogRecPtr, NIL, false, local_wal_routine(),
										 NULL, NULL, NULL);
		MemoryContextSwitchTo(old);
		XLogBeginRead(decoding->reader, MyReplicationSlot->data.restart_lsn);
	}
	ctx = decoding;
	decode_to(ctx, end, true, owner, caller_ctx);
	upto = Max(ctx->reader->EndRecPtr, MyReplicationSlot->data.confirmed_flush);

	if (decoded->altered)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the column types of source %s changed after job \"%s\" was created",
						stp_qualified_relname(stp_worker.def->source), stp_worker.def->job_name),
				 errdetail("The WAL holds rows of the source with other column types than it has now."),
				 errhint("Drop the job and create it again.")));

	if (decoded->nrows == 0 && !decoded->truncated && !decoded->cleared)
	{
		/*
		 * Nothing for the source: the result holds every change up to upto
		 * already.  The slot moves on without a write, so an idle worker
		 * writes no WAL of its own, and stp_wait sees the position.
		 */
		CommitTransactionCommand();
		MemoryContextSwitchTo(caller_ctx);
		if (upto > confirm_upto)
			confirm_upto = upto;
		confirm_durable(true);
		decoded_reset();
		stp_worker.slot->caught_up_at = GetCurrentTimestamp();
		pgstat_report_activity(STATE_IDLE, NULL);
		return false;
	}

	stp_set_slot_state(STP_WS_RUNNING);

	/* Groups emptied by a TRUNCATE that the batch cannot merge after: rebuild. */
	if (decoded->cleared && (XLogRecPtr) stp_worker.offset < recompute_horizon)
		decoded->truncated = true;

	/*
	 * New rows only (or a job whose merges retract old rows), and no
	 * recomputation's snapshot saw any of their transactions: merge them,
	 * as a table job merges its batch.
	 */
	merge = (!decoded->truncated &&
			 (decoded->nretracted == 0 || stp_worker.def->slot_retract) &&
			 (XLogRecPtr) stp_worker.offset >= recompute_horizon);

	/*
	 * Every decoded transaction must be visible to the snapshot that
	 * recomputes.  That snapshot may see later transactions too, up to the
	 * insert position read after it (the horizon): the step decodes on up
	 * to there, so that the next batch need not recompute what this one
	 * saw.  A transaction decoded so that the snapshot does not see (it
	 * left the proc array after the snapshot) is waited for, and the
	 * snapshot taken again.
	 */
	pgstat_report_activity(STATE_RUNNING, "stp: waiting for decoded transactions to end");
	if (merge)
	{
		/*
		 * A merge reads no snapshot, but a later batch's recomputation
		 * must see what this one merged: these transactions leave the
		 * proc array before the batch commits.
		 */
		wait_for_decoded(0);
	}
	else
	{
		int			waited = 0;

		for (;;)
		{
			bool		unseen = false;

			wait_for_decoded(waited);
			waited = decoded->nxids;
			if (snap != NULL)
				UnregisterSnapshot(snap);
			snap = RegisterSnapshot(GetTransactionSnapshot());
			horizon = stp_wal_insert_end();
			if (decoded->truncated || decoded->nrows >= stp_worker.def->batch_size ||
				upto >= horizon)
				break;
			pgstat_report_activity(STATE_RUNNING, "stp: decoding up to the snapshot");
			if (horizon > GetFlushRecPtr(NULL))
				XLogFlush(horizon);
			decode_to(ctx, horizon, false, owner, caller_ctx);
			upto = Max(ctx->reader->EndRecPtr, upto);
			if (decoded->altered)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("the column types of source %s changed after job \"%s\" was created",
								stp_qualified_relname(stp_worker.def->source), stp_worker.def->job_name),
						 errdetail("The WAL holds rows of the source with other column types than it has now."),
						 errhint("Drop the job and create it again.")));
			for (int i = waited; i < decoded->nxids; i++)
				unseen |= XidInMVCCSnapshot(decoded->xids[i], snap);
			if (!unseen)
				break;
			/* Rare: wait for those, and take the snapshot again. */
		}
	}

	nestlevel = stp_pin_worker_settings();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!lock_progress())
	{
		abandon_step(caller_ctx);
		*stop = true;
		return false;
	}
	if (!stp_guard_tables(true, &busy))
	{
		/*
		 * A table lock that is not free at once is waited for without the
		 * progress row (see guard_tables); the step decodes again.
		 */
		abandon_step(caller_ctx);
		stp_wait_for_table(busy);
		return true;
	}

	pgstat_report_activity(STATE_RUNNING, "stp: batch");
	if (decoded->truncated)
	{
		(void) rebuild_groups();
		/* Every snapshot the rebuild took is older than this position. */
		recompute_horizon = stp_wal_insert_end();
	}
	else if (merge)
	{
		/* A TRUNCATE first empties the groups (see plugin_truncate). */
		if (decoded->cleared)
			clear_groups();
		if (decoded->nrows > 0)
			merge_decoded(values);
	}
	else
	{
		/* Under the snapshot that saw every decoded transaction. */
		ret = SPI_execute_snapshot(stp_worker.batch_plan, values, NULL, snap,
								   InvalidSnapshot, false, false, 0);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "batch statement failed: %s", SPI_result_code_string(ret));
		recompute_horizon = horizon;
	}
	if (snap != NULL)
	{
		UnregisterSnapshot(snap);
		snap = NULL;
	}
	if (stp_worker.recheck)
		stp_check_job_relations();
	rows = decoded->nrows;
	store_progress(upto, rows);
	PopActiveSnapshot();
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_ctx);

	/* Only once this commit is flushed may the slot forget the batch. */
	confirm_upto = upto;
	confirm_commit_end = XactLastCommitEnd;
	confirm_durable(false);
	decoded_reset();
	pgstat_report_activity(STATE_IDLE, NULL);

	stp_worker.offset = (int64) upto;
	stp_worker.rows_processed += rows;
	stp_count_rows(stp_worker.slot, rows);

	/*
	 * Each step has a fixed cost (its transaction, the flush, the progress
	 * row, and its plans again whenever the catalog caches were emptied),
	 * and merges about one group per transaction it decoded.  Under a
	 * steady stream of small transactions a worker that stepped again at
	 * once would pay that for every handful of them, on the writers' CPUs.
	 * A step that reached the flushed WAL (not cut at batch_size) starts
	 * the next one poll_interval after its own start.  A step of many
	 * rows rests STP_SLOT_REST times the CPU time it used, up to
	 * STP_SLOT_REST_MAX poll intervals: the longer wait merges more
	 * changes into each group it touches, so that a worker under a heavy
	 * stream of many groups keeps to about a fifth of a CPU where it can.
	 * A step of few rows that used much CPU (its plans made again after
	 * an invalidation) does not rest: waiting would merge nothing more.
	 * stp_wait's wake-up starts the next step at once.
	 */
	if (rows < stp_worker.def->batch_size)
	{
		TimestampTz now = GetCurrentTimestamp();
		int64		rest = 0;

		if (rows >= STP_SLOT_REST_ROWS)
			rest = Min((process_cpu_us() - cpu_started) * STP_SLOT_REST,
					   (int64) stp_worker.def->poll_interval_ms * 1000 * STP_SLOT_REST_MAX);

		stp_worker.next_step_at =
			Max(TimestampTzPlusMilliseconds(started, stp_worker.def->poll_interval_ms),
				now + rest);
	}
	return true;
}

/* ---- checks and clean-up ---- */

/*
 * Check what a slot job needs, before stp_start_job changes anything.
 */
void
stp_check_slot_source(Oid source, StpShape *shape, StpJobDef *def,
					  const char *order_column, const char *start_from)
{
	char	   *srcname = stp_qualified_relname(source);
	ListCell   *lc;
	HeapTuple	tup;
	char		replident;
	int			free_slots = 0;
	const char *trusted;

	/* A slot keeps WAL and catalog rows: as pg_create_logical_replication_slot. */
	if (!superuser() && !has_rolreplication(GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create a job with source 'slot'"),
				 errdetail("Each partition of the job holds a logical replication slot, which keeps WAL and old catalog rows from removal."),
				 errhint("Create the job as a superuser or as a role with the REPLICATION attribute.")));
	if (wal_level < WAL_LEVEL_LOGICAL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("a job with source 'slot' needs wal_level = logical"),
				 errdetail("The server runs with wal_level = %s.",
						   GetConfigOption("wal_level", false, false)),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
	/*
	 * Some builds of PostgreSQL load only the output plugins that a setting
	 * names; a worker could then never decode.
	 */
	trusted = GetConfigOption("output_plugin_libraries", true, false);
	if (trusted != NULL)
	{
		char	   *copy = pstrdup(trusted);
		List	   *names = NIL;
		bool		found = false;

		if (SplitIdentifierString(copy, ',', &names))
			foreach(lc, names)
				found |= (strcmp(lfirst(lc), "stp") == 0);
		if (!found)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a job with source 'slot' needs \"stp\" in output_plugin_libraries"),
					 errdetail("Its workers decode the WAL with the output plugin in stp's library, and output_plugin_libraries is '%s'.",
							   trusted),
					 errhint("Add stp to output_plugin_libraries in postgresql.conf and reload the server configuration.")));
	}
	if (!stp_catalog_has_column("jobs", "source_kind"))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the stp extension in this database is older than version 1.2, which jobs with source 'slot' need"),
				 errhint("Run ALTER EXTENSION stp UPDATE.")));
	if (order_column != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a job with source 'slot' has no order column"),
				 errdetail("It decodes the source's changes from the WAL, in commit order."),
				 errhint("Leave order_column NULL.")));
	if (strcmp(start_from, "beginning") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job with source 'slot' cannot start from \"%s\"", start_from),
				 errdetail("Its groups are computed from the source's rows, which an UPDATE or DELETE of an older row changes."),
				 errhint("Use start_from => 'beginning'.")));
	if (shape && shape->global)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job with source 'slot' needs a GROUP BY"),
				 errhint("Group by at least one column.")));
	if (shape && shape->hop_key >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job with source 'slot' cannot group by a hopping window"),
				 errhint("Group by a tumbling window such as date_bin(...), or use a job with source 'table'.")));
	foreach(lc, def->agg_kinds)
	{
		StpAggKind	kind = (StpAggKind) lfirst_int(lc);

		if (STP_AGG_IS_DISTINCT(kind))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("a job with source 'slot' cannot compute DISTINCT aggregates"),
					 errhint("Use a job with source 'table', or count the distinct values with a GROUP BY.")));
		if (STP_AGG_IS_SKETCH(kind))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("a job with source 'slot' cannot keep hll or tdigest sketches"),
					 errhint("Use a job with source 'table'.")));
		if (STP_AGG_IS_COMBINE(kind))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("a job with source 'slot' supports only stp's own aggregates"),
					 errdetail("Column \"%s\" uses an aggregate that stp merges with its combine function.",
							   (char *) list_nth(def->agg_names, foreach_current_index(lc))),
					 errhint("Use a job with source 'table', or one of count, sum, min, max, avg, bool_and, bool_or, bit_and, bit_or and the variance family over floats.")));
	}
	if (get_rel_relkind(source) == RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job with source 'slot' cannot decode partitioned table %s", srcname),
				 errdetail("The WAL holds the changes of its partitions, not of the partitioned table."),
				 errhint("Use a job with source 'table' for a partitioned source.")));

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(source));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", source);
	replident = ((Form_pg_class) GETSTRUCT(tup))->relreplident;
	ReleaseSysCache(tup);
	if (replident != REPLICA_IDENTITY_FULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("source %s does not log whole old rows", srcname),
				 errdetail("A job with source 'slot' needs every column of the old row of each UPDATE and DELETE, to find the groups it changes."),
				 errhint("Run ALTER TABLE %s REPLICA IDENTITY FULL.", srcname)));

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
		if (!ReplicationSlotCtl->replication_slots[i].in_use)
			free_slots++;
	LWLockRelease(ReplicationSlotControlLock);
	if (free_slots < def->partitions)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("a job with source 'slot' and %d partitions needs %d free replication slots, but %d are free",
						def->partitions, def->partitions, free_slots),
				 errhint("Raise max_replication_slots, or use fewer partitions.")));
}

/*
 * Drop this database's stp slots that belong to no partition of a slot
 * job: those of dropped jobs whose workers had not let go of them yet,
 * and those left behind by a DROP EXTENSION.  Returns true if such a slot
 * was still in use (its worker is on its way out), for a later round.
 * The caller is connected to SPI, in a transaction.
 */
bool
stp_drop_orphan_slots(void)
{
	bool		busy = false;

	char		prefix[NAMEDATALEN];
	List	   *names = NIL;
	ListCell   *lc;
	bool		has_catalog;

	if (max_replication_slots == 0)
		return false;
	snprintf(prefix, sizeof(prefix), "stp_%u_", MyDatabaseId);
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (s->in_use && s->data.database == MyDatabaseId &&
			strncmp(NameStr(s->data.name), prefix, strlen(prefix)) == 0)
			names = lappend(names, pstrdup(NameStr(s->data.name)));
	}
	LWLockRelease(ReplicationSlotControlLock);
	if (names == NIL)
		return false;

	has_catalog = OidIsValid(get_extension_oid("stp", true)) &&
		stp_catalog_has_column("jobs", "source_kind");
	foreach(lc, names)
	{
		char	   *name = lfirst(lc);
		int32		job_id;
		int32		partition;
		bool		keep = false;

		if (sscanf(name + strlen(prefix), "%d_%d", &job_id, &partition) != 2)
			continue;
		if (has_catalog)
		{
			Datum		args[2] = {Int32GetDatum(job_id), Int32GetDatum(partition)};

			stp_catalog_exec("SELECT 1 FROM stp.jobs j JOIN stp.partitions p "
							 "ON p.job_id OPERATOR(pg_catalog.=) j.job_id "
							 "WHERE j.job_id OPERATOR(pg_catalog.=) $1 "
							 "AND p.partition OPERATOR(pg_catalog.=) $2 "
							 "AND j.source_kind OPERATOR(pg_catalog.=) 'slot'",
							 2, (Oid[]) {INT4OID, INT4OID}, args, NULL, true, 1);
			keep = (SPI_processed > 0);
		}
		if (keep || !slot_exists(name))
			continue;
		if (slot_active(name))
		{
			busy = true;
			continue;
		}
		ereport(LOG,
				(errmsg("stp drops replication slot \"%s\", which belongs to no job", name)));
		ReplicationSlotDrop(name, true);
	}
	return busy;
}

/*
 * Drop the slots of a job that stp_drop_job removes, once its workers have
 * let go of them; a slot still in use is left to the starter's clean-up.
 */
void
stp_drop_job_slots(int32 job_id, int32 partitions)
{
	for (int p = 0; p < partitions; p++)
	{
		char		name[NAMEDATALEN];
		ReplicationSlot *s;
		bool		idle;

		stp_slot_name(name, MyDatabaseId, job_id, p);
		LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
		s = SearchNamedReplicationSlot(name, false);
		idle = (s != NULL && s->active_pid == 0);
		LWLockRelease(ReplicationSlotControlLock);
		if (idle)
			ReplicationSlotDrop(name, true);
	}
}

/*
 * The slot's confirmed position, the WAL up to which the result of a slot
 * job's partition holds every change; InvalidXLogRecPtr if it has no slot,
 * or one whose groups are still being built.
 */
uint64
stp_slot_confirmed(int32 job_id, int32 partition)
{
	char		name[NAMEDATALEN];
	ReplicationSlot *s;
	XLogRecPtr	lsn = InvalidXLogRecPtr;

	stp_slot_name(name, MyDatabaseId, job_id, partition);
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	s = SearchNamedReplicationSlot(name, false);
	/* An ephemeral slot's groups are not built (committed) yet. */
	if (s != NULL && s->data.persistency == RS_PERSISTENT)
	{
		SpinLockAcquire(&s->mutex);
		lsn = s->data.confirmed_flush;
		SpinLockRelease(&s->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return lsn;
}
