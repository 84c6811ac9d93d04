/*-------------------------------------------------------------------------
 *
 * route.c
 *		StpRoute: a custom scan that routes rows to a partition without a
 *		SQL function call per row.
 *
 * A batch statement of a groups-mode job keeps its partition's rows with
 * the filter stp.in_partition(p, N, keys...).  As a qual it costs a
 * function call per source row, with its argument setup, on top of the
 * hashing (partition.c).  When a base relation's restriction clauses hold
 * such a call, with a constant partition and count, the planner hook below
 * puts a CustomPath "StpRoute" above each of the relation's unparameterized
 * scan paths (sequential, index, bitmap, ...), keeping the scan that the
 * planner chose.  Its plan takes the call out of the child scan's qual and
 * keeps only the key expressions.  At execution it pulls each tuple from
 * the child, reads plain Var keys straight from the slot (other key
 * expressions are evaluated as compiled expressions), hashes them with the
 * same StpRouter as stp.in_partition, and returns only the partition's
 * rows: no fmgr call per row for a key hashed by its bytes.
 *
 * Only calls of the stp extension's own stp.in_partition, found by OID,
 * are taken over; every other query is left alone.  The node is not
 * parallel aware: above a parallel child scan each process filters its own
 * share of the rows.  It does not support mark/restore or backward scans,
 * and it is not used on a query's result relation or where rows are
 * locked (EvalPlanQual would need the base relation's tuple).  The GUC
 * stp.route_scan (on by default) turns it off, to compare both plans.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/explain.h"
#include "commands/extension.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/extensible.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/clauses.h"
#include "optimizer/cost.h"
#include "optimizer/optimizer.h"
#include "optimizer/pathnode.h"
#include "optimizer/plancat.h"
#include "optimizer/planmain.h"
#include "optimizer/restrictinfo.h"
#include "optimizer/tlist.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

#include "stp.h"

bool		stp_route_scan = true;

/* OID of stp.in_partition in this database; valid once looked up. */
static Oid	in_partition_oid = InvalidOid;
static bool in_partition_oid_valid = false;

/* A recognised routing filter: partition, count and key expressions. */
typedef struct RouteClause
{
	Expr	   *clause;
	int32		partition;
	int32		nparts;
	List	   *keys;
} RouteClause;

/* Execution state of one StpRoute node. */
typedef struct RouteScanState
{
	CustomScanState css;
	int32		partition;
	int32		nparts;
	int			nkeys;
	AttrNumber *attnos;			/* > 0: the key is this column of the slot */
	ExprState **exprs;			/* otherwise its compiled expression */
	Datum	   *values;
	bool	   *nulls;
	StpRouter  *router;
	bool		per_tuple_memory;	/* keys need the per-tuple context */
} RouteScanState;

static Plan *route_plan_path(PlannerInfo *root, RelOptInfo *rel,
							 CustomPath *best_path, List *tlist,
							 List *clauses, List *custom_plans);
static Node *route_create_state(CustomScan *cscan);
static void route_begin(CustomScanState *node, EState *estate, int eflags);
static TupleTableSlot *route_exec(CustomScanState *node);
static void route_end(CustomScanState *node);
static void route_rescan(CustomScanState *node);
static void route_explain(CustomScanState *node, List *ancestors,
						  ExplainState *es);

static const CustomPathMethods route_path_methods = {
	.CustomName = "StpRoute",
	.PlanCustomPath = route_plan_path,
};

static const CustomScanMethods route_scan_methods = {
	.CustomName = "StpRoute",
	.CreateCustomScanState = route_create_state,
};

static const CustomExecMethods route_exec_methods = {
	.CustomName = "StpRoute",
	.BeginCustomScan = route_begin,
	.ExecCustomScan = route_exec,
	.EndCustomScan = route_end,
	.ReScanCustomScan = route_rescan,
	.ExplainCustomScan = route_explain,
};

/*
 * Any change to pg_proc may be the creation or the drop of stp.in_partition
 * (CREATE or DROP EXTENSION): look its OID up again when next needed.
 */
