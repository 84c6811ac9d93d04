/*-------------------------------------------------------------------------
 *
 * catalog.c
 *		Access to stp's own catalog tables and to a few things the job's
 *		owner may not be allowed to read itself.
 *
 * Jobs and partition progress live in stp.jobs and stp.partitions, which
 * only the extension's owner may write.  Workers and the SQL functions
 * run as the job's owner, so they reach the catalog, and the source's
 * sequence, by switching to the extension owner's identity for just those
 * statements, as a SECURITY DEFINER function with a pinned search_path
 * would.  Every operator in that SQL is schema-qualified besides.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "storage/bufmgr.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "stp.h"

/*
 * Look up the owner of the stp extension in this database.
 */
static Oid
extension_owner(void)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Oid			owner = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("stp"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"stp\" is not installed in this database")));
	return owner;
}

/*
 * Switch to the extension owner's identity, for stp's catalog statements
 * only.  Undone by stp_catalog_rights_end, or by (sub)transaction abort.
 *
 * Nothing that runs with the owner's rights may depend on what a user
 * controls: a caller's search_path could put an operator of its own in
 * front of pg_catalog's "=", and the plan cache replans a kept statement
 * under whatever path is current.  So every switch opens a GUC nest level
 * with the settings pinned (search_path = pg_catalog, pg_temp and the
 * output styles), whatever the session or a job's own code set before, and
 * the nest level ends with the switch.  The switch is also a
 * security-restricted operation, as for a maintenance command run as a
 * table's owner: should any user code run inside it, it could not change
 * its identity or leave anything behind that outlives the statement.
 */
