/*-------------------------------------------------------------------------
 *
 * combine.c
 *		Any aggregate with a combine function and a storable state, built
 *		in or user-defined (kinds STP_AGG_COMBINE and STP_AGG_COMBINE_FINAL).
 *
 * A job keeps such an aggregate's transition state, of the aggregate's
 * own transition type, per group, and merges each batch's state into it
 * with the aggregate's combine function, as a parallel aggregate's
 * finalize step does.  An aggregate without a final function returns its
 * state, so the batch calls the aggregate itself, and its output column
 * is the state (STP_AGG_COMBINE).  An aggregate with a final function
 * returns something else, and SQL cannot ask it for its state.  So each
 * session that runs the job's statements (the partition worker, and
 * stp_start_job while it checks them) first creates temporary aggregates
 * for the job's i-th aggregate:
 *
 *	pg_temp.stp_partial_<i>(args): the same transition function,
 *		transition type and initial condition, and no final function: its
 *		value is the batch's state of a group (COMBINE_FINAL only);
 *	pg_temp.stp_merge_<i>(state): the combine function as transition
 *		function, with the same initial condition: over the stored state
 *		and the batch's, it is the merged state;
 *	pg_temp.stp_final_<i>(state): the same with the final function: the
 *		value of the merged states (COMBINE_FINAL only).
 *
 * Combine and final functions run inside an aggregate so, as PostgreSQL
 * runs them, with its strictness rules and initial condition: some
 * (int4_avg_combine) refuse to run anywhere else.  A COMBINE_FINAL
 * aggregate's state is kept in a hidden column _stp_<name>_state, and its
 * output column holds the final value, computed when a group is merged.
 * Reading a job's result therefore never calls the aggregate's functions.
 *
 * States of type internal are refused: they exist only in memory, and
 * their serialized form depends on PostgreSQL's version.  So are
 * polymorphic transition types, whose stored type would depend on the
 * call.  The aggregate is recorded in stp.jobs.agg_functions as a
 * regprocedure, which pg_dump writes by name; its functions are looked
 * up again, by OID, whenever the SQL is made.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_aggregate.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

#include "stp.h"

/* What the generated SQL needs of a combinable aggregate. */
typedef struct CombineInfo
{
	Oid			aggfnoid;
	Oid			transfn;
	Oid			finalfn;		/* InvalidOid if none */
	Oid			combinefn;
	Oid			transtype;
	char	   *initval;		/* the initial condition's text, or NULL */
	char		finalmodify;	/* aggfinalmodify */
} CombineInfo;

/*
 * The schema-qualified, quoted name of a function.
 */
static char *
function_name(Oid fn)
{
	char	   *name = get_func_name(fn);

	if (name == NULL)
		elog(ERROR, "cache lookup failed for function %u", fn);
	return quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)), name);
}

/*
 * Read what the SQL needs of a job's aggregate, refusing one that is gone
 * or no longer fits (an aggregate replaced since the job was created).
 */
static void
combine_info(Oid aggfnoid, CombineInfo *info)
{
	HeapTuple	tup;
	Form_pg_aggregate agg;
	Datum		d;
	bool		isnull;

	tup = SearchSysCache1(AGGFNOID, ObjectIdGetDatum(aggfnoid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("aggregate with OID %u of the job no longer exists", aggfnoid),
				 errhint("Drop the job and create it again.")));
	agg = (Form_pg_aggregate) GETSTRUCT(tup);
	info->aggfnoid = aggfnoid;
	info->transfn = agg->aggtransfn;
	info->finalfn = agg->aggfinalfn;
	info->combinefn = agg->aggcombinefn;
	info->transtype = agg->aggtranstype;
	info->finalmodify = agg->aggfinalmodify;
	d = SysCacheGetAttr(AGGFNOID, tup, Anum_pg_aggregate_agginitval, &isnull);
	info->initval = isnull ? NULL : TextDatumGetCString(d);
	ReleaseSysCache(tup);

	if (!OidIsValid(info->combinefn) ||
		get_typtype(info->transtype) == TYPTYPE_PSEUDO)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("aggregate %s of the job no longer has a combine function and a storable state",
						format_procedure(aggfnoid)),
				 errdetail("The aggregate was replaced after the job was created."),
				 errhint("Drop the job and create it again.")));
}

