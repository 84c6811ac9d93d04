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
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "stp.h"

PG_FUNCTION_INFO_V1(stp_partition_of);

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

static StpRouteCache *
build_route_cache(FunctionCallInfo fcinfo)
{
	FuncExpr   *fexpr = (FuncExpr *) fcinfo->flinfo->fn_expr;
	int			nkeys = PG_NARGS() - 1;
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
		Node	   *arg = list_nth(fexpr->args, i + 1);
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
 * stp.partition_of(nparts, VARIADIC "any") returns the partition, in
 * [0, nparts), that owns the group with these key values.
 */
Datum
stp_partition_of(PG_FUNCTION_ARGS)
{
	StpRouteCache *cache = (StpRouteCache *) fcinfo->flinfo->fn_extra;
	StringInfo	buf;
	int32		nparts;
	uint64		h;

	if (PG_ARGISNULL(0) || PG_GETARG_INT32(0) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("number of partitions must be positive")));
	nparts = PG_GETARG_INT32(0);

	if (cache == NULL)
	{
		cache = build_route_cache(fcinfo);
		fcinfo->flinfo->fn_extra = cache;
	}
	buf = &cache->buf;
	resetStringInfo(buf);

	for (int i = 0; i < cache->nkeys; i++)
	{
		StpKeyHasher *k = &cache->keys[i];
		Datum		value = PG_GETARG_DATUM(i + 1);
		char		tag;

		if (PG_ARGISNULL(i + 1))
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
	PG_RETURN_INT32((int32) (h % (uint64) nparts));
}
