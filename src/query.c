/*-------------------------------------------------------------------------
 *
 * query.c
 *		Analysis of a job's SELECT.
 *
 * The query is parsed and analysed by PostgreSQL itself, so names resolve
 * against the creating session's search_path exactly as they would for the
 * batch query.  What stp cannot run incrementally is refused here, naming
 * the unsupported part (functions whose value depends on when they run, in
 * volatility.c).  What it can run is taken apart into group keys,
 * aggregates and a WHERE clause, each deparsed with a search_path of
 * pg_catalog only, so the stored text means the same in every session.
 * A hopping window, stp.hop() in FROM, becomes a key on its pane
 * (hop.c), which the result view combines into windows (shape.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_aggregate.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "parser/parse_func.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "parser/analyze.h"
#include "parser/parser.h"
#include "parser/parse_agg.h"
#include "parser/parsetree.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/regproc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "stp.h"

/*
 * Refuse an unsupported part of a job's query, naming it.
 */
static void
refuse(const char *what, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s are not supported in a job's query", what),
			 hint ? errhint("%s", hint) : 0));
}

/*
 * Refuse whole-statement forms before parse analysis, where the raw tree
 * still tells them apart (SELECT INTO, VALUES, set operations, WITH).
 */
static SelectStmt *
check_raw_statement(const char *query_text)
{
	List	   *raw = raw_parser(query_text, RAW_PARSE_DEFAULT);
	RawStmt    *rs;
	SelectStmt *ss;

	if (list_length(raw) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a job's query must be exactly one SELECT statement"),
				 errdetail("The query text holds %d statements.", list_length(raw))));

	rs = linitial_node(RawStmt, raw);
	if (!IsA(rs->stmt, SelectStmt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a job's query must be a SELECT statement"),
				 errhint("Pass the SELECT ... GROUP BY whose result the job keeps up to date.")));

	ss = (SelectStmt *) rs->stmt;
	if (ss->op != SETOP_NONE)
		refuse("UNION, INTERSECT and EXCEPT", NULL);
	if (ss->valuesLists)
		refuse("VALUES lists", NULL);
	if (ss->intoClause)
		refuse("SELECT INTO clauses", "stp_start_job creates the result table itself; name it with result_table.");
	if (ss->withClause)
		refuse("WITH clauses", NULL);
	if (ss->lockingClause)
		refuse("FOR UPDATE and FOR SHARE clauses", NULL);
	return ss;
}

/*
 * The source must be a plain table that a background worker, running as
 * the job's owner, reads the same way the creating session would.
 */
static void
check_source(RangeTblEntry *rte)
{
	Relation	rel;
	char	   *name = get_rel_name(rte->relid);

	switch (rte->relkind)
	{
		case RELKIND_RELATION:
		case RELKIND_PARTITIONED_TABLE:
			break;
		case RELKIND_VIEW:
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("source \"%s\" is a view", name),
					 errhint("A job reads an append-only table; name the table the view reads from.")));
			break;
		case RELKIND_MATVIEW:
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("source \"%s\" is a materialized view", name),
					 errhint("A job reads an append-only table; name the table the materialized view reads from.")));
			break;
		case RELKIND_FOREIGN_TABLE:
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("source \"%s\" is a foreign table", name),
					 errhint("A job reads an append-only local table.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("source \"%s\" is not a table", name)));
	}

	rel = table_open(rte->relid, AccessShareLock);
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is a temporary table", name),
				 errhint("Background workers cannot see a session's temporary tables; use a permanent or unlogged table.")));
	if (rel->rd_rel->relrowsecurity)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" has row-level security enabled", name),
				 errdetail("A job aggregates every row of its source, so it cannot honour row-level policies."),
				 errhint("Disable row-level security on the source, or aggregate a table without policies.")));
	table_close(rel, AccessShareLock);
}

/* The variance and standard deviation aggregates, over floats only. */
static const struct
{
	const char *name;
	StpAggKind	kind;
}			variance_aggregates[] = {
	{"variance", STP_AGG_VAR_SAMP},
	{"var_samp", STP_AGG_VAR_SAMP},
	{"var_pop", STP_AGG_VAR_POP},
	{"stddev", STP_AGG_STDDEV_SAMP},
	{"stddev_samp", STP_AGG_STDDEV_SAMP},
	{"stddev_pop", STP_AGG_STDDEV_POP},
};