/*
 * Refuse the job's query because of aggregate fname, saying why (detail)
 * and what to do instead (hint).
 */
static void
refuse_aggregate(const char *fname, const char *colname, const char *detail,
				 const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("aggregate %s() in output column \"%s\" is not supported", fname, colname),
			 errdetail("%s", detail),
			 errhint("%s", hint)));
}

/*
 * Refuse the aggregate unless the job's owner, the creating role, may
 * execute fn: the worker calls the aggregate's functions in its own name,
 * where PostgreSQL checks only the aggregate owner's right to call them.
 */
static void
check_execute(Oid fn, const char *fname, const char *what)
{
	if (OidIsValid(fn) &&
		pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s, the %s of aggregate %s()",
						format_procedure(fn), what, fname),
				 errdetail("A job's workers call the aggregate's functions as the job's owner."),
				 errhint("Grant EXECUTE on the function to the role that creates the job.")));
}

/*
 * The kind of an aggregate that none of stp's own kinds covers: a
 * combinable aggregate, or a refusal that says what is missing.  The
 * caller has refused ordered-set aggregates, ORDER BY and DISTINCT.
 */
StpAggKind
stp_combine_kind(Aggref *aggref, const char *fname, const char *colname)
{
	HeapTuple	tup;
	Form_pg_aggregate agg;
	Oid			transtype;
	Oid			combinefn;
	Oid			finalfn;
	Oid			transfn;
	bool		finalextra;

	tup = SearchSysCache1(AGGFNOID, ObjectIdGetDatum(aggref->aggfnoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for aggregate %u", aggref->aggfnoid);
	agg = (Form_pg_aggregate) GETSTRUCT(tup);
	transtype = agg->aggtranstype;
	combinefn = agg->aggcombinefn;
	finalfn = agg->aggfinalfn;
	transfn = agg->aggtransfn;
	finalextra = agg->aggfinalextra;
	ReleaseSysCache(tup);

	if (transtype == INTERNALOID)
		refuse_aggregate(fname, colname,
						 "Its state is of type internal, which lives only in memory and whose stored form depends on the version of PostgreSQL.",
						 "Use an aggregate whose state is an ordinary type: for the variance family over integers or numeric, cast the argument to double precision; string_agg, array_agg and the like keep every value and cannot be kept by a job.");
	if (!OidIsValid(combinefn))
		refuse_aggregate(fname, colname,
						 "It has no combine function, which stp needs to merge each batch's state into the stored one.",
						 "The supported aggregates are count(*), count(x), count, sum and avg with DISTINCT, sum, min, max, avg, bool_and, bool_or, every, bit_and, bit_or, over floats stddev, stddev_pop, stddev_samp, variance, var_pop and var_samp, or any aggregate with a combine function and a non-internal state; add COMBINEFUNC to a user-defined aggregate.");
	if (IsPolymorphicType(transtype) || get_typtype(transtype) == TYPTYPE_PSEUDO)
		refuse_aggregate(fname, colname,
						 psprintf("Its state is declared as %s, so the type of the stored state would depend on the call.",
								  format_type_be(transtype)),
						 "Define an aggregate for the argument's type with a state of an ordinary type.");
	if (finalextra)
		refuse_aggregate(fname, colname,
						 "Its final function takes extra arguments (FINALFUNC_EXTRA), which stp cannot pass when it computes the value from a stored state.",
						 "Define the aggregate without FINALFUNC_EXTRA.");
	if (OidIsValid(get_func_variadictype(aggref->aggfnoid)))
		refuse_aggregate(fname, colname,
						 "It is a variadic aggregate.",
						 "Define an aggregate with a fixed list of arguments.");

	check_execute(aggref->aggfnoid, fname, "aggregate itself");
	check_execute(transfn, fname, "transition function");
	check_execute(combinefn, fname, "combine function");
	check_execute(finalfn, fname, "final function");
	return OidIsValid(finalfn) ? STP_AGG_COMBINE_FINAL : STP_AGG_COMBINE;
}

/*
 * The transition type of a combinable aggregate: the type of its state
 * column.
 */
Oid
stp_combine_transtype(Oid aggfnoid)
{
	CombineInfo info;

	combine_info(aggfnoid, &info);
	return info.transtype;
}

/*
 * The deparsed arguments of a combinable aggregate's call, each cast to
 * its own type, so that the call resolves to the same function whatever
 * other functions of the name exist; NULL for agg(*).
 */
char *
stp_combine_args(Aggref *aggref, List *dpcontext)
{
	StringInfoData buf;
	ListCell   *lc;

	if (aggref->args == NIL)
		return NULL;
	initStringInfo(&buf);
	foreach(lc, aggref->args)
	{
		Node	   *arg = (Node *) lfirst_node(TargetEntry, lc)->expr;

		appendStringInfo(&buf, "%s(%s)::%s", foreach_current_index(lc) > 0 ? ", " : "",
						 deparse_expression(arg, dpcontext, false, false),
						 format_type_extended(exprType(arg), exprTypmod(arg),
											  FORMAT_TYPE_FORCE_QUALIFY |
											  FORMAT_TYPE_TYPEMOD_GIVEN));
	}
	return buf.data;
}

/*
 * The job's agg-th aggregate, a combinable one.
 */
static Oid
job_aggregate(StpJobDef *def, int agg)
{
	Oid			aggfnoid = agg < list_length(def->agg_functions) ?
		list_nth_oid(def->agg_functions, agg) : InvalidOid;

	if (!OidIsValid(aggfnoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("job \"%s\" does not record the aggregate of column \"%s\"",
						def->job_name ? def->job_name : "", (char *) list_nth(def->agg_names, agg)),
				 errdetail("stp.jobs.agg_functions is missing or NULL for it."),
				 errhint("Drop the job and create it again.")));
	return aggfnoid;
}

/*
 * The name of the temporary aggregate that returns the state of the job's
 * agg-th aggregate.
 */
static char *
partial_name(int agg)
{
	return psprintf("pg_temp.stp_partial_%d", agg);
}

/*
 * The batch's expression for the state of the job's agg-th aggregate, a
 * combinable one, over the rows of a group that its FILTER (filter, "" or
 * " FILTER (...)") keeps: the aggregate itself when it returns its state,
 * else the session's temporary partial aggregate.
 */
char *
stp_combine_state_call(StpJobDef *def, int agg, const char *arg, const char *filter)
{
	StpAggKind	kind = (StpAggKind) list_nth_int(def->agg_kinds, agg);
	Oid			aggfnoid = job_aggregate(def, agg);
	CombineInfo info;

	/* A final function added or removed since: the state is not the value. */
	combine_info(aggfnoid, &info);
	if ((kind == STP_AGG_COMBINE_FINAL) != OidIsValid(info.finalfn))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("aggregate %s of the job %s a final function now",
						format_procedure(aggfnoid),
						OidIsValid(info.finalfn) ? "has" : "no longer has"),
				 errdetail("The aggregate was replaced after the job was created."),
				 errhint("Drop the job and create it again.")));
	return psprintf("%s(%s)%s",
					kind == STP_AGG_COMBINE_FINAL ? partial_name(agg) : function_name(aggfnoid),
					arg ? arg : "*", filter);
}

