/*-------------------------------------------------------------------------
 *
 * partition.c
 *		Routing of groups to partitions: xxhash(group key) mod N.
 *
 * Values that GROUP BY treats as equal must land on the same partition.
 * For types whose equality is byte equality (integers, dates, timestamps,
 * uuid, text under a deterministic collation) the key's bytes go into
 * XXH3 directly.  Every other type (float, numeric, bpchar, text under a
 * nondeterministic collation, ...) first goes through its own hash
 * opclass function, which agrees with its equality (0.0 and -0.0, 1.0 and
 * 1.00, NaN), and XXH3 then mixes those 64-bit hashes.  A NULL key is
 * hashed as a tag of its own, so NULLs form one group on one partition.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "nodes/nodeFuncs.h"
#include "nodes/supportnodes.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "stp.h"

PG_FUNCTION_INFO_V1(stp_partition_of);
PG_FUNCTION_INFO_V1(stp_in_partition);
PG_FUNCTION_INFO_V1(stp_in_partition_support);

typedef enum StpHashMethod
{
	STP_HASH_BYVAL,				/* bytes of a pass-by-value Datum */
	STP_HASH_FIXED,				/* bytes of a fixed-length by-reference value */
	STP_HASH_VARLENA,			/* bytes of a detoasted varlena */
	STP_HASH_TYPE				/* the type's extended hash function */
} StpHashMethod;

typedef struct StpKeyHasher
{
	StpHashMethod method;
	int16		typlen;
	Oid			collation;
	FmgrInfo   *hash_finfo;
} StpKeyHasher;

typedef struct StpRouteCache
{
	int			nkeys;
	StringInfoData buf;
	StpKeyHasher keys[FLEXIBLE_ARRAY_MEMBER];
} StpRouteCache;

/*
 * Is byte equality the type's equality?  Only for a short list of types
 * known to have no two representations of one value.
 */
static bool
bytes_are_equality(Oid typid, Oid collid)
{
	switch (typid)
	{
		case BOOLOID:
		case CHAROID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case DATEOID:
		case TIMEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
		case UUIDOID:
			return true;
		case TEXTOID:
		case VARCHAROID:
		case NAMEOID:
			return !OidIsValid(collid) || get_collation_isdeterministic(collid);
		default:
			return false;
	}
}

/*
 * Can a group key of this type be routed?  It can when its bytes are its
 * equality or when it has an extended hash function.
 */
bool
stp_type_routable(Oid typid, Oid collid)
{
	TypeCacheEntry *tce;

	if (bytes_are_equality(typid, collid))
		return true;
	tce = lookup_type_cache(typid, TYPECACHE_HASH_EXTENDED_PROC);
	return OidIsValid(tce->hash_extended_proc);
}

/*
 * Decide, once per call site, how each key argument is hashed: by its bytes
 * or by its type's extended hash function, with its own collation.
 */
static StpRouteCache *
build_route_cache(FunctionCallInfo fcinfo, int first_key)
{
	FuncExpr   *fexpr = (FuncExpr *) fcinfo->flinfo->fn_expr;
	int			nkeys = PG_NARGS() - first_key;
	StpRouteCache *cache;
	MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

	if (fexpr == NULL || !IsA(fexpr, FuncExpr) || list_length(fexpr->args) != PG_NARGS())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("stp.partition_of() must be called with its arguments spelled out")));

	cache = palloc0(offsetof(StpRouteCache, keys) + nkeys * sizeof(StpKeyHasher));
	cache->nkeys = nkeys;
	initStringInfo(&cache->buf);

	for (int i = 0; i < nkeys; i++)
	{
		Node	   *arg = list_nth(fexpr->args, i + first_key);
		Oid			typid = exprType(arg);
		Oid			collid = exprCollation(arg);
		StpKeyHasher *k = &cache->keys[i];
		int16		typlen;
		bool		typbyval;

		get_typlenbyval(typid, &typlen, &typbyval);
		k->typlen = typlen;
		k->collation = collid;
		if (bytes_are_equality(typid, collid))
			k->method = typbyval ? STP_HASH_BYVAL :
				(typlen > 0 ? STP_HASH_FIXED : STP_HASH_VARLENA);
		else
		{
			TypeCacheEntry *tce = lookup_type_cache(typid,
													TYPECACHE_HASH_EXTENDED_PROC_FINFO);

			if (!OidIsValid(tce->hash_extended_proc))
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_FUNCTION),
						 errmsg("could not identify an extended hash function for type %s",
								format_type_be(typid))));
			k->method = STP_HASH_TYPE;
			k->hash_finfo = &tce->hash_extended_proc_finfo;
		}
	}
	MemoryContextSwitchTo(old);
	return cache;
}

