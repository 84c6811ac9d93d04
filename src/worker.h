/*-------------------------------------------------------------------------
 *
 * worker.h
 *		The state of a partition worker, shared by worker.c (the process:
 *		its slot, settings, errors and loop) and batch.c (one batch).
 *
 *-------------------------------------------------------------------------
 */
#ifndef STP_WORKER_H
#define STP_WORKER_H

#include "executor/spi.h"

#include "stp.h"

/* What the launcher passes in bgw_extra. */
typedef struct StpWorkerArgs
{
	Oid			dboid;
	Oid			owner;
	int32		job_id;
	int32		partition;
} StpWorkerArgs;

/* The worker's state between batches. */
typedef struct StpWorker
{
	StpWorkerArgs args;
	StpJobDef  *def;
	StpSlot    *slot;
	SPIPlanPtr	lock_plan;
	SPIPlanPtr	batch_plan;
	SPIPlanPtr	slot_merge_plan;	/* a slot job's batch of new rows only */
	SPIPlanPtr	slot_retract_plan;	/* a retracting job's batch with old rows */
	SPIPlanPtr	slot_delete_plan;	/* ... and the groups it emptied */
	List	   *distinct_plans; /* of SPIPlanPtr, one per count(DISTINCT) */
	SPIPlanPtr	progress_plan;
	char	   *source_name;	/* the names the batch plan was made with */
	char	   *result_name;
	bool		recheck;		/* source or result table may have changed */
	int64		offset;			/* committed progress */
	int64		safe_upto;		/* every id <= this has settled */
	int64		rows_processed;
	int64		batch_ids;		/* ids of the next batch: grows while behind */
	double		batch_density;	/* groups per row of the last batch, or 0 */
	bool		batch_grew;		/* the next batch is larger than the last */
	bool		batch_held;		/* growing saved no merge: grow no more */
	bool		failed;			/* the log said that the partition failed */
	bool		healthy;		/* ran a step without an error */
	TimestampTz next_step_at;	/* a slot job's next step, unless woken */
} StpWorker;

extern StpWorker stp_worker;

/* worker.c */
extern int	stp_pin_worker_settings(void);
extern void stp_set_slot_state(StpWorkerState state);

/* batch.c */
extern bool stp_worker_setup(void);
extern bool stp_worker_step(bool *stop);
extern bool stp_guard_tables(bool nowait, Oid *busy);
extern void stp_wait_for_table(Oid relid);
extern void stp_check_job_relations(void);

/* slot.c */
extern bool stp_slot_step(bool *stop);
extern void stp_slot_abort(void);

#endif							/* STP_WORKER_H */