/*
 * A scalar subquery that folds the state expressions states, "(a), (b)",
 * with the session's temporary aggregate stp_<what>_<agg>; over no rows
 * when states is "".
 */
static char *
fold_states(StpJobDef *def, int agg, const char *what, const char *states)
{
	CombineInfo info;
	bool		none = (states[0] == '\0');

	combine_info(job_aggregate(def, agg), &info);
	if (none)
		states = psprintf("(NULL::%s)", format_type_extended(info.transtype, -1,
															 FORMAT_TYPE_FORCE_QUALIFY));
	return psprintf("(SELECT pg_temp.stp_%s_%d(_stp_v) FROM (VALUES %s) _stp_t(_stp_v)%s)",
					what, agg, states, none ? " WHERE false" : "");
}

/*
 * The value and the merged state of the job's agg-th aggregate (a
 * COMBINE_FINAL one) over the state expressions states, as one subquery
 * of two columns, for "SET (value, state) = ...": one scan of the states
 * for both costs less than two subqueries (merging 1M groups per batch,
 * each subquery is most of the merge's time).
 */
char *
stp_combine_final_and_merge(StpJobDef *def, int agg, const char *states)
{
	(void) job_aggregate(def, agg);
	return psprintf("(SELECT pg_temp.stp_final_%d(_stp_v), pg_temp.stp_merge_%d(_stp_v) "
					"FROM (VALUES %s) _stp_t(_stp_v))", agg, agg, states);
}