/*
 * Map a supported aggregate to its kind, or refuse it.
 */
static StpAggKind
classify_aggregate(Aggref *agg, const char *colname)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	char		fname[NAMEDATALEN];
	Oid			nsp;
	Oid			argtype = InvalidOid;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(agg->aggfnoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", agg->aggfnoid);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	strlcpy(fname, NameStr(proc->proname), NAMEDATALEN);
	nsp = proc->pronamespace;
	ReleaseSysCache(tup);

	if (agg->aggkind != AGGKIND_NORMAL || agg->aggorder)
		refuse("ordered-set aggregates and aggregates with ORDER BY",
			   "Ordered-set and hypothetical-set aggregates such as percentile_cont need every value of a group; tdigest(x, compression) from the tdigest extension keeps mergeable percentiles.");

	if (agg->args)
		argtype = exprType((Node *) linitial_node(TargetEntry, agg->args)->expr);

	if (agg->aggdistinct)
	{
		if (nsp != PG_CATALOG_NAMESPACE ||
			(strcmp(fname, "count") != 0 && strcmp(fname, "sum") != 0 &&
			 strcmp(fname, "avg") != 0))
			refuse("DISTINCT aggregates other than count, sum and avg",
				   "count(DISTINCT x), sum(DISTINCT x) and avg(DISTINCT x) keep a state that stp can merge.");
		if (!OidIsValid(GetDefaultOpClass(argtype, BTREE_AM_OID)))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("%s(DISTINCT %s) is not supported in a job's query",
							fname, format_type_be(argtype)),
					 errdetail("stp keeps the distinct values in a unique index, which needs a default btree operator class for the type.")));
		if (strcmp(fname, "count") == 0)
			return STP_AGG_COUNT_DISTINCT;
		if (strcmp(fname, "sum") == 0)
			return STP_AGG_SUM_DISTINCT;
		switch (argtype)
		{
			case INT2OID:
			case INT4OID:
			case INT8OID:
			case NUMERICOID:
				return STP_AGG_AVG_NUMERIC_DISTINCT;
			case FLOAT4OID:
			case FLOAT8OID:
				return STP_AGG_AVG_FLOAT_DISTINCT;
			default:
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("avg(DISTINCT %s) is not supported in a job's query",
								format_type_be(argtype)),
						 errhint("avg is supported over smallint, integer, bigint, numeric, real and double precision.")));
		}
	}

	if (nsp == PG_CATALOG_NAMESPACE)
	{
		if (strcmp(fname, "count") == 0)
			return STP_AGG_COUNT;
		if (strcmp(fname, "sum") == 0)
			return STP_AGG_SUM;
		if (strcmp(fname, "min") == 0)
			return STP_AGG_MIN;
		if (strcmp(fname, "max") == 0)
			return STP_AGG_MAX;
		if (strcmp(fname, "avg") == 0)
		{
			switch (argtype)
			{
				case INT2OID:
				case INT4OID:
				case INT8OID:
				case NUMERICOID:
					return STP_AGG_AVG_NUMERIC;
				case FLOAT4OID:
				case FLOAT8OID:
					return STP_AGG_AVG_FLOAT;
				default:
					/* avg(interval) has a combinable interval[] state. */
					return stp_combine_kind(agg, fname, colname);
			}
		}
	}
	if (nsp != PG_CATALOG_NAMESPACE)
	{
		StpAggKind	sketch = stp_sketch_kind(agg->aggfnoid, fname);

		if (STP_AGG_IS_SKETCH(sketch))
			return sketch;
	}
	if (nsp == PG_CATALOG_NAMESPACE)
	{
		if (strcmp(fname, "bool_and") == 0 || strcmp(fname, "every") == 0)
			return STP_AGG_BOOL_AND;
		if (strcmp(fname, "bool_or") == 0)
			return STP_AGG_BOOL_OR;
		if (strcmp(fname, "bit_and") == 0)
			return STP_AGG_BIT_AND;
		if (strcmp(fname, "bit_or") == 0)
			return STP_AGG_BIT_OR;
		for (int i = 0; i < lengthof(variance_aggregates); i++)
		{
			if (strcmp(fname, variance_aggregates[i].name) != 0)
				continue;
			if (argtype != FLOAT4OID && argtype != FLOAT8OID)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("%s(%s) is not supported in a job's query",
								fname, format_type_be(argtype)),
						 errdetail("Over %s, PostgreSQL keeps a state that stp cannot store and merge.",
								   format_type_be(argtype)),
						 errhint("%s is supported over real and double precision; cast the argument to double precision if a double precision result will do.",
								 fname)));
			return variance_aggregates[i].kind;
		}
	}
	return stp_combine_kind(agg, fname, colname);
}

