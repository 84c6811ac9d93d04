/*-------------------------------------------------------------------------
 *
 * job.c
 *		The SQL functions that create, stop, resume and drop jobs.
 *
 * stp_start_job checks everything before it changes anything, and all it
 * changes (the result table and the catalog rows) is transactional, so a
 * refused job leaves no trace.  Workers are started by the launcher once
 * the creating transaction commits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "parser/parse_type.h"
#include "utils/regproc.h"
#include "pgstat.h"
#include "storage/lock.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "stp.h"

PG_FUNCTION_INFO_V1(stp_start_job);
PG_FUNCTION_INFO_V1(stp_stop_job);
PG_FUNCTION_INFO_V1(stp_resume_job);
PG_FUNCTION_INFO_V1(stp_drop_job);

#define STP_MAX_BATCH_SIZE		100000000

/*
 * Find a job by name.  With for_update, lock its row and check that the
 * caller may manage it.  Errors if it does not exist.  The caller is
 * connected to SPI; the result is allocated in the context it had before
 * SPI_connect, so that it outlives SPI_finish.
 */
StpJobRef *
stp_lookup_job(const char *job_name, bool for_update)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(job_name)};
	StpJobRef  *job;
	TupleDesc	desc;
	HeapTuple	tup;
	bool		isnull;
	Datum		d;
	char	   *state;

	/* A catalog made by an early build of 1.1 has no result_view column. */
	stp_catalog_exec(psprintf("SELECT job_id, owner::pg_catalog.oid, sequence::pg_catalog.oid, "
							  "result_table::pg_catalog.oid, state, source::pg_catalog.oid, %s "
							  "FROM stp.jobs WHERE job_name OPERATOR(pg_catalog.=) $1%s",
							  stp_catalog_has_column("jobs", "result_view") ?
							  "result_view::pg_catalog.oid" : "NULL::pg_catalog.oid",
							  for_update ? " FOR UPDATE" : ""),
					 1, types, values, NULL, !for_update, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("job \"%s\" does not exist", job_name),
				 errhint("The jobs are listed in stp.job_status.")));

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	job = SPI_palloc(sizeof(StpJobRef));
	job->job_id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	job->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	job->sequence = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	job->result = DatumGetObjectId(d);
	state = SPI_getvalue(tup, desc, 5);
	job->state = SPI_palloc(strlen(state) + 1);
	strcpy(job->state, state);
	job->source = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
	d = SPI_getbinval(tup, desc, 7, &isnull);
	job->result_view = isnull ? InvalidOid : DatumGetObjectId(d);

	if (for_update && !has_privs_of_role(GetUserId(), job->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of job \"%s\"", job_name),
				 errhint("Only the job's owner, members of its role and superusers can manage it.")));
	return job;
}

/*
 * The SQL functions are not STRICT, so that a NULL argument gets an error
 * that names it instead of a silent NULL result.
 */
