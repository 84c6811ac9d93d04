/*-------------------------------------------------------------------------
 *
 * volatility.c
 *		Refusing the parts of a job's query whose value depends on when, or
 *		in which session, a row is read.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "stp.h"

/*
 * Functions whose value depends on when they run.
 *
 * A job reads each source row once, at a moment of its own, so its result
 * equals the batch query only if every expression's value depends on the
 * row alone.  Volatile functions are refused outright.  A STABLE function
 * may return something else in the next statement, and a worker runs one
 * statement per batch, so STABLE functions are refused too, except the
 * built-in (pg_catalog) ones listed below, which are STABLE only because
 * they read a setting that fixes how values are written and read:
 * TimeZone for timestamptz arithmetic and fields, DateStyle, IntervalStyle
 * and lc_time for the conversions between date/time types and text,
 * lc_numeric for to_char and to_number.  Those settings are the job's,
 * not the hour's.  Every other STABLE function of pg_catalog reads the
 * clock (now, age of one argument), the session (current_setting,
 * current_user, current_schema, inet_client_addr, txid_current, pg_*),
 * the catalog (to_regclass, has_*_privilege, reg* input and output,
 * format_type) or a setting that is not pinned (default_text_search_config
 * in to_tsvector, lc_monetary in money), and is refused; so is any
 * function that is not listed, since refusing a harmless one costs a
 * rewrite while accepting a harmful one costs a wrong result.
 *
 * STP_STABLE_IO marks functions that call the input or output functions
 * of their arguments' types (concat, format, ||): they are accepted only
 * when those types are built-in scalars, since a user-defined type's
 * output function could itself read the clock.
 */
#define STP_STABLE_TIME		0
#define STP_STABLE_IO		1
#define STP_STABLE_TWO_ARGS	2	/* age(x, y); age(x) reads the clock */

typedef struct StpStableOk
{
	const char *name;
	int			kind;
} StpStableOk;

static const StpStableOk stable_ok[] = {
	{"age", STP_STABLE_TWO_ARGS},
	{"date", STP_STABLE_TIME},
	{"date_part", STP_STABLE_TIME},
	{"date_trunc", STP_STABLE_TIME},
	{"extract", STP_STABLE_TIME},
	{"make_timestamptz", STP_STABLE_TIME},
	{"overlaps", STP_STABLE_TIME},
	{"time", STP_STABLE_TIME},
	{"timetz", STP_STABLE_TIME},
	{"timestamp", STP_STABLE_TIME},
	{"timestamptz", STP_STABLE_TIME},
	{"timezone", STP_STABLE_TIME},
	{"to_char", STP_STABLE_TIME},
	{"to_date", STP_STABLE_TIME},
	{"to_number", STP_STABLE_TIME},
	{"to_timestamp", STP_STABLE_TIME},
	{"interval_pl_timestamptz", STP_STABLE_TIME},
	{"timestamptz_pl_interval", STP_STABLE_TIME},
	{"timestamptz_mi_interval", STP_STABLE_TIME},
	{"date_in", STP_STABLE_TIME},
	{"date_out", STP_STABLE_TIME},
	{"time_in", STP_STABLE_TIME},
	{"timetz_in", STP_STABLE_TIME},
	{"timestamp_in", STP_STABLE_TIME},
	{"timestamp_out", STP_STABLE_TIME},
	{"timestamptz_in", STP_STABLE_TIME},
	{"timestamptz_out", STP_STABLE_TIME},
	{"interval_in", STP_STABLE_TIME},
	{"interval_out", STP_STABLE_TIME},
	{"anytextcat", STP_STABLE_IO},
	{"textanycat", STP_STABLE_IO},
	{"concat", STP_STABLE_IO},
	{"concat_ws", STP_STABLE_IO},
	{"format", STP_STABLE_IO},
	{"quote_literal", STP_STABLE_IO},
	{"quote_nullable", STP_STABLE_IO},
	{"array_to_string", STP_STABLE_IO},
	{"array_out", STP_STABLE_IO},
	{"array_in", STP_STABLE_IO},
};

