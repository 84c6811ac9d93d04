/*-------------------------------------------------------------------------
 *
 * shape.c
 *		The view that presents a job's output from its state table.
 *
 * A job whose query computes with its aggregates (sum(a) / sum(b)), has
 * HAVING or ORDER BY, groups on keys it does not select, orders its
 * columns otherwise than keys first, or has no GROUP BY, keeps the
 * mergeable state of each group in a state table, one row per group: every
 * grouping expression and every distinct aggregate call, each in a column
 * of its own, maintained by the same merges as a plain result table.  The
 * query's output is then the query's own select list, HAVING and ORDER BY
 * with each grouping expression and each aggregate call replaced by its
 * state column: one state row is one group, so HAVING becomes WHERE.
 *
 * A job with a hopping window, stp.hop() in FROM, keeps one state row per
 * group and pane; its view reads the windows combined from the panes
 * (hop_windows_sql) in place of the state table.
 *
 * The expressions are rewritten as trees and deparsed against the state
 * table, as the job's other expressions are, so the view computes with
 * the same operators, functions and types as the batch query.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/typcache.h"

#include "stp.h"

typedef struct PresentContext
{
	StpShape   *shape;
	Oid			state_relid;
} PresentContext;

/*
 * A Var for a state column, as the view reads it.
 */
static Node *
state_var(PresentContext *ctx, const char *column)
{
	AttrNumber	attnum = get_attnum(ctx->state_relid, column);
	Oid			type;
	int32		typmod;
	Oid			coll;

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "state table has no column \"%s\"", column);
	get_atttypetypmodcoll(ctx->state_relid, attnum, &type, &typmod, &coll);
	return (Node *) makeVar(1, attnum, type, typmod, coll, 0);
}

/*
 * Mutator: replace each grouping expression and each aggregate call by its
 * state column.  A column of the source left over is one the query reads
 * outside both, which PostgreSQL allows only where it depends on a
 * grouped primary key; the state does not keep it.
 */
static Node *
present_mutator(Node *node, PresentContext *ctx)
{
	ListCell   *lc,
			   *lc2;

	if (node == NULL)
		return NULL;
	forboth(lc, ctx->shape->key_exprs, lc2, ctx->shape->key_columns)
	{
		if (equal(node, lfirst(lc)))
			return state_var(ctx, lfirst(lc2));
	}
	if (IsA(node, Aggref))
	{
		forboth(lc, ctx->shape->aggrefs, lc2, ctx->shape->agg_columns)
		{
			if (equal(node, lfirst(lc)))
				return state_var(ctx, lfirst(lc2));
		}
		elog(ERROR, "aggregate of the job's query not found in its state");
	}
	if (IsA(node, Var))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("column \"%s\" is used outside an aggregate and is not a GROUP BY expression",
						get_attname(ctx->shape->source, ((Var *) node)->varattno, false)),
				 errdetail("A job keeps only its grouping expressions and aggregates, not the columns that depend on a grouped primary key."),
				 errhint("Add the column to GROUP BY.")));
	return expression_tree_mutator(node, present_mutator, (void *) ctx);
}

/*
 * An expression of the query, rewritten over the state table and deparsed
 * with its columns qualified by the alias "s", so that no output column's
 * name can capture a reference in WHERE or ORDER BY.
 */
static char *
present(PresentContext *ctx, Node *expr, List *dpcontext)
{
	return deparse_expression(present_mutator(expr, ctx), dpcontext, true, false);
}

/*
 * The direction of an ORDER BY item, or an error for a USING operator that
 * is not its type's default ordering.
 */