static void
route_proc_changed(Datum arg, int cacheid, uint32 hashvalue)
{
	in_partition_oid_valid = false;
}

/*
 * Register the scan's methods by name, so that a parallel worker can read
 * a plan that holds the node, and watch pg_proc for the cached OID.
 */
void
stp_route_init(void)
{
	RegisterCustomScanMethods(&route_scan_methods);
	CacheRegisterSyscacheCallback(PROCOID, route_proc_changed, (Datum) 0);
}

/*
 * The OID of the stp extension's stp.in_partition(int, int, VARIADIC
 * "any") in this database, or InvalidOid when the extension is not
 * installed here.  A function of that name that is not the extension's
 * own is not taken over.  Looked up by syscache and catalog scans, without
 * permission checks, and cached until pg_proc changes.
 */
static Oid
get_in_partition_oid(void)
{
	Oid			nsp;
	Oid			ext;
	Oid			argtypes[3] = {INT4OID, INT4OID, ANYOID};
	Oid			funcid = InvalidOid;

	if (in_partition_oid_valid)
		return in_partition_oid;

	ext = get_extension_oid("stp", true);
	nsp = get_namespace_oid("stp", true);
	if (OidIsValid(ext) && OidIsValid(nsp))
	{
		funcid = GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid,
								 CStringGetDatum("in_partition"),
								 PointerGetDatum(buildoidvector(argtypes, 3)),
								 ObjectIdGetDatum(nsp));
		if (OidIsValid(funcid) &&
			getExtensionOfObject(ProcedureRelationId, funcid) != ext)
			funcid = InvalidOid;
	}
	in_partition_oid = funcid;
	in_partition_oid_valid = true;
	return funcid;
}

/*
 * Is this clause a call of stp.in_partition that the node can take over?
 * It must have a constant, non-null partition and a positive constant
 * count, its keys spelled out one per argument or as one ROW(...), and
 * every key of a routable type.  Anything else (a NULL count that must
 * raise its error, a folded ROW of constants, VARIADIC ARRAY[...]) stays
 * a plain function call, which handles it as it always did.
 */
static bool
recognise_route_clause(Expr *clause, RouteClause *rc)
{
	FuncExpr   *f = (FuncExpr *) clause;
	Const	   *p,
			   *n;
	List	   *keys;
	ListCell   *lc;

	if (!IsA(f, FuncExpr) || f->funcresulttype != BOOLOID ||
		f->funcvariadic || list_length(f->args) < 3)
		return false;
	p = (Const *) linitial(f->args);
	n = (Const *) lsecond(f->args);
	if (!IsA(p, Const) || !IsA(n, Const) ||
		p->consttype != INT4OID || n->consttype != INT4OID ||
		p->constisnull || n->constisnull ||
		DatumGetInt32(n->constvalue) < 1)
		return false;
	if (f->funcid != get_in_partition_oid())
		return false;

	keys = list_copy_tail(f->args, 2);
	if (list_length(keys) == 1 && IsA(linitial(keys), RowExpr))
		keys = ((RowExpr *) linitial(keys))->args;
	else if (list_length(keys) == 1 && IsA(linitial(keys), Const) &&
			 type_is_rowtype(exprType(linitial(keys))))
		return false;
	if (keys == NIL || contain_subplans((Node *) keys))
		return false;
	foreach(lc, keys)
	{
		List	   *vars = pull_var_clause(lfirst(lc), PVC_INCLUDE_PLACEHOLDERS);
		ListCell   *lc2;

		if (!stp_type_routable(exprType(lfirst(lc)), exprCollation(lfirst(lc))))
			return false;
		foreach(lc2, vars)
			if (!IsA(lfirst(lc2), Var))
				return false;
	}
	rc->clause = clause;
	rc->partition = DatumGetInt32(p->constvalue);
	rc->nparts = DatumGetInt32(n->constvalue);
	rc->keys = keys;
	return true;
}

/*
 * Find the routing filter among a relation's restriction clauses (a list
 * of RestrictInfo).  Not when a clause is a pseudoconstant: the child's
 * plan would then be topped by a gating Result.
 */