/*
 * The value of the job's agg-th aggregate (a COMBINE_FINAL one) over the
 * state expressions states, as PostgreSQL's finalize step computes it
 * from partial states: the combine function folds them into the initial
 * condition, and the final function computes the value.  With no states
 * ("") it is the aggregate's value over no rows.
 */
char *
stp_combine_final(StpJobDef *def, int agg, const char *states)
{
	return fold_states(def, agg, "final", states);
}

/*
 * The merged state of the job's agg-th aggregate, a combinable one, over
 * the state expressions states, as the finalize step folds them (see
 * stp_combine_final); with "" the initial condition.
 */
char *
stp_combine_merge(StpJobDef *def, int agg, const char *states)
{
	return fold_states(def, agg, "merge", states);
}

/*
 * Does the job have a combinable aggregate, which needs temporary
 * aggregates?
 */
static bool
needs_temporary(StpJobDef *def)
{
	ListCell   *lc;

	foreach(lc, def->agg_kinds)
	{
		if (STP_AGG_IS_COMBINE((StpAggKind) lfirst_int(lc)))
			return true;
	}
	return false;
}

/*
 * The argument types of an aggregate, as written in CREATE AGGREGATE, and
 * as the oidvector that finds a function of the same arguments.
 */
static char *
aggregate_signature(Oid aggfnoid, oidvector **types)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	StringInfoData args;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(aggfnoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", aggfnoid);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	initStringInfo(&args);
	for (int i = 0; i < proc->pronargs; i++)
		appendStringInfo(&args, "%s%s", i > 0 ? ", " : "",
						 format_type_extended(proc->proargtypes.values[i], -1,
											  FORMAT_TYPE_FORCE_QUALIFY));
	if (proc->pronargs == 0)
		appendStringInfoChar(&args, '*');
	*types = buildoidvector(proc->proargtypes.values, proc->pronargs);
	ReleaseSysCache(tup);
	return args.data;
}

/*
 * Drop the session's temporary aggregate pg_temp.<name>(args), of
 * argument types types, if it exists.
 */
