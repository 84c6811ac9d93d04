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