/*
 * The comparisons between date, timestamp and timestamptz, such as
 * date_lt_timestamptz, read TimeZone only.
 */
static bool
is_datetime_comparison(const char *name)
{
	static const char *const prefixes[] = {"date_", "timestamp_", "timestamptz_"};
	static const char *const suffixes[] = {"_date", "_timestamp", "_timestamptz"};

	for (int i = 0; i < lengthof(prefixes); i++)
	{
		size_t		plen = strlen(prefixes[i]);

		if (strncmp(name, prefixes[i], plen) != 0)
			continue;
		for (int j = 0; j < lengthof(suffixes); j++)
		{
			size_t		slen = strlen(suffixes[j]);
			size_t		nlen = strlen(name);

			if (nlen > plen + slen && strcmp(name + nlen - slen, suffixes[j]) == 0)
			{
				const char *op = name + plen;

				return strncmp(op, "eq", 2) == 0 || strncmp(op, "ne", 2) == 0 ||
					strncmp(op, "lt", 2) == 0 || strncmp(op, "le", 2) == 0 ||
					strncmp(op, "gt", 2) == 0 || strncmp(op, "ge", 2) == 0 ||
					strncmp(op, "cmp", 3) == 0;
			}
		}
	}
	return false;
}

/*
 * Is the type a built-in scalar (or an array of one), whose input and
 * output functions are pg_catalog's?  Composite types and domains are not.
 */
static bool
is_builtin_scalar_type(Oid typid)
{
	HeapTuple	tup;
	Form_pg_type typ;
	bool		ok;
	Oid			elem;

	if (typid == RECORDOID || typid == RECORDARRAYOID)
		return false;
	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tup))
		return false;
	typ = (Form_pg_type) GETSTRUCT(tup);
	ok = typ->typnamespace == PG_CATALOG_NAMESPACE &&
		(typ->typtype == TYPTYPE_BASE || typ->typtype == TYPTYPE_PSEUDO);
	elem = typ->typelem;
	ReleaseSysCache(tup);
	if (ok && OidIsValid(elem) && get_element_type(typid) == elem)
		ok = is_builtin_scalar_type(elem);
	return ok;
}

/*
 * Are all the types a node's function reads or writes built-in scalars?
 */
static bool
node_types_builtin(Node *node)
{
	List	   *args = NIL;
	ListCell   *lc;

	switch (nodeTag(node))
	{
		case T_FuncExpr:
			args = ((FuncExpr *) node)->args;
			break;
		case T_OpExpr:
		case T_DistinctExpr:
		case T_NullIfExpr:
			args = ((OpExpr *) node)->args;
			break;
		case T_ScalarArrayOpExpr:
			args = ((ScalarArrayOpExpr *) node)->args;
			break;
		case T_CoerceViaIO:
			return is_builtin_scalar_type(exprType((Node *) ((CoerceViaIO *) node)->arg)) &&
				is_builtin_scalar_type(((CoerceViaIO *) node)->resulttype);
		default:
			return false;
	}
	foreach(lc, args)
	{
		if (!is_builtin_scalar_type(exprType(lfirst(lc))))
			return false;
	}
	return true;
}

/*
 * The number of arguments of a node's function call, or -1.
 */
static int
node_nargs(Node *node)
{
	if (IsA(node, FuncExpr))
		return list_length(((FuncExpr *) node)->args);
	if (IsA(node, OpExpr))
		return list_length(((OpExpr *) node)->args);
	return -1;
}

/*
 * check_functions_in_node callback: refuse a STABLE function that may
 * return another value at another time.  context is the node.
 */