static bool
find_route_clause(List *restrictinfo, RouteClause *rc)
{
	ListCell   *lc;
	bool		found = false;

	foreach(lc, restrictinfo)
	{
		RestrictInfo *ri = lfirst_node(RestrictInfo, lc);

		if (ri->pseudoconstant)
			return false;
		if (!found && recognise_route_clause(ri->clause, rc))
			found = true;
	}
	return found;
}

/*
 * Can the node sit above this path?  Plain scans of the relation, whose
 * plans filter with a qual and return a tuple of their target list.
 */
static bool
route_can_wrap(Path *path)
{
	if (path->param_info != NULL)
		return false;
	switch (path->pathtype)
	{
		case T_SeqScan:
		case T_SampleScan:
		case T_IndexScan:
		case T_IndexOnlyScan:
		case T_BitmapHeapScan:
		case T_TidScan:
		case T_TidRangeScan:
			return true;
		default:
			return false;
	}
}

/*
 * The StpRoute path above a child path.  It returns the child's rows, in
 * the child's order, and costs the child's cost less what the function
 * call per row would have cost over what the node's hashing costs.  The
 * child applied the filter to about rows * nparts tuples (its selectivity
 * is 1 / nparts, partition.c).
 */
static Path *
make_route_path(PlannerInfo *root, RelOptInfo *rel, Path *child,
				RouteClause *rc)
{
	CustomPath *cp = makeNode(CustomPath);
	QualCost	qcost;
	Cost		saving;

	cost_qual_eval_node(&qcost, (Node *) rc->clause, root);
	saving = child->rows * rc->nparts *
		Max(qcost.per_tuple - 0.1 * cpu_operator_cost * list_length(rc->keys), 0);
	saving = Min(saving, (child->total_cost - child->startup_cost) / 2);

	cp->path.pathtype = T_CustomScan;
	cp->path.parent = rel;
	cp->path.pathtarget = child->pathtarget;
	cp->path.param_info = NULL;
	cp->path.parallel_aware = false;
	cp->path.parallel_safe = child->parallel_safe;
	cp->path.parallel_workers = child->parallel_workers;
	cp->path.rows = child->rows;
	cp->path.startup_cost = child->startup_cost;
	cp->path.total_cost = child->total_cost - saving;
	cp->path.pathkeys = child->pathkeys;
	cp->flags = CUSTOMPATH_SUPPORT_PROJECTION;
	cp->custom_paths = list_make1(child);
	cp->methods = &route_path_methods;
	return &cp->path;
}

/*
 * Put StpRoute above each wrappable path of a list, taking the wrapped
 * paths out of it first: add_path frees the paths that a new one beats,
 * and the new ones point at them.  Returns the paths to add.
 */
static List *
route_wrap_paths(PlannerInfo *root, RelOptInfo *rel, List **pathlist,
				 RouteClause *rc)
{
	List	   *kept = NIL;
	List	   *wrapped = NIL;
	ListCell   *lc;

	foreach(lc, *pathlist)
	{
		Path	   *path = (Path *) lfirst(lc);

		if (route_can_wrap(path))
			wrapped = lappend(wrapped, make_route_path(root, rel, path, rc));
		else
			kept = lappend(kept, path);
	}
	*pathlist = kept;
	return wrapped;
}

/*
 * set_rel_pathlist_hook's work (chained in stp.c): replace the routing
 * filter of a base relation's scan paths by StpRoute nodes.  The partial
 * paths too, or a Gather above a parallel scan would still call the
 * function per row.
 */