/*
 * The partition, in [0, nparts), that owns the group whose key values are
 * the function's arguments from first_key on.
 */
static int32
route(FunctionCallInfo fcinfo, int first_key, int32 nparts)
{
	StpRouteCache *cache = (StpRouteCache *) fcinfo->flinfo->fn_extra;
	StringInfo	buf;
	uint64		h;

	if (nparts < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("number of partitions must be positive")));

	if (cache == NULL)
	{
		cache = build_route_cache(fcinfo, first_key);
		fcinfo->flinfo->fn_extra = cache;
	}
	buf = &cache->buf;
	resetStringInfo(buf);

	for (int i = 0; i < cache->nkeys; i++)
	{
		StpKeyHasher *k = &cache->keys[i];
		Datum		value = PG_GETARG_DATUM(i + first_key);
		char		tag;

		if (PG_ARGISNULL(i + first_key))
		{
			tag = 'N';
			appendBinaryStringInfo(buf, &tag, 1);
			continue;
		}
		tag = 'V';
		appendBinaryStringInfo(buf, &tag, 1);
		switch (k->method)
		{
			case STP_HASH_BYVAL:
				appendBinaryStringInfo(buf, (char *) &value, k->typlen);
				break;
			case STP_HASH_FIXED:
				appendBinaryStringInfo(buf, DatumGetPointer(value), k->typlen);
				break;
			case STP_HASH_VARLENA:
				{
					struct varlena *v = PG_DETOAST_DATUM_PACKED(value);
					uint32		len = VARSIZE_ANY_EXHDR(v);

					appendBinaryStringInfo(buf, (char *) &len, sizeof(len));
					appendBinaryStringInfo(buf, VARDATA_ANY(v), len);
					if ((Pointer) v != DatumGetPointer(value))
						pfree(v);
				}
				break;
			case STP_HASH_TYPE:
				{
					uint64		th = DatumGetUInt64(FunctionCall2Coll(k->hash_finfo,
																	  k->collation,
																	  value,
																	  UInt64GetDatum(0)));

					appendBinaryStringInfo(buf, (char *) &th, sizeof(th));
				}
				break;
		}
	}

	h = XXH3_64bits(buf->data, buf->len);
	return (int32) (h % (uint64) nparts);
}

/*
 * stp.partition_of(nparts, VARIADIC "any") returns the partition, in
 * [0, nparts), that owns the group with these key values.
 */
Datum
stp_partition_of(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("number of partitions must not be null")));
	PG_RETURN_INT32(route(fcinfo, 1, PG_GETARG_INT32(0)));
}

/*
 * stp.in_partition(partition, nparts, VARIADIC "any") is the batch
 * statement's filter: does this partition own the group?
 */
Datum
stp_in_partition(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition and number of partitions must not be null")));
	PG_RETURN_BOOL(route(fcinfo, 2, PG_GETARG_INT32(1)) == PG_GETARG_INT32(0));
}

/*
 * Planner support for stp.in_partition: it keeps 1/nparts of the rows.
 * Without it the planner takes the filter to keep 0.5% of them, and picks
 * a sort-based aggregation for what is really a large share of the batch.
 */
Datum
stp_in_partition_support(PG_FUNCTION_ARGS)
{
	Node	   *rawreq = (Node *) PG_GETARG_POINTER(0);

	if (IsA(rawreq, SupportRequestSelectivity))
	{
		SupportRequestSelectivity *req = (SupportRequestSelectivity *) rawreq;
		Node	   *nparts = list_length(req->args) > 1 ? lsecond(req->args) : NULL;

		if (nparts && IsA(nparts, Const) && !((Const *) nparts)->constisnull &&
			DatumGetInt32(((Const *) nparts)->constvalue) > 0)
		{
			req->selectivity = 1.0 / DatumGetInt32(((Const *) nparts)->constvalue);
			PG_RETURN_POINTER(req);
		}
	}
	PG_RETURN_POINTER(NULL);
}