static bool
check_stable_function(Oid funcid, void *context)
{
	Node	   *node = (Node *) context;
	HeapTuple	tup;
	Form_pg_proc proc;
	char		volatility;
	Oid			nsp;
	char	   *name;
	bool		ok = false;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", funcid);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	volatility = proc->provolatile;
	nsp = proc->pronamespace;
	name = pstrdup(NameStr(proc->proname));
	ReleaseSysCache(tup);

	if (volatility == PROVOLATILE_IMMUTABLE)
		return false;

	if (volatility == PROVOLATILE_STABLE && nsp != PG_CATALOG_NAMESPACE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("stable function %s is not supported in a job's query",
						format_procedure(funcid)),
				 errdetail("A stable function may return another value in another statement, and a job reads its rows in many statements."),
				 errhint("Declare the function IMMUTABLE if its value depends on its arguments only.")));

	if (volatility == PROVOLATILE_STABLE)
	{
		if (is_datetime_comparison(name))
			ok = true;
		for (int i = 0; !ok && i < lengthof(stable_ok); i++)
		{
			if (strcmp(stable_ok[i].name, name) != 0)
				continue;
			switch (stable_ok[i].kind)
			{
				case STP_STABLE_TIME:
					ok = true;
					break;
				case STP_STABLE_TWO_ARGS:
					ok = node_nargs(node) == 2;
					break;
				case STP_STABLE_IO:
					ok = node_types_builtin(node);
					break;
			}
		}
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("function %s() is not supported in a job's query", name),
				 errdetail("Its value depends on when, or in which session, the job's rows are read."),
				 errhint("A job reads each row once, at a time of its own: compare with a constant, or filter the result table when you read it.")));
	return false;
}

/*
 * The SQL spelling of a value function such as CURRENT_DATE.
 */
static const char *
sql_value_function_name(SQLValueFunctionOp op)
{
	switch (op)
	{
		case SVFOP_CURRENT_DATE:
			return "CURRENT_DATE";
		case SVFOP_CURRENT_TIME:
		case SVFOP_CURRENT_TIME_N:
			return "CURRENT_TIME";
		case SVFOP_CURRENT_TIMESTAMP:
		case SVFOP_CURRENT_TIMESTAMP_N:
			return "CURRENT_TIMESTAMP";
		case SVFOP_LOCALTIME:
		case SVFOP_LOCALTIME_N:
			return "LOCALTIME";
		case SVFOP_LOCALTIMESTAMP:
		case SVFOP_LOCALTIMESTAMP_N:
			return "LOCALTIMESTAMP";
		case SVFOP_CURRENT_ROLE:
			return "CURRENT_ROLE";
		case SVFOP_CURRENT_USER:
			return "CURRENT_USER";
		case SVFOP_USER:
			return "USER";
		case SVFOP_SESSION_USER:
			return "SESSION_USER";
		case SVFOP_CURRENT_CATALOG:
			return "CURRENT_CATALOG";
		case SVFOP_CURRENT_SCHEMA:
			return "CURRENT_SCHEMA";
	}
	return "?";
}

/*
 * Walk the whole analysed query and refuse what depends on when or where
 * it runs: the functions check_stable_function refuses, and every SQL
 * value function (CURRENT_DATE, CURRENT_USER, ...), which reads the clock
 * or the session.
 */
static bool
check_time_dependence_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, check_time_dependence_walker,
								 context, 0);
	if (IsA(node, SQLValueFunction))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is not supported in a job's query",
						sql_value_function_name(((SQLValueFunction *) node)->op)),
				 errdetail("Its value depends on when, or in which session, the job's rows are read."),
				 errhint("A job reads each row once, at a time of its own: compare with a constant, or filter the result table when you read it.")));
	(void) check_functions_in_node(node, check_stable_function, node);
	return expression_tree_walker(node, check_time_dependence_walker, context);
}


/*
 * Refuse what, anywhere in the analysed query, depends on when or where it
 * runs.
 */
void
stp_check_time_dependence(Node *query)
{
	(void) check_time_dependence_walker(query, NULL);
}
