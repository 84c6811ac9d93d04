/*-------------------------------------------------------------------------
 *
 * sketch.c
 *		Sketches of optional extensions: hll's approximate distinct counts
 *		and tdigest's percentiles.
 *
 * Both extensions keep their aggregates' transition state as internal, but
 * their aggregates return a storable type of their own (hll, tdigest),
 * and two values of it merge with a function of the extension (hll_union,
 * tdigest_union).  A job keeps the value of the query's own aggregate call
 * per group, of that type, and merges each batch's value into it; a
 * result view applies what the query computes from it (hll_cardinality).
 * tdigest's percentile functions are aggregates over digests, not
 * functions of one, so the query keeps the digest and the reader computes
 * percentiles over the result's rows.  Nothing stored depends on the
 * version of PostgreSQL, only on the extension's own type.
 *
 * An hll is a set of registers that a union takes the maximum of, so the
 * union of partial hlls is the hll of all rows, exactly.  A t-digest is
 * approximate: a merged digest and one built from all rows at once can
 * differ in their centroids, and their percentiles within the digest's
 * accuracy.
 *
 * The extensions may be installed in any schema: the merge functions are
 * named with the schema their extension is in, looked up when the SQL is
 * made.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "commands/extension.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"

#include "stp.h"

/*
 * The schema an extension is in (PostgreSQL 15 does not export its own
 * lookup).
 */
static Oid
extension_schema(Oid ext)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/*
 * The schema-qualified name of a function of the named extension, or an
 * error if the extension is not installed.
 */
static char *
extension_function(const char *extname, const char *func)
{
	Oid			ext = get_extension_oid(extname, true);

	if (!OidIsValid(ext))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"%s\" is not installed", extname),
				 errdetail("The job keeps a sketch of that extension."),
				 errhint("Install the extension again, or drop the job.")));
	return quote_qualified_identifier(get_namespace_name(extension_schema(ext)),
									  func);
}

/*
 * The sketch kind of an aggregate outside pg_catalog, or STP_AGG_COUNT if
 * it is not a sketch stp keeps.  The aggregates of hll and tdigest that
 * return a number directly are refused, with the form that keeps a sketch.
 */
StpAggKind
stp_sketch_kind(Oid aggfnoid, const char *fname)
{
	Oid			ext = getExtensionOfObject(ProcedureRelationId, aggfnoid);
	char	   *extname = OidIsValid(ext) ? get_extension_name(ext) : NULL;

	if (extname == NULL)
		return STP_AGG_COUNT;
	if (strcmp(extname, "hll") == 0 &&
		(strcmp(fname, "hll_add_agg") == 0 || strcmp(fname, "hll_union_agg") == 0))
		return STP_AGG_HLL;
	if (strcmp(extname, "tdigest") == 0)
	{
		if (strcmp(fname, "tdigest") == 0)
			return STP_AGG_TDIGEST;
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("aggregate %s() is not supported in a job's query", fname),
				 errdetail("Its value cannot be merged from batches; the t-digest it is computed from can."),
				 errhint("Keep tdigest(x, compression) AS digest in the job, and compute %s(digest, ...) over the result's rows when you read it.",
						 fname)));
	}
	return STP_AGG_COUNT;
}

/*
 * The expression that merges two values of a sketch; NULL where either
 * is, so that COALESCE keeps the other.
 */
char *
stp_sketch_merge(StpAggKind kind, const char *a, const char *b)
{
	if (kind == STP_AGG_HLL)
		return psprintf("%s(%s, %s)", extension_function("hll", "hll_union"), a, b);
	return psprintf("CASE WHEN %s IS NOT NULL AND %s IS NOT NULL THEN %s(%s, %s, true) END",
					a, b, extension_function("tdigest", "tdigest_union"), a, b);
}

/*
 * The aggregate that merges the values of a sketch column col, for a
 * hopping window's panes.
 */
char *
stp_sketch_combine_agg(StpAggKind kind, const char *col)
{
	if (kind == STP_AGG_HLL)
		return psprintf("%s(%s)", extension_function("hll", "hll_union_agg"), col);
	return psprintf("%s(%s)", extension_function("tdigest", "tdigest"), col);
}