/*
 * A result-table column as the query produces it.
 */
static StpColumn *
make_column(const char *name, Oid type, int32 typmod, Oid collation)
{
	StpColumn  *col = palloc(sizeof(StpColumn));

	col->name = pstrdup(name);
	col->type = type;
	col->typmod = typmod;
	col->collation = collation;
	return col;
}

/*
 * The type sum() returns for an argument type, for the state column that
 * avg keeps.
 */
static Oid
avg_sum_type(StpAggKind kind, Oid argtype)
{
	if (kind == STP_AGG_AVG_FLOAT || kind == STP_AGG_AVG_FLOAT_DISTINCT)
		return FLOAT8OID;
	if (argtype == INT2OID || argtype == INT4OID)
		return INT8OID;
	return NUMERICOID;
}

/*
 * Refuse an output column name that stp cannot keep.  names holds the
 * names seen so far.
 */
static void
check_output_name(TargetEntry *tle, List *names)
{
	char	   *name = tle->resname;
	ListCell   *lc;

	if (name == NULL || strcmp(name, "?column?") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_COLUMN_DEFINITION),
				 errmsg("output column %d of the job's query has no name", tle->resno),
				 errhint("Give it a name with AS.")));
	if (strncmp(name, "_stp_", 5) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_RESERVED_NAME),
				 errmsg("output column name \"%s\" is reserved", name),
				 errdetail("Names beginning with \"_stp_\" are kept for stp's state columns."),
				 errhint("Choose another name with AS.")));
	foreach(lc, names)
	{
		if (strcmp((char *) lfirst(lc), name) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("output column name \"%s\" appears more than once", name),
					 errhint("Give each output column a distinct name with AS.")));
	}
}

/*
 * Is the output column one of the GROUP BY expressions?
 */
static bool
is_group_key(Query *q, TargetEntry *tle)
{
	return tle->ressortgroupref != 0 &&
		get_sortgroupref_clause_noerr(tle->ressortgroupref, q->groupClause) != NULL;
}

/*
 * Is the query's output its state: its group keys, all selected, then its
 * aggregates, each a column of its own, and nothing that filters or orders
 * the groups?  Such a job merges into its result table directly.  A
 * count(DISTINCT x) needs a state table, next to which its distinct table
 * is kept.
 */
static bool
is_plain(Query *q)
{
	bool		seen_agg = false;
	ListCell   *lc;

	if (q->groupClause == NIL || q->havingQual || q->sortClause)
		return false;
	foreach(lc, q->targetList)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		if (is_group_key(q, tle))
		{
			if (tle->resjunk || seen_agg)
				return false;
		}
		else if (tle->resjunk)
			continue;
		else if (IsA(tle->expr, Aggref) && !((Aggref *) tle->expr)->aggdistinct)
			seen_agg = true;
		else
			return false;
	}
	return true;
}

/*
 * Add a group key: its state column and its deparsed expression.
 */
static void
add_key(StpJobDef *def, List **keys, const char *name, Node *expr,
		List *dpcontext)
{
	Oid			type = exprType(expr);
	Oid			coll = exprCollation(expr);

	if (!stp_type_routable(type, coll))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("group key \"%s\" of type %s cannot be routed to a partition",
						name, format_type_be(type)),
				 errhint("A group key's type needs a hash operator class.")));
	*keys = lappend(*keys, make_column(name, type, exprTypmod(expr), coll));
	def->key_names = lappend(def->key_names, pstrdup(name));
	def->key_exprs = lappend(def->key_exprs,
							 deparse_expression(expr, dpcontext, false, false));
}

/*
 * Set by add_aggregate when a sum or avg has an argument that is not an
 * integer.  A slot job can subtract only integers exactly: a numeric sum
 * shows the largest scale of its values, which subtracting a value does
 * not take back, and a NaN, once added, cannot be subtracted.
 */
static bool non_integer_sum = false;

/*
 * Add an aggregate: its state column, avg's hidden state columns, and its
 * deparsed argument and FILTER condition.
 */