void
stp_route_paths(PlannerInfo *root, RelOptInfo *rel, Index rti,
				RangeTblEntry *rte)
{
	RouteClause rc;
	List	   *paths;
	ListCell   *lc;

	if (!stp_route_scan || rte->rtekind != RTE_RELATION || rte->inh ||
		(rte->relkind != RELKIND_RELATION && rte->relkind != RELKIND_MATVIEW) ||
		rel->baserestrictinfo == NIL || IS_DUMMY_REL(rel))
		return;
	/* No EvalPlanQual through the node: not on locked or modified rows. */
	if (root->rowMarks != NIL || root->parse->rowMarks != NIL ||
		bms_is_member(rti, root->all_result_relids) ||
		root->parse->resultRelation == rti)
		return;
	if (!find_route_clause(rel->baserestrictinfo, &rc))
		return;

	paths = route_wrap_paths(root, rel, &rel->pathlist, &rc);
	foreach(lc, paths)
		add_path(rel, (Path *) lfirst(lc));
	paths = route_wrap_paths(root, rel, &rel->partial_pathlist, &rc);
	foreach(lc, paths)
		add_partial_path(rel, (Path *) lfirst(lc));
}

/*
 * Add to a plan's target list the Vars of these expressions that it lacks,
 * so that the node reads them from the child's tuple.
 */
static void
add_vars_to_tlist(Plan *plan, List *exprs)
{
	ListCell   *lc;

	foreach(lc, pull_var_clause((Node *) exprs, PVC_INCLUDE_PLACEHOLDERS))
	{
		Node	   *var = lfirst(lc);

		if (tlist_member((Expr *) var, plan->targetlist) == NULL)
			plan->targetlist =
				lappend(plan->targetlist,
						makeTargetEntry((Expr *) copyObject(var),
										list_length(plan->targetlist) + 1,
										NULL, false));
	}
}

/*
 * Can the child scan return its tuples as they are stored?  A heap scan
 * whose target list is not the table's row projects every row it reads
 * into a virtual tuple, half of which the node then drops; with the
 * table's row as its target list it projects nothing, and the node
 * projects only the rows it keeps.  Not for index-only scans (their
 * tuples come from the index) nor when system columns, whole-row Vars or
 * placeholders are read; and build_physical_tlist gives up (NIL) on a
 * table with a dropped column or a column added with a default.
 */
static bool
physical_tlist_ok(Plan *child, List *keys, List *tlist)
{
	ListCell   *lc;

	if (IsA(child, IndexOnlyScan))
		return false;
	foreach(lc, pull_var_clause((Node *) list_make3(keys, tlist, child->targetlist),
								PVC_INCLUDE_PLACEHOLDERS))
	{
		Var		   *var = lfirst(lc);

		if (!IsA(var, Var) || var->varattno <= 0)
			return false;
	}
	return true;
}

/*
 * PlanCustomPath: take the routing filter out of the child plan's qual,
 * and keep its key expressions as custom_exprs.  The node reads the
 * child's tuples (custom_scan_tlist is the child's target list, with the
 * keys' columns added) and projects from them.  The plan depends on
 * stp.in_partition as the function call did, so that dropping the
 * extension invalidates it.
 */
static Plan *
route_plan_path(PlannerInfo *root, RelOptInfo *rel, CustomPath *best_path,
				List *tlist, List *clauses, List *custom_plans)
{
	CustomScan *cscan = makeNode(CustomScan);
	Plan	   *child = linitial(custom_plans);
	RouteClause rc;
	ListCell   *lc;
	List	   *physical;
	bool		removed = false;

	if (!find_route_clause(clauses, &rc))
		elog(ERROR, "StpRoute path without its routing filter");
	foreach(lc, child->qual)
	{
		if (equal(lfirst(lc), rc.clause))
		{
			child->qual = foreach_delete_current(child->qual, lc);
			removed = true;
			break;
		}
	}
	if (!removed)
		elog(ERROR, "StpRoute could not find its routing filter in the child plan");

	physical = physical_tlist_ok(child, rc.keys, tlist) ?
		build_physical_tlist(root, rel) : NIL;
	if (physical != NIL)
		child->targetlist = physical;
	else
	{
		add_vars_to_tlist(child, rc.keys);
		add_vars_to_tlist(child, tlist);
	}

	cscan->scan.plan.targetlist = tlist;
	cscan->scan.plan.qual = NIL;
	cscan->scan.scanrelid = 0;
	cscan->flags = best_path->flags;
	cscan->custom_plans = list_make1(child);
	cscan->custom_exprs = copyObject(rc.keys);
	cscan->custom_private = list_make2(makeInteger(rc.partition),
									   makeInteger(rc.nparts));
	cscan->custom_scan_tlist = copyObject(child->targetlist);
	cscan->methods = &route_scan_methods;
	record_plan_function_dependency(root, ((FuncExpr *) rc.clause)->funcid);
	return &cscan->scan.plan;
}

