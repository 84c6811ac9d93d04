/*-------------------------------------------------------------------------
 *
 * stp.h
 *		Declarations shared by the stp extension's modules: GUCs, the
 *		shared-memory registry of partition workers, the job catalog and
 *		the SQL generator.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STP_H
#define STP_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

/* How stored expressions write and read dates and intervals. */
#define STP_DATESTYLE			"ISO, YMD"
#define STP_INTERVALSTYLE		"postgres"

/* A wait for a writer longer than this shows as "blocked". */
#define STP_BLOCKED_AFTER_MS	1000

/* Free space on every result page lets each merge be a HOT update. */
#define STP_RESULT_FILLFACTOR	50

/* Upper bound on partitions per job. */
#define STP_MAX_PARTITIONS		64

/*
 * strategy 'auto' takes row mode when the newest rows of the source, at
 * most STP_AUTO_SAMPLE_ROWS of them, hold at least STP_AUTO_ROWS_PER_GROUP
 * rows per group per partition.  Merging a group costs about as much as
 * aggregating 80 rows, and in row mode the partitions' merges into the
 * same rows take turns: measured on 4M rows and 2 partitions, 1,000 groups
 * per 500,000-id range ran 1.8 times as fast as 1 partition, 10,000 groups
 * no faster.
 */
#define STP_AUTO_SAMPLE_ROWS	100000
#define STP_AUTO_ROWS_PER_GROUP	100

/*
 * Adaptive batches (groups mode): while a partition is behind, its batch
 * doubles after every batch that took less than STP_GROW_BELOW_MS, up to
 * STP_GROW_MAX_FACTOR times the job's batch_size; it halves after one that
 * took more than twice that, and goes back to batch_size once the
 * partition has caught up.  The bound is generous because a job with many
 * groups (W3: 800,000 keys in 4M rows) spends seconds per batch merging,
 * and merges each group once per batch.  (Side by side on a loaded shared
 * machine, 4M-id batches drained that job in 9 to 40 s and 1M-id batches
 * in 21 to 48 s: too noisy to size the gain.)
 *
 * A larger batch pays only if its groups repeat: a batch that grew and
 * still merged more than STP_GROW_MIN_GAIN times as many groups per row as
 * the batch before it saves no merge, while its aggregation spills more
 * past work_mem.  Its partition goes back to the smaller batch and grows
 * no more until it has caught up.  (W2, 600,000 key x minute groups in
 * time order: every 1M ids hold 60,000 new groups, and HashAgg spilled 7 MB
 * for a batch of 1M ids but 63 MB for 2M.)
 */
#define STP_GROW_BELOW_MS		5000
#define STP_GROW_MIN_GAIN		0.9
#define STP_GROW_MAX_FACTOR		8

/* Sizes of the shared registry. */
#define STP_MAX_DATABASES		64
#define STP_MAX_SLOTS			1024

/* What a live partition worker is doing, as shown by stp.job_status. */
typedef enum StpWorkerState
{
	STP_WS_STARTING = 0,
	STP_WS_RUNNING,				/* processing a backlog */
	STP_WS_IDLE,				/* caught up, polling */
	STP_WS_RETRYING,			/* backing off after an error */
	STP_WS_BLOCKED,				/* waiting long for a transaction to end */
	STP_WS_RESTORED				/* job from a restore that is not complete */
} StpWorkerState;

/* What a restored job waits for before it runs (restore.c). */
typedef enum StpRestoreWait
{
	STP_RW_NONE = 0,
	STP_RW_KEY_INDEX,			/* the result table's unique key index */
	STP_RW_SEQUENCE,			/* the sequence's state */
	STP_RW_RESULT_ROWS,			/* the result table's rows */
	STP_RW_SOURCE_ROWS			/* the source table's rows */
} StpRestoreWait;

/* Rows per second are counted in STP_RATE_BUCKETS buckets of this many s. */
#define STP_RATE_BUCKET_SECS	5
#define STP_RATE_BUCKETS		12

/*
 * One entry per (database, job, partition) that was ever started since the
 * server started.  The entry outlives its worker, so that restart backoff
 * survives the worker's exit.  pid is 0 when no worker runs, -1 while one
 * is being started, and the worker's pid otherwise.
 */