static void
add_aggregate(StpJobDef *def, List **aggs, List **state, const char *name,
			  Aggref *agg, List *dpcontext)
{
	StpAggKind	kind = classify_aggregate(agg, name);
	char	   *arg = NULL;

	if (agg->args)
	{
		Node	   *argexpr = (Node *) linitial_node(TargetEntry, agg->args)->expr;

		arg = deparse_expression(argexpr, dpcontext, false, false);
		if (kind == STP_AGG_SUM || kind == STP_AGG_AVG_NUMERIC)
		{
			Oid			base = getBaseType(exprType(argexpr));

			if (base != INT2OID && base != INT4OID && base != INT8OID)
				non_integer_sum = true;
		}
		if (STP_AGG_IS_VARIANCE(kind))
		{
			if (strlen(stp_variance_state_column(name)) >= NAMEDATALEN)
				ereport(ERROR,
						(errcode(ERRCODE_NAME_TOO_LONG),
						 errmsg("name of %s column \"%s\" is too long",
								stp_agg_kind_name(kind), name),
						 errdetail("stp keeps its state in a column named \"_stp_<name>_state\", which must fit in %d bytes.",
								   NAMEDATALEN - 1),
						 errhint("Give the column a name of at most %d bytes.",
								 (int) (NAMEDATALEN - 1 - strlen("_stp__state")))));
			*state = lappend(*state,
							 make_column(stp_variance_state_column(name),
										 FLOAT8ARRAYOID, -1, InvalidOid));
		}
		if (STP_AGG_IS_AVG(kind))
		{
			if (strlen(stp_avg_count_column(name)) >= NAMEDATALEN)
				ereport(ERROR,
						(errcode(ERRCODE_NAME_TOO_LONG),
						 errmsg("name of avg column \"%s\" is too long", name),
						 errdetail("stp keeps avg's state in columns named \"_stp_<name>_sum\" and \"_stp_<name>_count\", which must fit in %d bytes.",
								   NAMEDATALEN - 1),
						 errhint("Give the avg column a name of at most %d bytes.",
								 (int) (NAMEDATALEN - 1 - strlen("_stp__count")))));
			*state = lappend(*state,
							 make_column(stp_avg_sum_column(name),
										 avg_sum_type(kind, exprType(argexpr)),
										 -1, InvalidOid));
			*state = lappend(*state,
							 make_column(stp_avg_count_column(name),
										 INT8OID, -1, InvalidOid));
		}
	}
	if (STP_AGG_IS_COMBINE(kind))
	{
		arg = stp_combine_args(agg, dpcontext);
		if (kind == STP_AGG_COMBINE_FINAL)
		{
			Oid			transtype = stp_combine_transtype(agg->aggfnoid);

			if (strlen(stp_variance_state_column(name)) >= NAMEDATALEN)
				ereport(ERROR,
						(errcode(ERRCODE_NAME_TOO_LONG),
						 errmsg("name of aggregate column \"%s\" is too long", name),
						 errdetail("stp keeps the aggregate's state in a column named \"_stp_<name>_state\", which must fit in %d bytes.",
								   NAMEDATALEN - 1),
						 errhint("Give the column a name of at most %d bytes.",
								 (int) (NAMEDATALEN - 1 - strlen("_stp__state")))));

			/*
			 * The state has the collation that the partial aggregate's
			 * value gets: its arguments' common one, else the type's.
			 */
			*state = lappend(*state,
							 make_column(stp_variance_state_column(name), transtype, -1,
										 !type_is_collatable(transtype) ? InvalidOid :
										 OidIsValid(agg->inputcollid) ? agg->inputcollid :
										 get_typcollation(transtype)));
		}
	}
	if (STP_AGG_IS_SKETCH(kind))
	{
		/* A sketch's batch aggregate is the query's own call. */
		Aggref	   *call = copyObject(agg);

		call->aggfilter = NULL;
		arg = deparse_expression((Node *) call, dpcontext, false, false);
	}
	*aggs = lappend(*aggs, make_column(name, agg->aggtype, -1, agg->aggcollid));
	def->agg_names = lappend(def->agg_names, pstrdup(name));
	def->agg_kinds = lappend_int(def->agg_kinds, kind);
	def->agg_functions = lappend_oid(def->agg_functions,
									 STP_AGG_IS_COMBINE(kind) ? agg->aggfnoid : InvalidOid);
	def->agg_args = lappend(def->agg_args, arg);
	def->agg_filters = lappend(def->agg_filters, agg->aggfilter ?
							   deparse_expression((Node *) agg->aggfilter,
												  dpcontext, false, false) : NULL);
}

