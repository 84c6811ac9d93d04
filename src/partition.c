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
 * The keys come one per argument, or as one ROW(...) (see build_route_cache).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/tupdesc.h"
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

/*
 * A router: the keys' hashing methods decided once, then one call per row.
 * The SQL functions, the slot plugin and the StpRoute scan (route.c) all
 * route through it, so that they hash every key with the same bytes.
 */
struct StpRouter
{
	int			nkeys;
	StringInfoData buf;
	StpKeyHasher keys[FLEXIBLE_ARRAY_MEMBER];
};

/* What a call site of the SQL functions keeps in fn_extra. */
typedef struct StpRouteCache
{
	TupleDesc	row_desc;		/* the keys come as one ROW(...), or NULL */
	Datum	   *values;
	bool	   *nulls;
	StpRouter  *router;
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
 * Decide how a key of this type and collation is hashed: by its bytes or
 * by its type's extended hash function.  Shared by the SQL functions and
 * the slot plugin's router, so that both route every group alike.
 */
static void
init_key_hasher(StpKeyHasher *k, Oid typid, Oid collid)
{
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

/*
 * Decide, once per call site, how each key argument is hashed: by its bytes
 * or by its type's extended hash function, with its own collation.
 *
 * The keys may also come as a single ROW(k0, k1, ...) argument.  A
 * VARIADIC "any" call merges its arguments' collations, so two keys with
 * different explicit collations (a COLLATE "C", b COLLATE "POSIX") cannot
 * be passed one by one; the members of a ROW keep their own.  A ROW's
 * members are hashed exactly as the same keys passed one by one, so both
 * spellings route a group to the same partition.
 */
static StpRouteCache *
build_route_cache(FunctionCallInfo fcinfo, int first_key)
{
	FuncExpr   *fexpr = (FuncExpr *) fcinfo->flinfo->fn_expr;
	List	   *args;
	int			nkeys;
	StpRouteCache *cache;
	TupleDesc	row_desc = NULL;
	Oid		   *types;
	Oid		   *collations;
	MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

	if (fexpr == NULL || !IsA(fexpr, FuncExpr) || list_length(fexpr->args) != PG_NARGS())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("stp.partition_of() must be called with its arguments spelled out")));

	args = list_copy_tail(fexpr->args, first_key);
	if (list_length(args) == 1 && IsA(linitial(args), RowExpr))
	{
		args = ((RowExpr *) linitial(args))->args;
		row_desc = CreateTemplateTupleDesc(list_length(args));
		for (int i = 0; i < list_length(args); i++)
		{
			TupleDescInitEntry(row_desc, (AttrNumber) (i + 1), NULL,
							   exprType(list_nth(args, i)),
							   exprTypmod(list_nth(args, i)), 0);
			TupleDescInitEntryCollation(row_desc, (AttrNumber) (i + 1),
										exprCollation(list_nth(args, i)));
		}
	}
	else if (list_length(args) == 1 && IsA(linitial(args), Const) &&
			 !((Const *) linitial(args))->constisnull &&
			 type_is_rowtype(exprType(linitial(args))))
	{
		/* A ROW of constants, folded by the planner: its row type tells. */
		HeapTupleHeader td = DatumGetHeapTupleHeader(((Const *) linitial(args))->constvalue);

		row_desc = lookup_rowtype_tupdesc_copy(HeapTupleHeaderGetTypeId(td),
											   HeapTupleHeaderGetTypMod(td));
	}
	nkeys = row_desc ? row_desc->natts : list_length(args);

	cache = palloc0(sizeof(StpRouteCache));
	cache->row_desc = row_desc;
	cache->values = palloc(sizeof(Datum) * Max(nkeys, 1));
	cache->nulls = palloc(sizeof(bool) * Max(nkeys, 1));
	types = palloc(sizeof(Oid) * Max(nkeys, 1));
	collations = palloc(sizeof(Oid) * Max(nkeys, 1));
	for (int i = 0; i < nkeys; i++)
	{
		if (row_desc)
		{
			types[i] = TupleDescAttr(row_desc, i)->atttypid;
			collations[i] = TupleDescAttr(row_desc, i)->attcollation;
		}
		else
		{
			types[i] = exprType(list_nth(args, i));
			collations[i] = exprCollation(list_nth(args, i));
		}
	}
	cache->router = stp_router_create(nkeys, types, collations);
	MemoryContextSwitchTo(old);
	return cache;
}

/*
 * Append n bytes to the buffer that is hashed.  Inline, and without
 * StringInfo's terminating NUL (XXH3 is given the length): the routing
 * filter runs once per source row, and appendBinaryStringInfo's call and
 * bookkeeping cost as much as the hash itself (perf, 4M rows of one int4
 * key).
 */
static inline void
put_bytes(StringInfo buf, const void *data, int n)
{
	if (buf->len + n >= buf->maxlen)
		enlargeStringInfo(buf, n);
	memcpy(buf->data + buf->len, data, n);
	buf->len += n;
}

/*
 * Append one key value, tagged, to the bytes that are hashed.  The bytes
 * must stay exactly what they have always been: every job's routing, and
 * so the place of every group already counted, depends on them.
 */