typedef struct StpSlot
{
	bool		in_use;
	Oid			dboid;
	int32		job_id;
	int32		partition;
	pid_t		pid;
	Latch	   *latch;
	StpWorkerState state;
	Oid			owner;			/* the role the worker connects as */
	bool		no_worker_slot; /* last start found no free bgworker slot */
	int			restarts;		/* starts since the last successful batch */
	TimestampTz last_start;
	pid_t		blocker_pid;	/* while waiting: whom the worker waits for */
	Oid			blocker_relid;	/* ... the relation it holds a lock on */
	TimestampTz blocked_since;	/* ... and since when */
	TimestampTz caught_up_at;	/* when the worker last had nothing to do */
	int64		rate_rows[STP_RATE_BUCKETS];	/* rows committed per bucket */
	int64		rate_bucket[STP_RATE_BUCKETS];	/* which bucket each holds */
	StpRestoreWait restore_wait;	/* while restored: what is missing */
	int64		restore_have;	/* ... the sequence's high water */
	int64		restore_need;	/* ... and the progress it must reach */
	bool		start_logged;	/* a worker's start was logged, and no worker
								 * has run without an error since */
	bool		reload_requested;	/* stp_alter_job changed the job */
} StpSlot;

typedef struct StpDatabase
{
	Oid			dboid;
	bool		has_stp;		/* extension seen by the last scan */
	bool		scan_requested;
	TimestampTz skip_until;		/* DROP DATABASE in progress */
} StpDatabase;

typedef struct StpShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	StpDatabase dbs[STP_MAX_DATABASES];
	StpSlot		slots[STP_MAX_SLOTS];
} StpShared;

extern StpShared *stp_shared;

/* GUCs (stp.c) */
extern int	stp_launcher_naptime;
extern int	stp_max_retries;
extern int	stp_distinct_layout;

/*
 * The layout of a new job's distinct tables (stp.distinct_layout): one
 * row per (group, value), or one row per group and batch holding the
 * batch's new values as an array (result.c).
 */
typedef enum StpDistinctLayout
{
	STP_DISTINCT_LAYOUT_AUTO,
	STP_DISTINCT_LAYOUT_CHUNKS,
	STP_DISTINCT_LAYOUT_PAIRS
} StpDistinctLayout;

/* shmem.c */
extern void stp_shmem_request(void);
extern void stp_shmem_startup(void);
extern StpSlot *stp_slot_find(Oid dboid, int32 job_id, int32 partition);
extern StpSlot *stp_slot_get(Oid dboid, int32 job_id, int32 partition);
extern void stp_request_scan(Oid dboid);
extern int	stp_signal_job_workers(Oid dboid, int32 job_id, int signo);
extern void stp_wait_job_workers_exit(Oid dboid, int32 job_id, int timeout_ms);
extern void stp_wake_job_workers(Oid dboid, int32 job_id);
extern void stp_forget_job(Oid dboid, int32 job_id);
extern void stp_database_dropping(Oid dboid);
extern void stp_start_job_at_commit(int32 job_id, Oid owner, int32 partitions);
extern void stp_request_scan_at_commit(void);
extern void stp_stop_db_workers_at_commit(void);
extern void stp_stop_job_workers_at_commit(int32 job_id);
extern void stp_reload_job_workers_at_commit(int32 job_id);
extern void stp_xact_callback_init(void);

/* launcher.c */
extern void stp_register_launcher(void);
extern PGDLLEXPORT void stp_launcher_main(Datum main_arg);
extern PGDLLEXPORT void stp_starter_main(Datum main_arg);
extern bool stp_start_partition(Oid dboid, Oid owner, int32 job_id,
								int32 partition);

/* worker.c */
extern PGDLLEXPORT void stp_worker_main(Datum main_arg);
extern bool stp_register_worker(Oid dboid, Oid owner, int32 job_id,
								int32 partition);

/*
 * A job's definition as stored in stp.jobs, in the form the SQL generator
 * needs.  The expressions are deparsed with a search_path of pg_catalog only,
 * so they are fully qualified and independent of any session's search_path.
 */