void
stp_check_not_null(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

/*
 * Milliseconds in an interval without months, or an error.
 */
int64
stp_interval_ms(Interval *iv, const char *name)
{
	if (iv->month != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not contain months or years", name)));
	return (int64) iv->day * 86400000 + iv->time / 1000;
}

/*
 * Find the order column and its sequence, and check that the sequence
 * hands out values in order.  Returns the value below the first one the
 * sequence can hand out.
 */
static int64
find_order_column(StpJobDef *def, const char *requested)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1] = {ObjectIdGetDatum(def->source)};
	char	   *relname = get_rel_name(def->source);
	int			row = -1;
	TupleDesc	desc;
	HeapTuple	tup;
	bool		isnull;
	int64		cache,
				increment,
				seqmin;
	Oid			typid;
	char	   *seqname;

	if (requested && get_attnum(def->source, requested) == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("order column \"%s\" does not exist in table \"%s\"",
						requested, relname)));

	if (SPI_execute_with_args("SELECT a.attname::pg_catalog.text, s.seqrelid, s.seqcache, "
							  "s.seqincrement, s.seqcycle, s.seqmin, a.atttypid "
							  "FROM pg_catalog.pg_depend d "
							  "JOIN pg_catalog.pg_sequence s ON s.seqrelid OPERATOR(pg_catalog.=) d.objid "
							  "JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) d.refobjid "
							  "AND a.attnum OPERATOR(pg_catalog.=) d.refobjsubid "
							  "WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
							  "AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
							  "AND d.refobjid OPERATOR(pg_catalog.=) $1 AND d.deptype OPERATOR(pg_catalog.=) ANY ('{a,i}'::pg_catalog.\"char\"[]) "
							  "AND NOT a.attisdropped ORDER BY a.attnum",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the sequences of table \"%s\"", relname);

	desc = SPI_tuptable->tupdesc;
	if (requested)
	{
		for (uint64 i = 0; i < SPI_processed; i++)
			if (strcmp(SPI_getvalue(SPI_tuptable->vals[i], desc, 1), requested) == 0)
				row = i;
		if (row < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("order column \"%s\" of table \"%s\" is not fed by a sequence",
							requested, relname),
					 errdetail("stp reads new rows in the order of a column whose values come from its own sequence."),
					 errhint("Use an identity or bigserial column.")));
	}
	else if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("table \"%s\" has no order column", relname),
				 errdetail("stp reads new rows in the order of a column whose values come from its own sequence."),
				 errhint("Add a column such as \"id bigint GENERATED ALWAYS AS IDENTITY\" or \"id bigserial\".")));
	else if (SPI_processed > 1)
		ereport(ERROR,
				(errcode(ERRCODE_AMBIGUOUS_COLUMN),
				 errmsg("table \"%s\" has more than one column fed by a sequence", relname),
				 errhint("Name the one to read in order with order_column.")));
	else
		row = 0;

	tup = SPI_tuptable->vals[row];
	def->order_column = SPI_getvalue(tup, desc, 1);
	def->sequence = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	cache = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	increment = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
	seqmin = DatumGetInt64(SPI_getbinval(tup, desc, 6, &isnull));
	typid = DatumGetObjectId(SPI_getbinval(tup, desc, 7, &isnull));
	seqname = stp_qualified_relname(def->sequence);

	if (typid != INT2OID && typid != INT4OID && typid != INT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("order column \"%s\" must be of an integer type", def->order_column)));
	if (cache > 1)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sequence %s of order column \"%s\" has CACHE %lld",
						seqname, def->order_column, (long long) cache),
				 errdetail("A sequence with a cache hands out values out of order without bound, so rows could be skipped."),
				 errhint("Run ALTER SEQUENCE %s CACHE 1.", seqname)));
	if (increment < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sequence %s of order column \"%s\" counts down", seqname, def->order_column),
				 errhint("Use an ascending sequence.")));
	if (DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sequence %s of order column \"%s\" cycles", seqname, def->order_column),
				 errhint("Run ALTER SEQUENCE %s NO CYCLE.", seqname)));

	return seqmin > PG_INT64_MIN ? seqmin - 1 : seqmin;
}

/*
 * Check that a role exists and can log in, since a job's workers connect
 * as its owner.
 */
static void
check_owner_can_login(Oid roleid, const char *action)
{
	HeapTuple	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(roleid));
	bool		canlogin;
	char	   *rolname;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the owner of the job, role with OID %u, no longer exists", roleid),
				 errhint("Drop the job and create it again as another role.")));
	canlogin = ((Form_pg_authid) GETSTRUCT(tup))->rolcanlogin;
	rolname = pstrdup(NameStr(((Form_pg_authid) GETSTRUCT(tup))->rolname));
	ReleaseSysCache(tup);
	if (!canlogin)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" cannot log in", rolname),
				 errdetail("A job's workers connect as the job's owner."),
				 errhint("%s", action)));
}

/*
 * A List of C strings (NULL for none) as a text[] datum for stp.jobs.
 */