/*
 * Walker: collect each distinct aggregate call, not descending into one.
 */
static bool
collect_aggrefs_walker(Node *node, List **aggrefs)
{
	ListCell   *lc;

	if (node == NULL)
		return false;
	if (IsA(node, Aggref))
	{
		foreach(lc, *aggrefs)
		{
			if (equal(lfirst(lc), node))
				return false;
		}
		*aggrefs = lappend(*aggrefs, node);
		return false;
	}
	return expression_tree_walker(node, collect_aggrefs_walker, aggrefs);
}

/*
 * Take a query that is its own state apart: the keys as they are selected,
 * then each aggregate column.
 */
static void
analyze_plain(Query *q, StpJobDef *def, List **keys, List **aggs,
			  List **state, List *dpcontext)
{
	ListCell   *lc;

	foreach(lc, q->targetList)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		if (tle->resjunk)
			continue;
		if (is_group_key(q, tle))
			add_key(def, keys, tle->resname, (Node *) tle->expr, dpcontext);
		else
			add_aggregate(def, aggs, state, tle->resname, (Aggref *) tle->expr,
						  dpcontext);
	}
}

/*
 * Is the range table entry a call of stp.hop(), the hopping window?
 */
static FuncExpr *
hop_call(RangeTblEntry *rte)
{
	RangeTblFunction *rtfunc;
	FuncExpr   *fexpr;
	Oid			nsp = get_namespace_oid("stp", true);

	if (rte->rtekind != RTE_FUNCTION || list_length(rte->functions) != 1)
		return NULL;
	rtfunc = linitial_node(RangeTblFunction, rte->functions);
	if (!IsA(rtfunc->funcexpr, FuncExpr))
		return NULL;
	fexpr = (FuncExpr *) rtfunc->funcexpr;
	if (!OidIsValid(nsp) || get_func_namespace(fexpr->funcid) != nsp ||
		strcmp(get_func_name(fexpr->funcid), "hop") != 0)
		return NULL;
	return fexpr;
}

/*
 * Refuse functions in FROM other than one stp.hop() after the source, and
 * return that call, or NULL.  Its size, slide and origin must be
 * constants that stp.hop() accepts, so that the job's panes are fixed.
 */
static FuncExpr *
find_hop(Query *q)
{
	FuncExpr   *fexpr = NULL;
	ListCell   *lc;
	int64		size,
				slide;

	foreach(lc, q->rtable)
	{
		RangeTblEntry *r = lfirst_node(RangeTblEntry, lc);

		if (r->rtekind != RTE_FUNCTION)
			continue;
		if (foreach_current_index(lc) != 1 || hop_call(r) == NULL)
			refuse("functions in FROM other than stp.hop()",
				   "A hopping window is written FROM source, stp.hop(ts, size, slide) AS w ... GROUP BY w; other functions can be used in expressions.");
		if (r->funcordinality)
			refuse("WITH ORDINALITY clauses", NULL);
		fexpr = hop_call(r);
	}
	if (fexpr == NULL)
		return NULL;
	if (list_length(q->rtable) != 2 || list_length(q->jointree->fromlist) != 2 ||
		!IsA(linitial(q->jointree->fromlist), RangeTblRef) ||
		!IsA(lsecond(q->jointree->fromlist), RangeTblRef))
		refuse("joins", "A hopping window is written FROM source, stp.hop(ts, size, slide) AS w, with a comma.");

	/*
	 * The planner, not parse analysis, adds the default origin and puts
	 * named arguments in order; do that here.
	 */
	fexpr = castNode(FuncExpr, eval_const_expressions(NULL, (Node *) copyObject(fexpr)));
	Assert(list_length(fexpr->args) == 4);
	for (int i = 1; i < 4; i++)
	{
		Node	   *arg = list_nth(fexpr->args, i);

		if (!IsA(arg, Const) || ((Const *) arg)->constisnull)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("the size, slide and origin of stp.hop() in a job's query must be constants"),
					 errhint("Write them as literals, such as stp.hop(ts, '1 minute', '10 seconds').")));
	}
	stp_hop_check(DatumGetIntervalP(((Const *) lsecond(fexpr->args))->constvalue),
				  DatumGetIntervalP(((Const *) lthird(fexpr->args))->constvalue),
				  &size, &slide);
	if (TIMESTAMP_NOT_FINITE(DatumGetInt64(((Const *) lfourth(fexpr->args))->constvalue)))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("the origin of a hopping window must be finite")));
	return fexpr;
}