static void
drop_temporary(Oid nsp, const char *name, const char *args, oidvector *types)
{
	if (!OidIsValid(nsp) ||
		!SearchSysCacheExists3(PROCNAMEARGSNSP, CStringGetDatum(name),
							   PointerGetDatum(types), ObjectIdGetDatum(nsp)))
		return;
	if (SPI_execute(psprintf("DROP AGGREGATE pg_temp.%s(%s)", name, args),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not drop temporary aggregate %s", name);
}

/*
 * Create the session's temporary aggregate pg_temp.<name>(args) with
 * transition function sfn and, if valid, final function finalfn, over the
 * state of info's aggregate with its initial condition.
 */
static void
create_temporary(const char *name, const char *args, Oid sfn, Oid finalfn,
				 CombineInfo *info)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE AGGREGATE pg_temp.%s(%s) (SFUNC = %s, STYPE = %s",
					 name, args, function_name(sfn),
					 format_type_extended(info->transtype, -1, FORMAT_TYPE_FORCE_QUALIFY));
	if (info->initval)
		appendStringInfo(&sql, ", INITCOND = %s", quote_literal_cstr(info->initval));
	if (OidIsValid(finalfn))
		appendStringInfo(&sql, ", FINALFUNC = %s, FINALFUNC_MODIFY = %s",
						 function_name(finalfn),
						 info->finalmodify == AGGMODIFY_READ_WRITE ? "READ_WRITE" :
						 info->finalmodify == AGGMODIFY_SHAREABLE ? "SHAREABLE" : "READ_ONLY");
	appendStringInfoChar(&sql, ')');
	elog(DEBUG1, "stp: %s", sql.data);
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create temporary aggregate %s", name);
}

/*
 * Drop the session's temporary aggregates of the job, those that exist.
 */
void
stp_drop_combine_aggregates(StpJobDef *def)
{
	Oid			nsp = LookupExplicitNamespace("pg_temp", true);
	ListCell   *lc;

	foreach(lc, def->agg_kinds)
	{
		int			agg = foreach_current_index(lc);
		CombineInfo info;
		oidvector  *types;
		char	   *args;
		char	   *state;

		if (!STP_AGG_IS_COMBINE((StpAggKind) lfirst_int(lc)) || !OidIsValid(nsp))
			continue;
		combine_info(job_aggregate(def, agg), &info);
		state = format_type_extended(info.transtype, -1, FORMAT_TYPE_FORCE_QUALIFY);
		args = aggregate_signature(info.aggfnoid, &types);
		drop_temporary(nsp, psprintf("stp_partial_%d", agg), args, types);
		types = buildoidvector(&info.transtype, 1);
		drop_temporary(nsp, psprintf("stp_merge_%d", agg), state, types);
		drop_temporary(nsp, psprintf("stp_final_%d", agg), state, types);
	}
}

/*
 * Create, in this session, the temporary aggregates of the job's
 * combinable aggregates (see the file header), replacing any left by an
 * earlier setup of the same session.  The caller is connected to SPI,
 * runs as the job's owner, and has pinned the settings.  Creating a
 * temporary object needs the TEMPORARY privilege on the database, which
 * is checked first, to say so.
 */
void
stp_create_combine_aggregates(StpJobDef *def)
{
	ListCell   *lc;

	if (!needs_temporary(def))
		return;
	if (pg_database_aclcheck(MyDatabaseId, GetUserId(), ACL_CREATE_TEMP) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("role \"%s\" may not create temporary objects in database \"%s\"",
						GetUserNameFromId(GetUserId(), false),
						get_database_name(MyDatabaseId)),
				 errdetail("A job merges the states of an aggregate that is not one of stp's own with temporary aggregates in each worker's session."),
				 errhint("Grant TEMPORARY on the database to the job's owner.")));

	stp_drop_combine_aggregates(def);
	foreach(lc, def->agg_kinds)
	{
		int			agg = foreach_current_index(lc);
		StpAggKind	kind = (StpAggKind) lfirst_int(lc);
		CombineInfo info;
		oidvector  *types;
		char	   *state;

		if (!STP_AGG_IS_COMBINE(kind))
			continue;
		combine_info(job_aggregate(def, agg), &info);
		state = format_type_extended(info.transtype, -1, FORMAT_TYPE_FORCE_QUALIFY);
		create_temporary(psprintf("stp_merge_%d", agg), state, info.combinefn,
						 InvalidOid, &info);
		if (kind != STP_AGG_COMBINE_FINAL)
			continue;
		create_temporary(psprintf("stp_partial_%d", agg),
						 aggregate_signature(info.aggfnoid, &types),
						 info.transfn, InvalidOid, &info);
		create_temporary(psprintf("stp_final_%d", agg), state, info.combinefn,
						 info.finalfn, &info);
	}
}