typedef enum StpAggKind
{
	STP_AGG_COUNT,				/* count(*) or count(x) */
	STP_AGG_SUM,
	STP_AGG_MIN,
	STP_AGG_MAX,
	STP_AGG_AVG_NUMERIC,		/* avg over integers and numeric */
	STP_AGG_AVG_FLOAT,			/* avg over float4 and float8 */
	STP_AGG_BOOL_AND,			/* bool_and and every */
	STP_AGG_BOOL_OR,
	STP_AGG_BIT_AND,
	STP_AGG_BIT_OR,
	/* over float4 and float8, with a float8[] state {N, Sx, Sxx} */
	STP_AGG_VAR_SAMP,			/* var_samp and variance */
	STP_AGG_VAR_POP,
	STP_AGG_STDDEV_SAMP,		/* stddev_samp and stddev */
	STP_AGG_STDDEV_POP,
	/* count(DISTINCT x), counted through a distinct table (sqlgen.c) */
	STP_AGG_COUNT_DISTINCT,
	/* sum(DISTINCT x) and avg(DISTINCT x), through a distinct table too */
	STP_AGG_SUM_DISTINCT,
	STP_AGG_AVG_NUMERIC_DISTINCT,
	STP_AGG_AVG_FLOAT_DISTINCT,
	/* sketches of optional extensions, kept as their own types (sketch.c) */
	STP_AGG_HLL,				/* hll_add_agg, hll_union_agg: hll */
	STP_AGG_TDIGEST,			/* tdigest(x, compression): tdigest */
	/* any aggregate with a combine function and a storable state (combine.c) */
	STP_AGG_COMBINE,			/* without final function: value is state */
	STP_AGG_COMBINE_FINAL		/* with one: a hidden state column too */
} StpAggKind;

#define STP_AGG_IS_AVG(kind) \
	((kind) == STP_AGG_AVG_NUMERIC || (kind) == STP_AGG_AVG_FLOAT || \
	 (kind) == STP_AGG_AVG_NUMERIC_DISTINCT || (kind) == STP_AGG_AVG_FLOAT_DISTINCT)
#define STP_AGG_IS_DISTINCT(kind) \
	((kind) >= STP_AGG_COUNT_DISTINCT && (kind) <= STP_AGG_AVG_FLOAT_DISTINCT)
#define STP_AGG_IS_SKETCH(kind) ((kind) == STP_AGG_HLL || (kind) == STP_AGG_TDIGEST)
#define STP_AGG_IS_VARIANCE(kind) \
	((kind) >= STP_AGG_VAR_SAMP && (kind) <= STP_AGG_STDDEV_POP)
#define STP_AGG_IS_COMBINE(kind) \
	((kind) == STP_AGG_COMBINE || (kind) == STP_AGG_COMBINE_FINAL)
/* Kinds with a hidden state column _stp_<name>_state next to their value. */
#define STP_AGG_KEEPS_STATE(kind) \
	(STP_AGG_IS_VARIANCE(kind) || (kind) == STP_AGG_COMBINE_FINAL)

typedef struct StpJobDef
{
	int32		job_id;
	char	   *job_name;
	Oid			owner;
	Oid			source;
	char	   *order_column;
	Oid			sequence;
	Oid			result;
	int32		partitions;
	int64		batch_size;
	int64		poll_interval_ms;
	char	   *timezone;
	List	   *settings;		/* of "name=value", the creator's settings */
	List	   *key_names;		/* of char * */
	List	   *key_exprs;		/* of char * */
	List	   *agg_names;		/* of char * */
	List	   *agg_kinds;		/* of int (StpAggKind) */
	List	   *agg_args;		/* of char *, NULL for count(*) */
	List	   *agg_filters;	/* of char *, the FILTER condition or NULL */
	char	   *where_clause;	/* NULL if none */
	bool		restored;		/* created elsewhere: restored from a dump */
	List	   *leaves;			/* of Oid: a hash-partitioned source's
								 * partitions, read directly (leaves.c); NIL
								 * when the source is read and routed */
	int32		resize_to;		/* pending partition count, or 0 (stp_alter_job) */
	bool		slot_source;	/* decodes a logical replication slot (slot.c) */
	bool		slot_retract;	/* a slot job whose merges retract old rows:
								 * its aggregates are count, and sum and avg
								 * of integers, and its result has the state
								 * columns for it */
	bool		rows_mode;		/* strategy 'rows': workers own id ranges */
	List	   *agg_functions;	/* of Oid: a combinable aggregate (combine.c),
								 * InvalidOid for the other kinds */
} StpJobDef;