/*
 * Walker: does the expression read the window of stp.hop(), range table
 * entry 2?
 */
static bool
reads_window_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var))
		return ((Var *) node)->varno == 2 && ((Var *) node)->varlevelsup == 0;
	return expression_tree_walker(node, reads_window_walker, context);
}

/*
 * Walker: refuse an aggregate whose argument or FILTER reads the window.
 */
static bool
window_in_aggregate_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Aggref))
	{
		if (reads_window_walker(node, NULL))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("the window of stp.hop() cannot be used inside an aggregate in a job's query"),
					 errdetail("A job aggregates each row once, into its pane, not once per window."),
					 errhint("Use the window only as a GROUP BY key and in expressions over it.")));
		return false;
	}
	return expression_tree_walker(node, window_in_aggregate_walker, context);
}

/*
 * Check where a query with stp.hop() reads its window: it must group by
 * the window itself, and read it nowhere but there and in expressions
 * over the groups.  Returns the grouping expression, the window's Var.
 */
static Node *
check_hop_uses(Query *q)
{
	Node	   *window = NULL;
	ListCell   *lc;

	foreach(lc, q->groupClause)
	{
		Node	   *expr = get_sortgroupclause_expr(lfirst_node(SortGroupClause, lc),
													q->targetList);

		if (IsA(expr, Var) && reads_window_walker(expr, NULL))
			window = expr;
		else if (reads_window_walker(expr, NULL))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("a job's query can group by the window of stp.hop() only as it is"),
					 errhint("GROUP BY the window itself, and compute with it in the select list.")));
	}
	if (window == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job's query with stp.hop() must group by its window"),
				 errdetail("Without it, every row would be counted once per window it lies in."),
				 errhint("Add the window to GROUP BY: FROM source, stp.hop(ts, size, slide) AS w ... GROUP BY w.")));
	if (reads_window_walker(q->jointree->quals, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the window of stp.hop() cannot be used in WHERE in a job's query"),
				 errhint("Filter the windows with HAVING, or filter the rows by their timestamp.")));
	(void) window_in_aggregate_walker((Node *) q->targetList, NULL);
	(void) window_in_aggregate_walker(q->havingQual, NULL);
	return window;
}

/*
 * The pane of a hopping window, stp.hop_pane() with the arguments of the
 * query's stp.hop() call: the key the job groups its rows by.
 */
static Node *
hop_pane_expr(FuncExpr *hop)
{
	FuncExpr   *pane = copyObject(hop);
	Oid			argtypes[4];
	List	   *name = list_make2(makeString("stp"), makeString("hop_pane"));

	for (int i = 0; i < 4; i++)
		argtypes[i] = exprType(list_nth(hop->args, i));
	pane->funcid = LookupFuncName(name, 4, argtypes, false);
	pane->funcretset = false;
	return (Node *) pane;
}

/*
 * Take a query whose output is computed from its state apart: its state
 * keeps every grouping expression (named as the column that selects it,
 * or _stp_k<i>) and every distinct aggregate call (_stp_a<i>), and the
 * shape keeps what the result view computes from them.  A query without
 * GROUP BY has one group, keyed by a constant, which one partition owns.
 */