static const char *
sort_direction(SortGroupClause *sgc, Node *expr)
{
	TypeCacheEntry *tc = lookup_type_cache(exprType(expr),
										   TYPECACHE_LT_OPR | TYPECACHE_GT_OPR);

	if (sgc->sortop == tc->lt_opr)
		return sgc->nulls_first ? " ASC NULLS FIRST" : " ASC NULLS LAST";
	if (sgc->sortop == tc->gt_opr)
		return sgc->nulls_first ? " DESC NULLS FIRST" : " DESC NULLS LAST";
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("ORDER BY ... USING is not supported in a job's query"),
			 errhint("Order by ASC or DESC, or order the result when you read it.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * The expression that combines the panes of a window into the value of the
 * aggregate kept in state column col ("p".col), of the state column's type.
 * count and sum add up, min, max, bool_and, bool_or, bit_and and bit_or
 * are their own combine, avg divides the summed sums by the summed counts
 * as avg's final function does, and the variance states merge with
 * float8_combine.
 */
static char *
combine_panes(StpAggKind kind, Oid state_relid, const char *col)
{
	const char *c = psprintf("p.%s", quote_identifier(col));
	AttrNumber	attnum = get_attnum(state_relid, col);
	Oid			type;
	int32		typmod;
	Oid			coll;
	char	   *s = psprintf("p.%s", quote_identifier(stp_avg_sum_column(col)));
	char	   *n = psprintf("p.%s", quote_identifier(stp_avg_count_column(col)));

	get_atttypetypmodcoll(state_relid, attnum, &type, &typmod, &coll);
	switch (kind)
	{
		case STP_AGG_COUNT:
			return psprintf("pg_catalog.sum(%s)::pg_catalog.int8", c);
		case STP_AGG_SUM:
			return psprintf("pg_catalog.sum(%s)::%s", c,
							format_type_extended(type, typmod, FORMAT_TYPE_FORCE_QUALIFY |
												 FORMAT_TYPE_TYPEMOD_GIVEN));
		case STP_AGG_MIN:
			return psprintf("pg_catalog.min(%s)", c);
		case STP_AGG_MAX:
			return psprintf("pg_catalog.max(%s)", c);
		case STP_AGG_AVG_NUMERIC:
			return psprintf("CASE WHEN pg_catalog.sum(%s) = 0 THEN NULL ELSE "
							"pg_catalog.sum(%s)::pg_catalog.numeric / pg_catalog.sum(%s)::pg_catalog.numeric END",
							n, s, n);
		case STP_AGG_AVG_FLOAT:
			return psprintf("CASE WHEN pg_catalog.sum(%s) = 0 THEN NULL ELSE "
							"pg_catalog.sum(%s) / pg_catalog.sum(%s)::pg_catalog.float8 END",
							n, s, n);
		case STP_AGG_BOOL_AND:
			return psprintf("pg_catalog.bool_and(%s)", c);
		case STP_AGG_BOOL_OR:
			return psprintf("pg_catalog.bool_or(%s)", c);
		case STP_AGG_BIT_AND:
			return psprintf("pg_catalog.bit_and(%s)", c);
		case STP_AGG_BIT_OR:
			return psprintf("pg_catalog.bit_or(%s)", c);
		case STP_AGG_VAR_SAMP:
			return psprintf("pg_catalog.float8_var_samp(stp.float8_merge_state(p.%s))",
							quote_identifier(stp_variance_state_column(col)));
		case STP_AGG_VAR_POP:
			return psprintf("pg_catalog.float8_var_pop(stp.float8_merge_state(p.%s))",
							quote_identifier(stp_variance_state_column(col)));
		case STP_AGG_STDDEV_SAMP:
			return psprintf("pg_catalog.float8_stddev_samp(stp.float8_merge_state(p.%s))",
							quote_identifier(stp_variance_state_column(col)));
		case STP_AGG_STDDEV_POP:
			return psprintf("pg_catalog.float8_stddev_pop(stp.float8_merge_state(p.%s))",
							quote_identifier(stp_variance_state_column(col)));
		case STP_AGG_HLL:
		case STP_AGG_TDIGEST:
			return stp_sketch_combine_agg(kind, c);
		case STP_AGG_COUNT_DISTINCT:
		case STP_AGG_SUM_DISTINCT:
		case STP_AGG_AVG_NUMERIC_DISTINCT:
		case STP_AGG_AVG_FLOAT_DISTINCT:
		case STP_AGG_COMBINE:	/* refused with stp.hop() (query.c) */
		case STP_AGG_COMBINE_FINAL:
			break;
	}
	elog(ERROR, "aggregate kind %d cannot be combined from panes", (int) kind);
	return NULL;				/* keep compiler quiet */
}

/*
 * The windows of a job with stp.hop(), combined from the panes of its state
 * table, as a relation with the state table's key and aggregate columns:
 * each pane joins the windows it lies in, which stp.hop() of the pane's
 * start returns (a window is a whole number of panes from the same
 * origin), and each window's panes are combined.
 */
static char *
hop_windows_sql(StpShape *shape, Oid state_relid)
{
	StringInfoData buf;
	ListCell   *lc,
			   *lc2;
	int			nkeys = list_length(shape->key_columns);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "SELECT ");
	foreach(lc, shape->key_columns)
	{
		const char *col = quote_identifier(lfirst(lc));

		if (foreach_current_index(lc) == shape->hop_key)
			appendStringInfo(&buf, "w._stp_window AS %s, ", col);
		else
			appendStringInfo(&buf, "p.%s AS %s, ", col, col);
	}
	forboth(lc, shape->agg_columns, lc2, shape->agg_kinds)
		appendStringInfo(&buf, "%s AS %s, ",
						 combine_panes((StpAggKind) lfirst_int(lc2), state_relid, lfirst(lc)),
						 quote_identifier(lfirst(lc)));
	buf.len -= 2;				/* the last ", " */
	buf.data[buf.len] = '\0';
	appendStringInfo(&buf, " FROM %s p, stp.hop(p.%s, %s, %s, %s) w(_stp_window) GROUP BY ",
					 stp_qualified_relname(state_relid),
					 quote_identifier(list_nth(shape->key_columns, shape->hop_key)),
					 deparse_expression(shape->hop_size, NIL, false, false),
					 deparse_expression(shape->hop_slide, NIL, false, false),
					 deparse_expression(shape->hop_origin, NIL, false, false));
	for (int i = 0; i < nkeys; i++)
		appendStringInfo(&buf, "%s%d", i > 0 ? ", " : "", i + 1);
	return buf.data;
}

/*
 * The SELECT of the view that presents the job's output from its state
 * table.  The caller has pinned the settings, so every name in the text is
 * qualified.
 */
char *
stp_shape_view_sql(StpShape *shape, Oid state_relid)
{
	PresentContext ctx;
	StringInfoData buf;
	List	   *dpcontext;
	ListCell   *lc,
			   *lc2;

	ctx.shape = shape;
	ctx.state_relid = state_relid;
	dpcontext = deparse_context_for("s", state_relid);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "SELECT ");
	foreach(lc, shape->outputs)
	{
		TargetEntry *tle = lfirst_node(TargetEntry, lc);

		appendStringInfo(&buf, "%s%s AS %s", foreach_current_index(lc) > 0 ? ", " : "",
						 present(&ctx, (Node *) tle->expr, dpcontext),
						 quote_identifier(tle->resname));
	}
	if (shape->hop_key >= 0)
		appendStringInfo(&buf, " FROM (%s) s", hop_windows_sql(shape, state_relid));
	else
		appendStringInfo(&buf, " FROM %s s", stp_qualified_relname(state_relid));
	if (shape->having)
		appendStringInfo(&buf, " WHERE %s", present(&ctx, shape->having, dpcontext));
	forboth(lc, shape->sort, lc2, shape->sort_exprs)
	{
		SortGroupClause *sgc = lfirst_node(SortGroupClause, lc);

		appendStringInfo(&buf, "%s%s%s", foreach_current_index(lc) > 0 ? ", " : " ORDER BY ",
						 present(&ctx, lfirst(lc2), dpcontext),
						 sort_direction(sgc, lfirst(lc2)));
	}
	return buf.data;
}