void
stp_catalog_rights_begin(StpRights *save)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	save->nestlevel = NewGUCNestLevel();
	stp_pin_settings();
	SetUserIdAndSecContext(owner,
						   save->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

/*
 * Return to the identity and settings saved by stp_catalog_rights_begin.
 */
void
stp_catalog_rights_end(StpRights *save)
{
	SetUserIdAndSecContext(save->userid, save->sec_context);
	AtEOXact_GUC(true, save->nestlevel);
}

/*
 * Run a statement on stp's catalog with the extension owner's rights.  An
 * SPI failure is an error; the caller checks the result code it expects.
 */
int
stp_catalog_exec(const char *sql, int nargs, Oid *types, Datum *values,
				 const char *nulls, bool read_only, long count)
{
	StpRights	save;
	int			ret;

	stp_catalog_rights_begin(&save);
	ret = SPI_execute_with_args(sql, nargs, types, values, nulls, read_only, count);
	stp_catalog_rights_end(&save);
	if (ret < 0)
		elog(ERROR, "stp catalog statement failed: %s", SPI_result_code_string(ret));
	return ret;
}

/*
 * Run a prepared statement on stp's catalog with the extension owner's
 * rights, as stp_catalog_exec does.
 */
int
stp_catalog_exec_plan(SPIPlanPtr plan, Datum *values)
{
	StpRights	save;
	int			ret;

	stp_catalog_rights_begin(&save);
	ret = SPI_execute_plan(plan, values, NULL, false, 0);
	stp_catalog_rights_end(&save);
	if (ret < 0)
		elog(ERROR, "stp catalog statement failed: %s", SPI_result_code_string(ret));
	return ret;
}

/*
 * Settings that change how stored SQL text parses, whatever the value of
 * its constants: they have one fixed value wherever stp deparses or runs a
 * job's expressions.  A search_path of pg_catalog makes every other name
 * written out qualified.  standard_conforming_strings decides what a
 * backslash in a string literal means, array_nulls whether NULL in an array
 * literal is a null, and transform_null_equals whether "x = NULL" is
 * "x IS NULL".  A role or database setting must not change any of them in
 * a worker.
 */
static const char *const stp_parse_settings[][2] = {
	{"search_path", "pg_catalog, pg_temp"},
	{"standard_conforming_strings", "on"},
	{"array_nulls", "on"},
	{"transform_null_equals", "off"},
	{"backslash_quote", "safe_encoding"},
};

/*
 * Settings that change what a job's expressions evaluate to (stable
 * built-in functions and type casts read them): date_trunc on timestamptz
 * reads TimeZone, to_char reads lc_time and lc_numeric, a cast of a date
 * to text reads DateStyle, and so on.  A job keeps the values of the
 * session that created it, so that its result is what that session's
 * batch query returns, whatever the worker's role or database settings.
 */
static const char *const stp_job_setting_names[] = {
	"TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits",
	"lc_monetary", "lc_numeric", "lc_time", "timezone_abbreviations",
	"default_text_search_config", "xmloption", "xmlbinary", "bytea_output",
};

/*
 * Pin, for the current GUC nest level, the settings that generated SQL and
 * deparsed expressions depend on: the fixed parse settings above, and the
 * output styles of constants, so that a date, an interval or a float in a
 * job's query reads back in a worker as the same value, whatever the
 * creating session's DateStyle or extra_float_digits.  ISO dates and
 * postgres-style intervals read back the same under every DateStyle and
 * IntervalStyle, which is why the worker may then evaluate with the
 * creator's.
 */
void
stp_pin_settings(void)
{
	for (int i = 0; i < lengthof(stp_parse_settings); i++)
		(void) set_config_option(stp_parse_settings[i][0], stp_parse_settings[i][1],
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("datestyle", STP_DATESTYLE,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("intervalstyle", STP_INTERVALSTYLE,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("extra_float_digits", "3",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Set one of a worker's settings, above any role or database setting;
 * with save, only for the current GUC nest level.
 */
static void
apply_setting(const char *name, const char *value, bool save)
{
	(void) set_config_option(name, value, PGC_SUSET, PGC_S_OVERRIDE,
							 save ? GUC_ACTION_SAVE : GUC_ACTION_SET,
							 true, 0, false);
}

/*
 * The calling session's values of the job settings, as "name=value"
 * strings for stp.jobs.settings.
 */
List *
stp_capture_job_settings(void)
{
	List	   *result = NIL;

	for (int i = 0; i < lengthof(stp_job_setting_names); i++)
		result = lappend(result,
						 psprintf("%s=%s", stp_job_setting_names[i],
								  GetConfigOption(stp_job_setting_names[i],
												  false, false)));
	return result;
}

/*
 * Fix a worker's settings above any role or database setting: the parse
 * settings, then the job's own settings (def may be NULL before the job is
 * loaded; a job created before settings were recorded has only its
 * TimeZone).  With save, only for the current GUC nest level; else for
 * the life of the process.
 */
void
stp_apply_job_settings(StpJobDef *def, bool save)
{
	ListCell   *lc;

	for (int i = 0; i < lengthof(stp_parse_settings); i++)
		apply_setting(stp_parse_settings[i][0], stp_parse_settings[i][1], save);
	if (def == NULL)
		return;
	apply_setting("TimeZone", def->timezone, save);
	foreach(lc, def->settings)
	{
		char	   *item = pstrdup(lfirst(lc));
		char	   *eq = strchr(item, '=');

		if (eq == NULL)
			continue;
		*eq = '\0';
		apply_setting(item, eq + 1, save);
		pfree(item);
	}
}

/*
 * The schema-qualified, quoted name of a relation, or an error that says
 * the relation is gone.
 */
char *
stp_qualified_relname(Oid relid)
{
	char	   *relname = get_rel_name(relid);

	if (relname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u of the job no longer exists", relid)));
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  relname);
}

/*
 * Read a sequence's single tuple: its last value, and whether that value
 * was handed out.
 *
 * nextval() and pg_sequence_last_value() lock the sequence with
 * RowExclusiveLock until their transaction ends, and workers wait for
 * those lockers before they read up to the last value.  So the value is
 * read here from the sequence's single tuple under AccessShareLock, which
 * no worker waits for, and which needs no rights on the sequence.
 */
static void
read_sequence(Oid seqoid, int64 *last, bool *is_called)
{
	Relation	rel;
	Buffer		buf;
	Page		page;
	ItemId		lp;
	HeapTupleHeader tup;
	Form_pg_sequence_data seq;

	rel = relation_open(seqoid, AccessShareLock);
	if (rel->rd_rel->relkind != RELKIND_SEQUENCE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a sequence", RelationGetRelationName(rel))));
	buf = ReadBuffer(rel, 0);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	lp = PageGetItemId(page, FirstOffsetNumber);
	Assert(ItemIdIsNormal(lp));
	tup = (HeapTupleHeader) PageGetItem(page, lp);
	seq = (Form_pg_sequence_data) ((char *) tup + tup->t_hoff);
	*last = seq->last_value;
	*is_called = seq->is_called;
	UnlockReleaseBuffer(buf);
	relation_close(rel, AccessShareLock);
}

/*
 * The last value a sequence handed out, read as read_sequence does; 0 and
 * *is_called false if it has handed out none.
 */
int64
stp_sequence_last_value(Oid seqoid, bool *is_called)
{
	int64		last;

	read_sequence(seqoid, &last, is_called);
	return *is_called ? last : 0;
}

/*
 * The highest value a sequence has handed out: its last value once it has
 * handed one out, else one below the value it hands out next.  A sequence
 * that goes back below what a job has read (setval, ALTER SEQUENCE
 * RESTART) would hand out ids the job never reads.
 */
int64
stp_sequence_high_water(Oid seqoid)
{
	bool		is_called;
	int64		last;

	read_sequence(seqoid, &last, &is_called);
	return is_called ? last : last - 1;
}

/*
 * A text[] from stp.jobs as a List of C strings, NULL elements kept as NULL.
 */
static List *
text_array_to_list(Datum arr)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	List	   *result = NIL;

	deconstruct_array(DatumGetArrayTypeP(arr), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		result = lappend(result, nulls[i] ? NULL : TextDatumGetCString(elems[i]));
	return result;
}

/*
 * Does a table of stp's schema have this column?  Lets this library run
 * on the catalog of an older version of the extension until
 * ALTER EXTENSION stp UPDATE.
 */
bool
stp_catalog_has_column(const char *table, const char *column)
{
	Oid			nsp = get_namespace_oid("stp", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(table, nsp) : InvalidOid;

	return OidIsValid(relid) && get_attnum(relid, column) != InvalidAttrNumber;
}

/*
 * The elements of an oid (or regclass, regprocedure) array as a List of
 * Oid, a NULL element as InvalidOid.
 */
static List *
oid_array_to_list(Datum d)
{
	List	   *result = NIL;
	Datum	   *elems;
	bool	   *enulls;
	int			n;

	deconstruct_array(DatumGetArrayTypeP(d), OIDOID, sizeof(Oid), true,
					  TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
		result = lappend_oid(result, enulls[i] ? InvalidOid : DatumGetObjectId(elems[i]));
	return result;
}

/*
 * Read a job's definition from stp.jobs, built in mcxt.  Returns NULL if
 * the job does not exist.  The caller is connected to SPI.
 */
StpJobDef *
stp_load_job(int32 job_id, char **state, MemoryContext mcxt)
{
	MemoryContext old;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(job_id)};
	StpJobDef  *def;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	ListCell   *lc;
	List	   *kinds;
	char	   *sql;
	int			ret;
	bool		has_origin = stp_catalog_has_column("jobs", "origin");
	bool		has_leaves = stp_catalog_has_column("jobs", "leaves");
	bool		has_source_kind = stp_catalog_has_column("jobs", "source_kind");
	bool		has_functions = stp_catalog_has_column("jobs", "agg_functions");

	/*
	 * A catalog of version 1.0 has no settings, agg_filters or origin
	 * column yet, and one before 1.2 no strategy or agg_functions.
	 */
	sql = psprintf("SELECT job_name, owner::pg_catalog.oid, source::pg_catalog.oid, "
				   "order_column::pg_catalog.text, sequence::pg_catalog.oid, "
				   "result_table::pg_catalog.oid, partitions, batch_size, "
				   "(pg_catalog.date_part('epoch', poll_interval) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, "
				   "timezone, key_names, key_exprs, agg_names, agg_kinds, agg_args, "
				   "where_clause, state, %s, %s, %s, %s, %s, %s, %s, %s FROM stp.jobs "
				   "WHERE job_id OPERATOR(pg_catalog.=) $1",
				   stp_catalog_has_column("jobs", "settings") ?
				   "settings" : "'{}'::pg_catalog.text[]",
				   stp_catalog_has_column("jobs", "agg_filters") ?
				   "agg_filters" : "NULL::pg_catalog.text[]",
				   has_origin ? "origin" : "NULL::pg_catalog.text",
				   has_leaves ? "leaves::pg_catalog.oid[]" : "NULL::pg_catalog.oid[]",
				   has_leaves ? "resize_to" : "NULL::pg_catalog.int4",
				   has_source_kind ?
				   "source_kind OPERATOR(pg_catalog.=) 'slot'" : "false",
				   stp_catalog_has_column("jobs", "strategy") ?
				   "strategy" : "'groups'::pg_catalog.text",
				   has_functions ?
				   "agg_functions::pg_catalog.oid[]" : "NULL::pg_catalog.oid[]");
	ret = stp_catalog_exec(sql, 1, argtypes, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read stp.jobs: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		return NULL;

	old = MemoryContextSwitchTo(mcxt);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	def = palloc0(sizeof(StpJobDef));
	def->job_id = job_id;
	def->job_name = SPI_getvalue(tup, desc, 1);
	def->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	def->source = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
	def->order_column = SPI_getvalue(tup, desc, 4);
	def->sequence = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
	def->result = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
	def->partitions = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
	def->batch_size = DatumGetInt64(SPI_getbinval(tup, desc, 8, &isnull));
	def->poll_interval_ms = DatumGetInt64(SPI_getbinval(tup, desc, 9, &isnull));
	def->timezone = SPI_getvalue(tup, desc, 10);
	def->key_names = text_array_to_list(SPI_getbinval(tup, desc, 11, &isnull));
	def->key_exprs = text_array_to_list(SPI_getbinval(tup, desc, 12, &isnull));
	def->agg_names = text_array_to_list(SPI_getbinval(tup, desc, 13, &isnull));
	kinds = text_array_to_list(SPI_getbinval(tup, desc, 14, &isnull));
	def->agg_args = text_array_to_list(SPI_getbinval(tup, desc, 15, &isnull));
	d = SPI_getbinval(tup, desc, 16, &isnull);
	def->where_clause = isnull ? NULL : TextDatumGetCString(d);
	if (state)
		*state = SPI_getvalue(tup, desc, 17);
	def->settings = text_array_to_list(SPI_getbinval(tup, desc, 18, &isnull));
	d = SPI_getbinval(tup, desc, 19, &isnull);
	def->agg_filters = NIL;
	if (!isnull)
		def->agg_filters = text_array_to_list(d);
	while (list_length(def->agg_filters) < list_length(def->agg_names))
		def->agg_filters = lappend(def->agg_filters, NULL);

	/*
	 * A job whose recorded origin is not where it runs now was restored
	 * from a dump (a dump of a 1.0 catalog has no origin at all): its
	 * workers check that the restore is complete first.
	 */
	d = SPI_getbinval(tup, desc, 20, &isnull);
	if (has_origin)
		def->restored = isnull ||
			strcmp(TextDatumGetCString(d), stp_job_origin(def->source)) != 0;

	/* A 1.1 catalog has neither leaves nor resizes. */
	d = SPI_getbinval(tup, desc, 21, &isnull);
	def->leaves = isnull ? NIL : oid_array_to_list(d);
	d = SPI_getbinval(tup, desc, 22, &isnull);
	def->resize_to = isnull ? 0 : DatumGetInt32(d);
	def->slot_source = DatumGetBool(SPI_getbinval(tup, desc, 23, &isnull));

	/* Jobs of a catalog before 1.2 own groups. */
	d = SPI_getbinval(tup, desc, 24, &isnull);
	def->rows_mode = !isnull && strcmp(TextDatumGetCString(d), "rows") == 0;

	/* Jobs of a catalog before 1.2 have no combinable aggregates. */
	d = SPI_getbinval(tup, desc, 25, &isnull);
	def->agg_functions = isnull ? NIL : oid_array_to_list(d);
	while (list_length(def->agg_functions) < list_length(def->agg_names))
		def->agg_functions = lappend_oid(def->agg_functions, InvalidOid);

	def->agg_kinds = NIL;
	foreach(lc, kinds)
		def->agg_kinds = lappend_int(def->agg_kinds,
									 stp_agg_kind_from_name(lfirst(lc)));
	def->slot_retract = stp_slot_can_retract(def);
	MemoryContextSwitchTo(old);
	return def;
}