static StpShape *
analyze_shaped(Query *q, Oid rte_relid, StpJobDef *def, List **keys,
			   List **aggs, List **state, List *dpcontext, FuncExpr *hop,
			   Node *window)
{
	StpShape   *shape = palloc0(sizeof(StpShape));
	ListCell   *lc;

	shape->hop_key = -1;

	foreach(lc, q->targetList)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		if (!tle->resjunk)
			shape->outputs = lappend(shape->outputs, tle);
	}
	shape->source = rte_relid;
	shape->having = q->havingQual;
	shape->sort = q->sortClause;
	foreach(lc, q->sortClause)
	{
		SortGroupClause *sgc = lfirst_node(SortGroupClause, lc);

		shape->sort_exprs = lappend(shape->sort_exprs,
									get_sortgroupclause_expr(sgc, q->targetList));
	}

	if (q->groupClause == NIL)
	{
		/* More than one partition needs row mode: see job.c. */
		shape->global = true;
		*keys = lappend(*keys, make_column("_stp_all", BOOLOID, -1, InvalidOid));
		def->key_names = lappend(def->key_names, pstrdup("_stp_all"));
		def->key_exprs = lappend(def->key_exprs, pstrdup("true"));
	}
	foreach(lc, q->groupClause)
	{
		SortGroupClause *sgc = lfirst_node(SortGroupClause, lc);
		TargetEntry *tle = get_sortgroupclause_tle(sgc, q->targetList);
		char	   *name = tle->resjunk ?
			psprintf("_stp_k%d", foreach_current_index(lc)) : tle->resname;

		/*
		 * The state keeps the window's panes; the view combines them into
		 * windows.
		 */
		if (window && equal(tle->expr, window))
		{
			add_key(def, keys, name, hop_pane_expr(hop), dpcontext);
			shape->hop_key = list_length(shape->key_columns);
			shape->hop_size = lsecond(hop->args);
			shape->hop_slide = lthird(hop->args);
			shape->hop_origin = lfourth(hop->args);
		}
		else
			add_key(def, keys, name, (Node *) tle->expr, dpcontext);
		shape->key_exprs = lappend(shape->key_exprs, tle->expr);
		shape->key_columns = lappend(shape->key_columns, name);
	}

	(void) collect_aggrefs_walker((Node *) q->targetList, &shape->aggrefs);
	(void) collect_aggrefs_walker(q->havingQual, &shape->aggrefs);
	foreach(lc, shape->aggrefs)
	{
		char	   *name = psprintf("_stp_a%d", foreach_current_index(lc));

		add_aggregate(def, aggs, state, name, lfirst_node(Aggref, lc), dpcontext);
		shape->agg_columns = lappend(shape->agg_columns, name);
		if (hop && STP_AGG_IS_COMBINE(llast_int(def->agg_kinds)))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("aggregate %s() is not supported with stp.hop() in a job's query",
							get_func_name(lfirst_node(Aggref, lc)->aggfnoid)),
					 errdetail("A window would be combined from its panes' states, which needs an aggregate over the states that stp does not create."),
					 errhint("Use a tumbling window, GROUP BY date_bin(...), for this aggregate, or one of the aggregates that stp combines itself, such as sum, count, min, max or avg.")));
		if (hop && STP_AGG_IS_DISTINCT(llast_int(def->agg_kinds)))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("DISTINCT aggregates are not supported with stp.hop() in a job's query"),
					 errdetail("A window's distinct values cannot be combined from its panes' counts."),
					 errhint("Use a tumbling window, GROUP BY date_bin(...), for DISTINCT aggregates.")));
	}
	shape->agg_kinds = list_copy(def->agg_kinds);
	return shape;
}

/*
 * Analyse the job's query.  Fills in the source and the deparsed pieces of
 * def, and returns the state table's columns: the keys first (nkeys of
 * them), then the aggregates, then avg's hidden state columns.  *shape is
 * NULL when the query's output is its state; else it describes the view
 * that presents the output.
 */