/* sqlgen.c */
extern char *stp_batch_sql(StpJobDef *def, int32 partition);
extern char *stp_probe_sql(StpJobDef *def);
extern char *stp_sample_sql(StpJobDef *def);
extern char *stp_agg_kind_name(StpAggKind kind);
extern StpAggKind stp_agg_kind_from_name(const char *name);
extern char *stp_avg_sum_column(const char *name);
extern char *stp_avg_count_column(const char *name);
extern char *stp_variance_state_column(const char *name);
extern char *stp_initial_row_sql(StpJobDef *def);
extern char *stp_distinct_table_name(const char *state_name, int agg);
extern Oid	stp_distinct_table(StpJobDef *def, int agg);
extern char *stp_distinct_sql(StpJobDef *def, int32 partition, int agg);
extern char *stp_slot_batch_sql(StpJobDef *def, int32 partition);
extern char *stp_slot_merge_sql(StpJobDef *def, int32 partition, bool old_rows);
extern char *stp_slot_clear_sql(StpJobDef *def, int32 partition);
extern char *stp_slot_fill_sql(StpJobDef *def, int32 partition);
extern char *stp_slot_delete_sql(StpJobDef *def);
extern bool stp_slot_retract_kinds(StpJobDef *def, List *agg_types);
extern bool stp_slot_can_retract(StpJobDef *def);

/* The state column of a retracting slot job's row count per group. */
#define STP_ROWS_COLUMN "_stp_rows"

/* A column of the result table, as the job's query produces it. */
typedef struct StpColumn
{
	char	   *name;
	Oid			type;
	int32		typmod;
	Oid			collation;
} StpColumn;

/*
 * A query whose output is not its state: it computes with aggregates, has
 * HAVING or ORDER BY, groups on keys it does not select, orders its
 * columns otherwise, or has no GROUP BY.  The job then merges into a state
 * table, and a view presents the query's output from it.  The trees are
 * the analysed query's, valid while the creating transaction runs.
 */
typedef struct StpShape
{
	List	   *outputs;		/* of TargetEntry, the query's output columns */
	Node	   *having;			/* NULL if none */
	List	   *sort;			/* of SortGroupClause, the ORDER BY */
	List	   *sort_exprs;		/* of Node *, the expression each sorts on */
	List	   *key_exprs;		/* of Node *, the grouping expressions */
	List	   *key_columns;	/* of char *, their state columns */
	List	   *aggrefs;		/* of Aggref *, each distinct aggregate */
	List	   *agg_columns;	/* of char *, their state columns */
	bool		global;			/* no GROUP BY: one group, always present */
	Oid			source;			/* the source table */
	List	   *agg_kinds;		/* of int (StpAggKind), for each aggref */
	/* a hopping window, FROM source, stp.hop(ts, size, slide, origin) */
	int			hop_key;		/* its key's index in key_columns, or -1 */
	Node	   *hop_size;		/* the window's size, slide and origin, */
	Node	   *hop_slide;		/* as constants */
	Node	   *hop_origin;
} StpShape;

/* A job as the management functions see it (job.c). */
typedef struct StpJobRef
{
	int32		job_id;
	Oid			owner;
	Oid			sequence;
	Oid			result;
	char	   *state;
	Oid			source;
	Oid			result_view;	/* InvalidOid if the result is a table */
} StpJobRef;

/* job.c */
extern StpJobRef *stp_lookup_job(const char *job_name, bool for_update);
extern void stp_check_not_null(FunctionCallInfo fcinfo, int argno, const char *name);
extern int64 stp_interval_ms(Interval *iv, const char *name);

/* query.c */
extern void stp_analyze_query(const char *query_text, StpJobDef *def,
							  List **columns, int *nkeys, StpShape **shape);

/* volatility.c */
extern void stp_check_time_dependence(Node *query);

/* shape.c */
extern char *stp_shape_view_sql(StpShape *shape, Oid state_relid);

/* sketch.c */
extern StpAggKind stp_sketch_kind(Oid aggfnoid, const char *fname);
extern char *stp_sketch_merge(StpAggKind kind, const char *a, const char *b);
extern char *stp_sketch_combine_agg(StpAggKind kind, const char *col);

/* combine.c */
struct Aggref;
extern StpAggKind stp_combine_kind(struct Aggref *aggref, const char *fname,
								   const char *colname);
extern Oid	stp_combine_transtype(Oid aggfnoid);
extern char *stp_combine_args(struct Aggref *aggref, List *dpcontext);
extern char *stp_combine_state_call(StpJobDef *def, int agg, const char *arg,
									const char *filter);
extern char *stp_combine_final(StpJobDef *def, int agg, const char *states);
extern char *stp_combine_merge(StpJobDef *def, int agg, const char *states);
extern char *stp_combine_final_and_merge(StpJobDef *def, int agg, const char *states);
extern void stp_create_combine_aggregates(StpJobDef *def);
extern void stp_drop_combine_aggregates(StpJobDef *def);

/* hop.c */
extern void stp_hop_check(Interval *size, Interval *slide, int64 *size_usecs,
						  int64 *slide_usecs);