/*
 * CreateCustomScanState: the node's state, with its partition and count.
 */
static Node *
route_create_state(CustomScan *cscan)
{
	RouteScanState *rs = palloc0(sizeof(RouteScanState));

	NodeSetTag(rs, T_CustomScanState);
	rs->css.methods = &route_exec_methods;
	rs->partition = intVal(linitial(cscan->custom_private));
	rs->nparts = intVal(lsecond(cscan->custom_private));
	return (Node *) rs;
}

/*
 * BeginCustomScan: start the child, and read its tuples as they are.
 * ExecInitCustomScan took the scan tuple to be a virtual slot; the node
 * returns or projects the child's own slot instead of copying each row,
 * so the projection is set up again for the child's kind of slot.  Then
 * decide how each key is read, and make the router.
 */
static void
route_begin(CustomScanState *node, EState *estate, int eflags)
{
	RouteScanState *rs = (RouteScanState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	PlanState  *child;
	Oid		   *types;
	Oid		   *collations;
	ListCell   *lc;

	child = ExecInitNode(linitial(cscan->custom_plans), estate, eflags);
	node->custom_ps = list_make1(child);
	node->ss.ps.scanops = ExecGetResultSlotOps(child, &node->ss.ps.scanopsfixed);
	node->ss.ps.scanopsset = true;
	ExecConditionalAssignProjectionInfo(&node->ss.ps,
										node->ss.ss_ScanTupleSlot->tts_tupleDescriptor,
										INDEX_VAR);

	rs->nkeys = list_length(cscan->custom_exprs);
	rs->attnos = palloc0(sizeof(AttrNumber) * rs->nkeys);
	rs->exprs = palloc0(sizeof(ExprState *) * rs->nkeys);
	rs->values = palloc(sizeof(Datum) * rs->nkeys);
	rs->nulls = palloc(sizeof(bool) * rs->nkeys);
	types = palloc(sizeof(Oid) * rs->nkeys);
	collations = palloc(sizeof(Oid) * rs->nkeys);
	foreach(lc, cscan->custom_exprs)
	{
		Expr	   *key = lfirst(lc);
		int			i = foreach_current_index(lc);

		types[i] = exprType((Node *) key);
		collations[i] = exprCollation((Node *) key);
		if (IsA(key, Var) && ((Var *) key)->varno == INDEX_VAR &&
			((Var *) key)->varattno > 0)
			rs->attnos[i] = ((Var *) key)->varattno;
		else
			rs->exprs[i] = ExecInitExpr(key, &node->ss.ps);
	}
	rs->router = stp_router_create(rs->nkeys, types, collations);
	rs->per_tuple_memory = stp_router_allocates(rs->router);
	for (int i = 0; i < rs->nkeys; i++)
		if (rs->exprs[i] != NULL)
			rs->per_tuple_memory = true;
	/* A projection of more than columns may allocate too. */
	if (node->ss.ps.ps_ProjInfo != NULL)
	{
		foreach(lc, cscan->scan.plan.targetlist)
			if (!IsA(lfirst_node(TargetEntry, lc)->expr, Var))
				rs->per_tuple_memory = true;
	}
}

/*
 * A key column of the child's row.  From a heap tuple that is not yet
 * deformed, heap_getattr reads the one column at its cached offset: a row
 * of another partition, (N - 1) / N of them, is then never deformed,
 * where the function's argument took deforming every column up to the key.
 */
static inline Datum
route_getattr(TupleTableSlot *slot, AttrNumber attno, bool *isnull)
{
	if (attno > slot->tts_nvalid &&
		(TTS_IS_BUFFERTUPLE(slot) || TTS_IS_HEAPTUPLE(slot)) &&
		((HeapTupleTableSlot *) slot)->tuple != NULL)
		return heap_getattr(((HeapTupleTableSlot *) slot)->tuple, attno,
							slot->tts_tupleDescriptor, isnull);
	return slot_getattr(slot, attno, isnull);
}

/*
 * ExecCustomScan: the child's next row of this partition.  Keys that are
 * expressions, or that are hashed by their type's function or detoasted,
 * are computed and hashed in the per-tuple memory, reset for each row;
 * plain columns hashed by their bytes allocate nothing, and skip that.
 */
static TupleTableSlot *
route_exec(CustomScanState *node)
{
	RouteScanState *rs = (RouteScanState *) node;
	PlanState  *child = linitial(node->custom_ps);
	ExprContext *econtext = node->ss.ps.ps_ExprContext;

	for (;;)
	{
		TupleTableSlot *slot;
		MemoryContext old = NULL;
		int32		owner;

		if (rs->per_tuple_memory)
			ResetExprContext(econtext);
		slot = ExecProcNode(child);
		if (TupIsNull(slot))
			return NULL;
		econtext->ecxt_scantuple = slot;

		if (rs->per_tuple_memory)
			old = MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);
		for (int i = 0; i < rs->nkeys; i++)
		{
			if (rs->attnos[i] > 0)
				rs->values[i] = route_getattr(slot, rs->attnos[i], &rs->nulls[i]);
			else
				rs->values[i] = ExecEvalExpr(rs->exprs[i], econtext, &rs->nulls[i]);
		}
		owner = stp_router_route(rs->router, rs->values, rs->nulls, rs->nparts);
		if (rs->per_tuple_memory)
			MemoryContextSwitchTo(old);

		if (owner != rs->partition)
		{
			InstrCountFiltered1(node, 1);
			continue;
		}
		if (node->ss.ps.ps_ProjInfo)
			return ExecProject(node->ss.ps.ps_ProjInfo);
		return slot;
	}
}