static Datum
text_array(List *items)
{
	int			n = list_length(items);
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	bool	   *nulls = palloc(sizeof(bool) * Max(n, 1));
	int			dims[1] = {n};
	int			lbs[1] = {1};
	ListCell   *lc;

	if (n == 0)
		return PointerGetDatum(construct_empty_array(TEXTOID));
	foreach(lc, items)
	{
		int			i = foreach_current_index(lc);

		nulls[i] = (lfirst(lc) == NULL);
		elems[i] = nulls[i] ? (Datum) 0 : CStringGetTextDatum(lfirst(lc));
	}
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * A partitioned source: find whether the job can read its leaves directly
 * (leaves.c), and say so when it cannot.  Each worker then reads whole
 * leaves, so a job has at most as many partitions as the source.
 */
static void
check_partitioned_source(StpJobDef *def, const char *job_name)
{
	char	   *why;

	if (get_rel_relkind(def->source) != RELKIND_PARTITIONED_TABLE)
		return;
	def->leaves = stp_hash_leaves(def->source, def->key_exprs, &why);
	if (def->leaves != NIL && !stp_catalog_has_column("jobs", "leaves"))
	{
		def->leaves = NIL;
		why = pstrdup("the stp extension in this database is older than version 1.2 (run ALTER EXTENSION stp UPDATE)");
	}
	if (def->leaves == NIL)
		ereport(NOTICE,
				(errmsg("job \"%s\" reads partitioned source %s through its parent, and each worker keeps its own groups of every row",
						job_name, stp_qualified_relname(def->source)),
				 errdetail("The job cannot give each worker partitions of its own: %s.", why),
				 errhint("A source partitioned BY HASH on columns that the GROUP BY contains lets each worker read only its own partitions.")));
	else
		stp_check_leaves_partitions(def, def->partitions);
}

/*
 * Record the leaves that a job reads directly, in the order that assigns
 * them to its partitions.
 */
static void
record_leaves(int32 job_id, List *leaves)
{
	Oid			types[2] = {INT4OID, OIDARRAYOID};
	Datum		values[2];
	Datum	   *elems = palloc(sizeof(Datum) * list_length(leaves));
	ListCell   *lc;

	foreach(lc, leaves)
		elems[foreach_current_index(lc)] = ObjectIdGetDatum(lfirst_oid(lc));
	values[0] = Int32GetDatum(job_id);
	values[1] = PointerGetDatum(construct_array(elems, list_length(leaves), OIDOID,
												sizeof(Oid), true, TYPALIGN_INT));
	if (stp_catalog_exec("UPDATE stp.jobs SET leaves = $2::pg_catalog.regclass[] "
						 "WHERE job_id OPERATOR(pg_catalog.=) $1",
						 2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the job's leaves");
}

/*
 * Record the combinable aggregates of a job (combine.c), NULL for the
 * others, if it has any.  A catalog before 1.2 cannot keep them.
 */
static void
record_agg_functions(int32 job_id, List *functions)
{
	Oid			types[2] = {INT4OID, OIDARRAYOID};
	Datum		values[2];
	Datum	   *elems = palloc(sizeof(Datum) * (list_length(functions) + 1));
	bool	   *nulls = palloc(sizeof(bool) * (list_length(functions) + 1));
	int			dims[1] = {list_length(functions)};
	int			lbs[1] = {1};
	bool		any = false;
	ListCell   *lc;

	foreach(lc, functions)
	{
		int			i = foreach_current_index(lc);

		nulls[i] = !OidIsValid(lfirst_oid(lc));
		elems[i] = ObjectIdGetDatum(lfirst_oid(lc));
		any |= !nulls[i];
	}
	if (!any)
		return;
	if (!stp_catalog_has_column("jobs", "agg_functions"))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the stp extension in this database is older than 1.2, which cannot keep this job's aggregates"),
				 errdetail("Aggregates that stp merges with their combine function need version 1.2."),
				 errhint("Run ALTER EXTENSION stp UPDATE.")));
	values[0] = Int32GetDatum(job_id);
	values[1] = PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, OIDOID,
												   sizeof(Oid), true, TYPALIGN_INT));
	if (stp_catalog_exec("UPDATE stp.jobs SET agg_functions = $2::pg_catalog.regprocedure[] "
						 "WHERE job_id OPERATOR(pg_catalog.=) $1",
						 2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the job's aggregates");
}

/*
 * Does the job have a DISTINCT aggregate?  Its distinct tables are
 * filled per group by one partition, so only the groups strategy keeps it.
 */
static bool
has_distinct(StpJobDef *def)
{
	ListCell   *lc;

	foreach(lc, def->agg_kinds)
	{
		if (STP_AGG_IS_DISTINCT((StpAggKind) lfirst_int(lc)))
			return true;
	}
	return false;
}

/*
 * The rows and groups of the job's query over the newest rows of the
 * source, at most STP_AUTO_SAMPLE_ROWS of them and no more than one batch:
 * what strategy 'auto' decides from.
 */
static void
sample_groups_per_batch(StpJobDef *def, int64 *rows, int64 *groups)
{
	bool		is_called;
	int64		last = stp_sequence_last_value(def->sequence, &is_called);
	int64		width = Min(def->batch_size, STP_AUTO_SAMPLE_ROWS);
	Oid			types[2] = {INT8OID, INT8OID};
	Datum		values[2];
	bool		isnull;

	*rows = *groups = 0;
	if (!is_called)
		return;
	values[0] = Int64GetDatum(last > PG_INT64_MIN + width ? last - width : PG_INT64_MIN);
	values[1] = Int64GetDatum(last);
	if (SPI_execute_with_args(stp_sample_sql(def), 2, types, values, NULL, true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not sample the groups of the job's source");
	*rows = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*groups = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
}

/*
 * Resolve the strategy argument of stp_start_job, 'groups', 'rows' or
 * 'auto' (checked by the caller): does the job run in row mode?  Row mode
 * pays off when a batch has far fewer groups than rows: every worker then
 * reads only its own id ranges and merges few groups.  'auto' takes it
 * with more than one partition when the query has no GROUP BY (one
 * group), or when the newest rows of the source hold at least
 * STP_AUTO_ROWS_PER_GROUP rows per group per partition (a smaller sample
 * than a batch shows fewer rows per group, so it errs towards groups); and
 * never for count(DISTINCT), which row mode cannot merge.
 */
static bool
decide_rows_mode(StpJobDef *def, const char *strategy, bool global)
{
	bool		can_store = stp_catalog_has_column("jobs", "strategy");
	int64		rows,
				groups;

	if (strcmp(strategy, "groups") == 0)
		return false;
	if (strcmp(strategy, "rows") == 0 && def->slot_source)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job with source 'slot' cannot use strategy \"rows\""),
				 errdetail("A slot job's partitions decode changes, not id ranges."),
				 errhint("Use strategy => 'groups' or 'auto'.")));
	if (strcmp(strategy, "rows") == 0 && def->leaves != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("strategy \"rows\" cannot read a source whose partitions hold the job's groups"),
				 errdetail("Source %s is partitioned BY HASH on the job's group keys, so each worker reads partitions of its own.",
						   stp_qualified_relname(def->source)),
				 errhint("Use strategy => 'groups' or 'auto'.")));
	if (def->slot_source || def->leaves != NIL)
		return false;
	if (strcmp(strategy, "rows") == 0)
	{
		if (has_distinct(def))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("strategy \"rows\" cannot keep DISTINCT aggregates"),
					 errdetail("In row mode several partitions merge into the same group, and the values a group has seen are kept per group by one partition only."),
					 errhint("Use strategy => 'groups'.")));
		if (!can_store)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the stp extension in this database is older than 1.2, which cannot keep strategy \"rows\""),
					 errhint("Run ALTER EXTENSION stp UPDATE.")));
		return true;
	}
	if (def->partitions == 1 || has_distinct(def) || !can_store)
		return false;
	if (global)
		return true;
	sample_groups_per_batch(def, &rows, &groups);
	return groups > 0 && rows / groups >= STP_AUTO_ROWS_PER_GROUP * def->partitions;
}