/* Saved identity while running with the extension owner's rights. */
typedef struct StpRights
{
	Oid			userid;
	int			sec_context;
	int			nestlevel;		/* GUC nest level of the pinned settings */
} StpRights;

/* catalog.c (plan is an SPIPlanPtr; not every module includes spi.h) */
struct _SPI_plan;
extern StpJobDef *stp_load_job(int32 job_id, char **state, MemoryContext mcxt);
extern void stp_catalog_rights_begin(StpRights *save);
extern void stp_catalog_rights_end(StpRights *save);
extern int	stp_catalog_exec(const char *sql, int nargs, Oid *types, Datum *values,
							 const char *nulls, bool read_only, long count);
extern int	stp_catalog_exec_plan(struct _SPI_plan *plan, Datum *values);
extern int64 stp_sequence_last_value(Oid seqoid, bool *is_called);
extern int64 stp_sequence_high_water(Oid seqoid);
extern void stp_pin_settings(void);
extern List *stp_capture_job_settings(void);
extern bool stp_catalog_has_column(const char *table, const char *column);
extern void stp_apply_job_settings(StpJobDef *def, bool save);
extern char *stp_check_job_tables(StpJobDef *def, int64 progress);
extern char *stp_qualified_relname(Oid relid);

/* restore.c */
extern char *stp_job_origin(Oid source);
extern bool stp_restore_complete(StpJobDef *def, int64 progress, StpSlot *slot);

/* status.c */
extern void stp_count_rows(StpSlot *slot, int64 rows);

/* result.c */
extern void stp_verify_result_table(Oid relid, List *columns, int nkeys);
extern Oid	stp_create_result_table(Oid nspid, const char *relname, List *columns,
									int nkeys, int fillfactor);
extern Oid	stp_create_state_table(Oid nspid, const char *result_name,
								   List *columns, int nkeys);
extern void stp_create_distinct_tables(Oid nspid, Oid state_relid, StpShape *shape,
									   List *columns, int nkeys);
extern Oid	stp_create_result_view(Oid nspid, const char *relname, StpShape *shape,
								   Oid state_relid);

/* guard.c */
extern void stp_note_relation(Oid relid, bool truncated);
extern void stp_forget_noted_relations(void);
extern void stp_note_sequences_before(Oid relid);
extern void stp_check_noted_relations(void);
extern void stp_check_drop_role(List *roles);
struct RoleSpec;
extern void stp_reassign_or_drop_owned(List *roles, struct RoleSpec *newrole);

/* resize.c */
extern bool stp_finish_resize(int32 job_id);

/* leaves.c */
extern List *stp_hash_leaves(Oid source, List *key_exprs, char **why);
extern List *stp_partition_leaves(StpJobDef *def, int32 partition);
extern char *stp_leaves_from_item(StpJobDef *def, int32 partition);
extern char *stp_source_names(StpJobDef *def, int32 partition);
extern List *stp_leaves_to_wait(StpJobDef *def, int32 partition);
extern char *stp_check_leaves(StpJobDef *def, const char *srcname);
extern void stp_check_leaves_partitions(StpJobDef *def, int32 partitions);
extern bool stp_leaf_order_default_ok(StpJobDef *def, Oid leaf);
extern void stp_note_leaf_change(Oid parent, const char *what);
/* slot.c */
extern void stp_slot_name(char *name, Oid dboid, int32 job_id, int32 partition);
extern void stp_check_slot_source(Oid source, StpShape *shape, StpJobDef *def,
								  const char *order_column, const char *start_from);
extern bool stp_drop_orphan_slots(void);
extern void stp_drop_job_slots(int32 job_id, int32 partitions);
extern uint64 stp_slot_confirmed(int32 job_id, int32 partition);
extern XLogRecPtr stp_wal_insert_end(void);

/* partition.c */
extern bool stp_type_routable(Oid typid, Oid collid);
typedef struct StpRouter StpRouter;
extern StpRouter *stp_router_create(int nkeys, const Oid *types, const Oid *collations);
extern int32 stp_router_route(StpRouter *r, const Datum *values, const bool *nulls,
							  int32 nparts);
extern bool stp_router_allocates(StpRouter *r);

/* route.c */
struct PlannerInfo;
struct RelOptInfo;
struct RangeTblEntry;
extern bool stp_route_scan;
extern void stp_route_init(void);
extern void stp_route_paths(struct PlannerInfo *root, struct RelOptInfo *rel,
							Index rti, struct RangeTblEntry *rte);

#endif							/* STP_H */