static inline void
append_key(StringInfo buf, StpKeyHasher *k, Datum value, bool isnull)
{
	if (buf->len + 1 + sizeof(uint64) >= buf->maxlen)
		enlargeStringInfo(buf, 1 + sizeof(uint64));
	if (isnull)
	{
		buf->data[buf->len++] = 'N';
		return;
	}
#ifndef WORDS_BIGENDIAN
	if (k->method == STP_HASH_BYVAL && k->typlen <= 4)
	{
		/*
		 * The tag and the value's bytes in one 8-byte store: XXH3 then reads
		 * them back from that one store.  Written as a byte and a 4-byte
		 * store, its 4-byte reads spanned both and stalled on store
		 * forwarding, a third of the routing's time (perf, int4 key).
		 */
		uint64		w = (uint64) 'V' | ((uint64) value << 8);

		memcpy(buf->data + buf->len, &w, sizeof(w));
		buf->len += 1 + k->typlen;
		return;
	}
#endif
	buf->data[buf->len++] = 'V';
	switch (k->method)
	{
		case STP_HASH_BYVAL:
			/* Constant-size copies for the common widths. */
			if (k->typlen == sizeof(int32))
			{
				memcpy(buf->data + buf->len, &value, sizeof(int32));
				buf->len += sizeof(int32);
			}
			else if (k->typlen == sizeof(int64))
			{
				memcpy(buf->data + buf->len, &value, sizeof(int64));
				buf->len += sizeof(int64);
			}
			else
				put_bytes(buf, &value, k->typlen);
			break;
		case STP_HASH_FIXED:
			put_bytes(buf, DatumGetPointer(value), k->typlen);
			break;
		case STP_HASH_VARLENA:
			{
				struct varlena *v = PG_DETOAST_DATUM_PACKED(value);
				uint32		len = VARSIZE_ANY_EXHDR(v);

				put_bytes(buf, &len, sizeof(len));
				put_bytes(buf, VARDATA_ANY(v), len);
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

				put_bytes(buf, &th, sizeof(th));
			}
			break;
	}
}

/*
 * The partition, in [0, nparts), of the hashed bytes of a group key.
 */
static inline int32
hash_to_partition(StringInfo buf, int32 nparts)
{
	uint64		h = XXH3_64bits(buf->data, buf->len);

	/* The same partition as h % nparts, without a division when it can. */
	if ((nparts & (nparts - 1)) == 0)
		return (int32) (h & (uint64) (nparts - 1));
	return (int32) (h % (uint64) nparts);
}

/*
 * Make a router for keys of these types and collations, in the current
 * memory context.  Errors if a type cannot be routed.
 */
StpRouter *
stp_router_create(int nkeys, const Oid *types, const Oid *collations)
{
	StpRouter  *r = palloc0(offsetof(StpRouter, keys) + Max(nkeys, 1) * sizeof(StpKeyHasher));

	r->nkeys = nkeys;
	initStringInfo(&r->buf);
	for (int i = 0; i < nkeys; i++)
		init_key_hasher(&r->keys[i], types[i], collations[i]);
	return r;
}

/*
 * Does routing with this router allocate memory?  Only a key hashed by
 * its type's function or a varlena key may (detoasting); a caller that
 * routes many rows resets a memory context per row only then.
 */
bool
stp_router_allocates(StpRouter *r)
{
	for (int i = 0; i < r->nkeys; i++)
		if (r->keys[i].method == STP_HASH_TYPE ||
			r->keys[i].method == STP_HASH_VARLENA)
			return true;
	return false;
}

/*
 * The partition, in [0, nparts), that owns the group with these key
 * values: what stp.partition_of(nparts, k0, k1, ...) returns for them.
 */
int32
stp_router_route(StpRouter *r, const Datum *values, const bool *nulls, int32 nparts)
{
	StringInfo	buf = &r->buf;

	buf->len = 0;
	for (int i = 0; i < r->nkeys; i++)
		append_key(buf, &r->keys[i], values[i], nulls[i]);
	return hash_to_partition(buf, nparts);
}

/*
 * The partition, in [0, nparts), that owns the group whose key values are
 * the function's arguments from first_key on.
 */
static int32
route(FunctionCallInfo fcinfo, int first_key, int32 nparts)
{
	StpRouteCache *cache = (StpRouteCache *) fcinfo->flinfo->fn_extra;

	if (nparts < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("number of partitions must be positive")));

	if (cache == NULL)
	{
		cache = build_route_cache(fcinfo, first_key);
		fcinfo->flinfo->fn_extra = cache;
	}
	if (cache->row_desc)
	{
		/* One ROW(...) of the keys; a NULL row counts as all keys NULL. */
		if (PG_ARGISNULL(first_key))
		{
			for (int i = 0; i < cache->row_desc->natts; i++)
				cache->nulls[i] = true;
		}
		else
		{
			HeapTupleHeader td = PG_GETARG_HEAPTUPLEHEADER(first_key);
			HeapTupleData tuple;

			tuple.t_len = HeapTupleHeaderGetDatumLength(td);
			ItemPointerSetInvalid(&tuple.t_self);
			tuple.t_tableOid = InvalidOid;
			tuple.t_data = td;
			heap_deform_tuple(&tuple, cache->row_desc, cache->values,
							  cache->nulls);
		}
	}
	else
	{
		for (int i = first_key; i < PG_NARGS(); i++)
		{
			cache->values[i - first_key] = PG_GETARG_DATUM(i);
			cache->nulls[i - first_key] = PG_ARGISNULL(i);
		}
	}

	return stp_router_route(cache->router, cache->values, cache->nulls, nparts);
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