void
stp_analyze_query(const char *query_text, StpJobDef *def,
				  List **columns, int *nkeys, StpShape **shape)
{
	SelectStmt *ss;
	RawStmt    *rs;
	Query	   *q;
	RangeTblEntry *rte;
	List	   *dpcontext;
	List	   *keys = NIL;
	List	   *aggs = NIL;
	List	   *state = NIL;
	List	   *names = NIL;
	ListCell   *lc;
	int			save_nestlevel;
	FuncExpr   *hop;
	Node	   *window = NULL;

	non_integer_sum = false;
	ss = check_raw_statement(query_text);
	rs = makeNode(RawStmt);
	rs->stmt = (Node *) ss;
	rs->stmt_location = -1;
	q = parse_analyze_fixedparams(rs, query_text, NULL, 0, NULL);

	if (q->commandType != CMD_SELECT || q->utilityStmt != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a job's query must be a SELECT statement")));
	if (q->hasWindowFuncs)
		refuse("window functions", NULL);
	if (q->hasSubLinks)
		refuse("subqueries", NULL);
	if (q->hasTargetSRFs)
		refuse("set-returning functions", NULL);
	if (q->distinctClause)
		refuse("DISTINCT clauses", NULL);
	if (q->limitCount || q->limitOffset)
		refuse("LIMIT and OFFSET clauses",
			   "A job keeps every group up to date; apply LIMIT when you read the result.");
	if (q->groupingSets)
		refuse("GROUPING SETS, ROLLUP and CUBE", "Use one job per grouping.");

	if (list_length(q->rtable) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a job's query must read from a table")));
	foreach(lc, q->rtable)
	{
		RangeTblEntry *r = lfirst_node(RangeTblEntry, lc);

		if (r->rtekind == RTE_SUBQUERY)
			refuse("subqueries in FROM", NULL);
		if (r->rtekind == RTE_TABLEFUNC)
			refuse("functions in FROM", NULL);
		if (r->rtekind == RTE_VALUES)
			refuse("VALUES lists", NULL);
	}
	hop = find_hop(q);
	if (hop == NULL &&
		(list_length(q->rtable) != 1 || list_length(q->jointree->fromlist) != 1))
		refuse("joins", "A job reads one source table.");
	rte = linitial_node(RangeTblEntry, q->rtable);
	if (rte->rtekind != RTE_RELATION)
		refuse("sources other than a table", NULL);
	check_source(rte);

	if (contain_volatile_functions((Node *) q))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("volatile functions are not supported in a job's query"),
				 errdetail("A job's result must not depend on when its rows are read."),
				 errhint("Remove calls such as random(), clock_timestamp() or nextval().")));
	stp_check_time_dependence((Node *) q);

	if (q->groupClause == NIL && !q->hasAggs)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a job's query needs a GROUP BY clause or an aggregate"),
				 errhint("A job keeps the result of an aggregation, one row per group.")));

	if (hop)
		window = check_hop_uses(q);

	foreach(lc, q->targetList)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		if (tle->resjunk)
			continue;
		check_output_name(tle, names);
		names = lappend(names, tle->resname);
	}

	/* Deparse with a search_path that makes every name fully qualified. */
	save_nestlevel = NewGUCNestLevel();
	stp_pin_settings();
	dpcontext = deparse_context_for(get_rel_name(rte->relid), rte->relid);

	def->key_names = def->key_exprs = NIL;
	def->agg_names = def->agg_kinds = def->agg_args = def->agg_filters = NIL;
	def->agg_functions = NIL;
	if (hop == NULL && is_plain(q))
	{
		analyze_plain(q, def, &keys, &aggs, &state, dpcontext);
		*shape = NULL;
	}
	else
		*shape = analyze_shaped(q, rte->relid, def, &keys, &aggs, &state, dpcontext,
								hop, window);

	def->source = rte->relid;
	def->where_clause = q->jointree->quals ?
		deparse_expression(q->jointree->quals, dpcontext, false, false) : NULL;

	AtEOXact_GUC(true, save_nestlevel);

	/*
	 * A slot job whose aggregates can take an old row back (count, and sum
	 * and avg of integers) keeps what that needs: each group's row count,
	 * and each sum's count of values.
	 */
	if (def->slot_source && (*shape == NULL || !(*shape)->global))
	{
		List	   *types = NIL;
		bool		fits = true;
		ListCell   *lc2;

		foreach(lc, aggs)
			types = lappend_oid(types, ((StpColumn *) lfirst(lc))->type);
		forboth(lc, def->agg_names, lc2, def->agg_kinds)
		{
			if ((StpAggKind) lfirst_int(lc2) == STP_AGG_SUM)
				fits &= strlen(stp_avg_count_column(lfirst(lc))) < NAMEDATALEN;
		}
		if (fits && !non_integer_sum && stp_slot_retract_kinds(def, types))
		{
			forboth(lc, def->agg_names, lc2, def->agg_kinds)
			{
				if ((StpAggKind) lfirst_int(lc2) == STP_AGG_SUM)
					state = lappend(state, make_column(stp_avg_count_column(lfirst(lc)),
													   INT8OID, -1, InvalidOid));
			}
			state = lappend(state, make_column(STP_ROWS_COLUMN, INT8OID, -1, InvalidOid));
		}
	}

	*nkeys = list_length(keys);
	*columns = list_concat(list_concat(keys, aggs), state);
}