/*
 * The strategy of a new job (see decide_rows_mode), refusing a query
 * without GROUP BY on more than one partition in groups mode: its one
 * group would belong to one partition, and the others would idle.
 */
static bool
choose_rows_mode(StpJobDef *def, const char *strategy, bool global)
{
	bool		rows_mode = decide_rows_mode(def, strategy, global);

	if (global && def->partitions > 1 && !rows_mode)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job's query without GROUP BY cannot have more than one partition in strategy \"groups\""),
				 errdetail("The query has one group, which one partition owns when partitions own groups."),
				 errhint("Use strategy => 'rows', or partitions => 1.")));
	return rows_mode;
}

/*
 * stp_start_job(job_name, query, result_table, partitions, order_column,
 *				 start_from, batch_size, poll_interval,
 *				 strategy) returns the job id.
 */
Datum
stp_start_job(PG_FUNCTION_ARGS)
{
	char	   *job_name,
			   *query,
			   *result_name,
			   *order_column,
			   *start_from;
	int64		poll_ms;
	StpJobDef	def;
	List	   *columns;
	int			nkeys;
	RangeVar   *rv;
	Oid			result_relid;
	int64		start_offset;
	int			save_nestlevel;
	int32		job_id;
	List	   *kinds = NIL;
	List	   *settings;
	ListCell   *lc;
	StpShape   *shape;
	Oid			view_relid = InvalidOid;
	char	   *source_kind = "table";
	char	   *strategy = "auto";

	stp_check_not_null(fcinfo, 0, "job_name");
	stp_check_not_null(fcinfo, 1, "query");
	stp_check_not_null(fcinfo, 2, "result_table");
	stp_check_not_null(fcinfo, 3, "partitions");
	stp_check_not_null(fcinfo, 5, "start_from");
	stp_check_not_null(fcinfo, 6, "batch_size");
	stp_check_not_null(fcinfo, 7, "poll_interval");

	memset(&def, 0, sizeof(def));
	job_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	result_name = text_to_cstring(PG_GETARG_TEXT_PP(2));
	def.partitions = PG_GETARG_INT32(3);
	order_column = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	start_from = text_to_cstring(PG_GETARG_TEXT_PP(5));
	def.batch_size = PG_GETARG_INT32(6);
	poll_ms = stp_interval_ms(PG_GETARG_INTERVAL_P(7), "poll_interval");
	/* The 1.0 and 1.1 catalogs declare no source argument. */
	if (PG_NARGS() > 8)
	{
		stp_check_not_null(fcinfo, 8, "source");
		source_kind = text_to_cstring(PG_GETARG_TEXT_PP(8));
	}
	if (strcmp(source_kind, "table") != 0 && strcmp(source_kind, "slot") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid source \"%s\"", source_kind),
				 errhint("Use 'table' to read new rows of an append-only table, or 'slot' to decode its INSERT, UPDATE and DELETE from logical replication slots.")));
	def.slot_source = (strcmp(source_kind, "slot") == 0);
	/* The function of a catalog before 1.2 has no strategy argument. */
	if (PG_NARGS() > 9)
	{
		stp_check_not_null(fcinfo, 9, "strategy");
		strategy = text_to_cstring(PG_GETARG_TEXT_PP(9));
	}
	if (strcmp(strategy, "groups") != 0 && strcmp(strategy, "rows") != 0 &&
		strcmp(strategy, "auto") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid strategy \"%s\"", strategy),
				 errhint("Use 'groups' (partitions own groups), 'rows' (partitions own id ranges, for few groups) or 'auto'.")));

	if (strlen(job_name) == 0 || strlen(job_name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("job name must be between 1 and %d bytes long", NAMEDATALEN - 1)));
	if (def.partitions < 1 || def.partitions > STP_MAX_PARTITIONS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions must be between 1 and %d", STP_MAX_PARTITIONS),
				 errhint("Each partition is a background worker; more partitions than CPU cores rarely help.")));
	if (def.batch_size < 1 || def.batch_size > STP_MAX_BATCH_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and %d", STP_MAX_BATCH_SIZE)));
	if (poll_ms < 1 || poll_ms > 3600 * 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("poll_interval must be between 1 millisecond and 1 hour")));
	if (strcmp(start_from, "beginning") != 0 && strcmp(start_from, "now") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid start_from \"%s\"", start_from),
				 errhint("Use 'beginning' to aggregate the rows already in the table, or 'now' to start with new rows.")));
	if (order_column && strlen(order_column) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("order_column must not be empty"),
				 errhint("Pass NULL to let stp find the identity or bigserial column.")));

	check_owner_can_login(GetUserId(), "Create the job as a role with LOGIN.");

	SPI_connect();

	{
		Oid			types[1] = {TEXTOID};
		Datum		values[1] = {CStringGetTextDatum(job_name)};

		stp_catalog_exec("SELECT 1 FROM stp.jobs WHERE job_name OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, true, 0);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("job \"%s\" already exists", job_name),
					 errhint("Choose another name, or drop the job with stp_drop_job().")));
	}

	/* The query, analysed with the caller's search_path. */
	stp_analyze_query(query, &def, &columns, &nkeys, &shape);
	if (pg_class_aclcheck(def.source, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(def.source)),
				 errhint("The job's owner needs SELECT on the source table.")));

	/* The result table's name, resolved with the caller's search_path too. */
	rv = makeRangeVarFromNameList(stringToQualifiedNameList(result_name));
	result_relid = RangeVarGetRelid(rv, NoLock, true);

	settings = stp_capture_job_settings();
	save_nestlevel = NewGUCNestLevel();
	stp_pin_settings();

	if (get_rel_persistence(def.source) != RELPERSISTENCE_PERMANENT)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is an unlogged table", get_rel_name(def.source)),
				 errdetail("A crash empties an unlogged table and resets its sequence, while the result table and the job's progress keep what was counted."),
				 errhint("Run ALTER TABLE %s SET LOGGED.", stp_qualified_relname(def.source))));

	if (def.slot_source)
	{
		/* processed_upto 0: the partition builds its groups first. */
		stp_check_slot_source(def.source, shape, &def, order_column, start_from);
		def.order_column = "";
		def.sequence = InvalidOid;
		start_offset = 0;
	}
	else
		start_offset = find_order_column(&def, order_column);
	if (strcmp(start_from, "now") == 0 && !def.slot_source)
	{
		bool		is_called;
		int64		last = stp_sequence_last_value(def.sequence, &is_called);

		if (is_called)
			start_offset = last;
		ereport(NOTICE,
				(errmsg("job \"%s\" counts the rows whose %s is above " INT64_FORMAT,
						job_name, quote_identifier(def.order_column), start_offset)));
	}
	check_partitioned_source(&def, job_name);
	{
		char	   *reason;

		def.job_name = job_name;
		def.result = def.source;	/* checked below */
		reason = stp_check_job_tables(&def, start_offset);
		if (reason)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("%s", reason)));
	}

	def.rows_mode = choose_rows_mode(&def, strategy, shape && shape->global);

	if (OidIsValid(result_relid) && shape)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation \"%s\" already exists", rv->relname),
				 errdetail("The job's query computes its output from the state of its groups, so stp creates its result as a view over a state table."),
				 errhint("Name a relation that does not exist.")));
	else if (OidIsValid(result_relid))
	{
		if (result_relid == def.source)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the result table cannot be the source table")));
		stp_verify_result_table(result_relid, columns, nkeys);
	}
	else
	{
		Oid			nspid;

		AtEOXact_GUC(true, save_nestlevel);
		nspid = RangeVarGetCreationNamespace(rv);
		save_nestlevel = NewGUCNestLevel();
		stp_pin_settings();
		if (shape)
		{
			result_relid = stp_create_state_table(nspid, rv->relname, columns, nkeys);
			view_relid = stp_create_result_view(nspid, rv->relname, shape, result_relid);
			stp_create_distinct_tables(nspid, result_relid, shape, columns, nkeys);
		}
		else
			result_relid = stp_create_result_table(nspid, rv->relname, columns, nkeys,
											   STP_RESULT_FILLFACTOR);
	}
	def.result = result_relid;

	/*
	 * The initial row and the batch statement call the temporary
	 * aggregates of a worker's session (combine.c), made here for as long
	 * as it takes.
	 */
	stp_create_combine_aggregates(&def);
	if (shape && shape->global &&
		SPI_execute(stp_initial_row_sql(&def), false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert the job's group");

	/* The batch statement must prepare, or the job could never run. */
	{
		Oid			types[2] = {INT8OID, INT8OID};
		SPIPlanPtr	plan = SPI_prepare(def.slot_source ? stp_slot_batch_sql(&def, 0) :
									   stp_batch_sql(&def, 0), 2, types);

		if (plan == NULL)
			elog(ERROR, "could not prepare the job's batch statement: %s",
				 SPI_result_code_string(SPI_result));
		SPI_freeplan(plan);
		if (def.slot_source)
		{
			/* A retracting job's merges and delete too. */
			def.slot_retract = stp_slot_can_retract(&def);
			if (!def.slot_retract)
				ereport(NOTICE,
						(errmsg("job \"%s\" computes each group that an UPDATE or DELETE touches again from the source",
								job_name),
						 errdetail("Only count(), and sum() and avg() of integers, can take an old row back."),
						 errhint("Give the source an index on the group key if its groups are large, or keep the other aggregates in a job of their own.")));
			for (int i = 0; i < (def.slot_retract ? 3 : 1); i++)
			{
				plan = SPI_prepare(i == 2 ? stp_slot_delete_sql(&def) :
								   stp_slot_merge_sql(&def, 0, i == 1), 2, types);
				if (plan == NULL)
					elog(ERROR, "could not prepare the job's merge statement: %s",
						 SPI_result_code_string(SPI_result));
				SPI_freeplan(plan);
			}
		}
	}
	stp_drop_combine_aggregates(&def);

	foreach(lc, def.agg_kinds)
		kinds = lappend(kinds, stp_agg_kind_name((StpAggKind) lfirst_int(lc)));

	{
		Oid			types[21] = {TEXTOID, OIDOID, TEXTOID, OIDOID, TEXTOID, OIDOID,
			OIDOID, INT4OID, INT8OID, INTERVALOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID,
			TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID,
		OIDOID, TEXTOID};
		Datum		values[21];
		char		nulls[21];
		bool		has_filter = false;
		bool		isnull;
		int			ret;
		bool		v10 = !stp_catalog_has_column("jobs", "origin");

		memset(nulls, ' ', sizeof(nulls));
		values[0] = CStringGetTextDatum(job_name);
		values[1] = ObjectIdGetDatum(GetUserId());
		values[2] = CStringGetTextDatum(query);
		values[3] = ObjectIdGetDatum(def.source);
		values[4] = CStringGetTextDatum(def.order_column);
		values[5] = ObjectIdGetDatum(def.sequence);
		values[6] = ObjectIdGetDatum(def.result);
		values[7] = Int32GetDatum(def.partitions);
		values[8] = Int64GetDatum(def.batch_size);
		values[9] = PG_GETARG_DATUM(7);
		values[10] = CStringGetTextDatum(GetConfigOption("TimeZone", false, false));
		values[11] = text_array(def.key_names);
		values[12] = text_array(def.key_exprs);
		values[13] = text_array(def.agg_names);
		values[14] = text_array(kinds);
		values[15] = text_array(def.agg_args);
		if (def.where_clause)
			values[16] = CStringGetTextDatum(def.where_clause);
		else
			nulls[16] = 'n';
		values[17] = text_array(settings);
		values[18] = text_array(def.agg_filters);
		values[19] = ObjectIdGetDatum(view_relid);
		if (!OidIsValid(view_relid))
			nulls[19] = 'n';
		values[20] = CStringGetTextDatum(stp_job_origin(def.source));
		foreach(lc, def.agg_filters)
			has_filter |= (lfirst(lc) != NULL);

		/*
		 * A catalog of version 1.0 (before ALTER EXTENSION stp UPDATE) has
		 * no settings, filters, view or origin: its jobs run with the
		 * creator's TimeZone only, as under 1.0, until they are created
		 * again, and a job that needs a filter or a view cannot be kept.
		 */
		if (v10 && (has_filter || OidIsValid(view_relid)))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the stp extension in this database is version 1.0, which cannot keep this job's query"),
					 errdetail("Aggregate FILTER clauses and result views need version 1.1."),
					 errhint("Run ALTER EXTENSION stp UPDATE.")));
		if (v10)
			ereport(WARNING,
					(errmsg("the stp extension in this database is version 1.0, older than its library"),
					 errdetail("The job records only the TimeZone of this session, not its other settings."),
					 errhint("Run ALTER EXTENSION stp UPDATE.")));
		ret = stp_catalog_exec(v10 ?
							   "INSERT INTO stp.jobs (job_name, owner, query, source, "
							   "order_column, sequence, result_table, partitions, batch_size, "
							   "poll_interval, timezone, key_names, key_exprs, agg_names, "
							   "agg_kinds, agg_args, where_clause) VALUES ($1, $2::pg_catalog.regrole, "
							   "$3, $4::pg_catalog.regclass, $5, $6::pg_catalog.regclass, "
							   "$7::pg_catalog.regclass, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) "
							   "RETURNING job_id" :
							   "INSERT INTO stp.jobs (job_name, owner, query, source, "
							   "order_column, sequence, result_table, partitions, batch_size, "
							   "poll_interval, timezone, key_names, key_exprs, agg_names, "
							   "agg_kinds, agg_args, where_clause, settings, agg_filters, result_view, origin) "
							   "VALUES ($1, $2::pg_catalog.regrole, "
							   "$3, $4::pg_catalog.regclass, $5, $6::pg_catalog.regclass, "
							   "$7::pg_catalog.regclass, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, "
							   "$20::pg_catalog.regclass, $21) RETURNING job_id",
							   v10 ? 17 : 21, types, values, nulls, false, 0);
		if (ret != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not insert into stp.jobs");
		job_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		if (def.rows_mode)
		{
			types[0] = INT4OID;
			values[0] = Int32GetDatum(job_id);
			if (stp_catalog_exec("UPDATE stp.jobs SET strategy = 'rows' "
								 "WHERE job_id OPERATOR(pg_catalog.=) $1",
								 1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not record the job's strategy");
		}

		types[0] = INT4OID;
		types[1] = INT8OID;
		types[2] = INT4OID;
		values[0] = Int32GetDatum(job_id);
		values[1] = Int64GetDatum(start_offset);
		values[2] = Int32GetDatum(def.partitions);
		ret = stp_catalog_exec("INSERT INTO stp.partitions (job_id, partition, processed_upto) "
									"SELECT $1, g, $2 FROM pg_catalog.generate_series(0, $3 OPERATOR(pg_catalog.-) 1) g",
									3, types, values, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not insert into stp.partitions");
		if (def.leaves != NIL)
			record_leaves(job_id, def.leaves);
		if (def.slot_source &&
			stp_catalog_exec("UPDATE stp.jobs SET source_kind = 'slot' "
							 "WHERE job_id OPERATOR(pg_catalog.=) $1",
							 1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not record the job's source");
		record_agg_functions(job_id, def.agg_functions);
	}

	AtEOXact_GUC(true, save_nestlevel);
	SPI_finish();

	stp_forget_job(MyDatabaseId, job_id);
	stp_start_job_at_commit(job_id, GetUserId(), def.partitions);
	PG_RETURN_INT32(job_id);
}

/*
 * Stop a job's workers and wait a little for them to leave.  A worker that
 * is killed mid-batch loses only that uncommitted batch.  Until this
 * transaction commits, the launcher still sees the job running and may
 * start a partition's worker again; that worker is signalled at commit,
 * since one that waits for an open writer would not look at the job's
 * state before the writer ends.
 */
static void
stop_workers(int32 job_id)
{
	stp_signal_job_workers(MyDatabaseId, job_id, SIGTERM);
	stp_wait_job_workers_exit(MyDatabaseId, job_id, 10000);
	stp_stop_job_workers_at_commit(job_id);
}

/*
 * stp_stop_job(job_name): the job's workers leave; its progress stays.
 */
Datum
stp_stop_job(PG_FUNCTION_ARGS)
{
	char	   *job_name;
	StpJobRef  *job;
	Oid			types[1] = {INT4OID};
	Datum		values[1];

	stp_check_not_null(fcinfo, 0, "job_name");
	job_name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	SPI_connect();
	job = stp_lookup_job(job_name, true);
	if (strcmp(job->state, "stopped") == 0)
		ereport(NOTICE,
				(errmsg("job \"%s\" is already stopped", job_name)));
	else
	{
		values[0] = Int32GetDatum(job->job_id);
		stp_catalog_exec("UPDATE stp.jobs SET state = 'stopped' WHERE job_id OPERATOR(pg_catalog.=) $1",
					 1, types, values, NULL, false, 0);
	}
	SPI_finish();
	stop_workers(job->job_id);
	PG_RETURN_VOID();
}

/*
 * stp_resume_job(job_name): run the job again from its progress, clearing
 * failed partitions; the workers start when the transaction commits.
 */
Datum
stp_resume_job(PG_FUNCTION_ARGS)
{
	char	   *job_name;
	StpJobRef  *job;
	int32		partitions;
	Oid			types[1] = {INT4OID};
	Datum		values[1];

	stp_check_not_null(fcinfo, 0, "job_name");
	job_name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	SPI_connect();
	job = stp_lookup_job(job_name, true);
	check_owner_can_login(job->owner, "Give the role LOGIN, or hand the job to another role with REASSIGN OWNED.");
	values[0] = Int32GetDatum(job->job_id);
	stp_catalog_exec("UPDATE stp.jobs SET state = 'running' WHERE job_id OPERATOR(pg_catalog.=) $1",
				 1, types, values, NULL, false, 0);
	stp_catalog_exec("UPDATE stp.partitions SET failed = false, error_count = 0, last_error = NULL "
				 "WHERE job_id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, false, 0);
	partitions = (int32) SPI_processed;
	SPI_finish();

	stp_forget_job(MyDatabaseId, job->job_id);
	stp_start_job_at_commit(job->job_id, job->owner, partitions);
	PG_RETURN_VOID();
}

/*
 * stp_drop_job(job_name, drop_result): remove the job and end its workers;
 * the result table goes too only if asked.
 */
Datum
stp_drop_job(PG_FUNCTION_ARGS)
{
	char	   *job_name;
	bool		drop_result;
	StpJobRef  *job;
	StpJobDef  *def;
	ListCell   *lc;
	Oid			types[1] = {INT4OID};
	Datum		values[1];
	bool		slot_source;
	int32		partitions;

	stp_check_not_null(fcinfo, 0, "job_name");
	stp_check_not_null(fcinfo, 1, "drop_result");
	job_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	drop_result = PG_GETARG_BOOL(1);

	SPI_connect();
	job = stp_lookup_job(job_name, true);
	def = stp_load_job(job->job_id, NULL, CurrentMemoryContext);
	values[0] = Int32GetDatum(job->job_id);
	stp_catalog_exec("DELETE FROM stp.jobs WHERE job_id OPERATOR(pg_catalog.=) $1", 1, types, values, NULL, false, 0);

	if (drop_result)
	{
		int			save_nestlevel = NewGUCNestLevel();

		stp_pin_settings();
		if (OidIsValid(job->result_view) && get_rel_name(job->result_view) != NULL &&
			SPI_execute(psprintf("DROP VIEW %s", stp_qualified_relname(job->result_view)),
						false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not drop the result view");

		/*
		 * A running worker locks the state table before the distinct
		 * tables (batch.c); so does this, or the two would deadlock.
		 */
		if (get_rel_name(job->result) != NULL)
			LockRelationOid(job->result, AccessExclusiveLock);
		foreach(lc, def ? def->agg_kinds : NIL)
		{
			Oid			side;

			if (!STP_AGG_IS_DISTINCT((StpAggKind) lfirst_int(lc)))
				continue;
			side = stp_distinct_table(def, foreach_current_index(lc));
			if (OidIsValid(side) &&
				SPI_execute(psprintf("DROP TABLE %s", stp_qualified_relname(side)),
							false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "could not drop a distinct table");
		}
		if (get_rel_name(job->result) != NULL &&
			SPI_execute(psprintf("DROP TABLE %s", stp_qualified_relname(job->result)),
						false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not drop the result table");
		AtEOXact_GUC(true, save_nestlevel);
	}
	/* def is in SPI's memory, which SPI_finish frees. */
	slot_source = def && def->slot_source;
	partitions = def ? def->partitions : 0;
	SPI_finish();

	stop_workers(job->job_id);
	stp_forget_job(MyDatabaseId, job->job_id);

	/*
	 * A slot job's slots go with it.  Dropping a slot cannot be rolled
	 * back; if this transaction is, the job's workers build their groups
	 * again on new slots.  A slot still held by a worker that did not
	 * leave in time is dropped by the starter, which the commit wakes.
	 */
	if (slot_source)
	{
		stp_drop_job_slots(job->job_id, partitions);
		stp_request_scan_at_commit();
	}
	PG_RETURN_VOID();
}