/*
 * EndCustomScan: end the child.
 */
static void
route_end(CustomScanState *node)
{
	ExecEndNode(linitial(node->custom_ps));
}

/*
 * ReScanCustomScan: rescan the child, now or, when its parameters changed,
 * at its next ExecProcNode (as Append does for its children).
 */
static void
route_rescan(CustomScanState *node)
{
	PlanState  *child = linitial(node->custom_ps);

	if (node->ss.ps.chgParam != NULL)
		UpdateChangedParamSet(child, node->ss.ps.chgParam);
	if (child->chgParam == NULL)
		ExecReScan(child);
}

/*
 * ExplainCustomScan: the partition, its count and the keys, and with
 * ANALYZE the rows that other partitions own, per loop as EXPLAIN shows
 * a filter's (the parallel workers' counts are added to the leader's).
 */
static void
route_explain(CustomScanState *node, List *ancestors, ExplainState *es)
{
	RouteScanState *rs = (RouteScanState *) node;
	CustomScan *cscan = (CustomScan *) node->ss.ps.plan;
	List	   *context;
	StringInfoData keys;
	ListCell   *lc;

	ExplainPropertyText("Partition",
						psprintf("%d of %d", rs->partition, rs->nparts), es);
	context = set_deparse_context_plan(es->deparse_cxt, &cscan->scan.plan,
									   ancestors);
	initStringInfo(&keys);
	foreach(lc, cscan->custom_exprs)
		appendStringInfo(&keys, "%s%s", foreach_current_index(lc) > 0 ? ", " : "",
						 deparse_expression(lfirst(lc), context, es->verbose,
											false));
	ExplainPropertyText("Route Keys", keys.data, es);
	if (es->analyze && node->ss.ps.instrument &&
		node->ss.ps.instrument->nloops > 0)
		ExplainPropertyFloat("Rows Removed by Routing", NULL,
							 node->ss.ps.instrument->nfiltered1 /
							 node->ss.ps.instrument->nloops, 0, es);
}
