# Makefile for the stp extension (PGXS)

MODULE_big = stp
OBJS = \
	src/stp.o \
	src/shmem.o \
	src/launcher.o \
	src/worker.o \
	src/batch.o \
	src/job.o \
	src/result.o \
	src/catalog.o \
	src/status.o \
	src/query.o \
	src/volatility.o \
	src/shape.o \
	src/hop.o \
	src/sketch.o \
	src/combine.o \
	src/sqlgen.o \
	src/partition.o \
	src/route.o \
	src/guard.o \
	src/restore.o \
	src/wait.o \
	src/leaves.o \
	src/resize.o \
	src/slot.o

EXTENSION = stp
DATA = stp--1.0.sql stp--1.1.sql stp--1.2.sql stp--1.0--1.1.sql stp--1.1--1.2.sql
PGFILEDESC = "stp - parallel streaming aggregation"


REGRESS = setup security volatility collations functions aggregates nulls windows partitions errors faults hardening shapes operability distinct distinct_chunks leaves resize hop sketches slot rows combine route
REGRESS_OPTS = --temp-config=$(srcdir)/test/stp.conf --temp-instance=./tmp_check --load-extension=stp

ISOLATION = out_of_order blocked table_lock
ISOLATION_OPTS = --temp-config=$(srcdir)/test/stp.conf --temp-instance=./tmp_check_iso --load-extension=stp

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Every object is rebuilt when a header changes (PGXS tracks no headers).
$(OBJS): $(wildcard src/*.h)

# A server that only loads trusted output plugins (a setting that this
# machine's PostgreSQL build has and upstream's has not) must trust stp's,
# which the slot jobs' workers decode with.
ifneq ($(shell $(bindir)/postgres --describe-config 2>/dev/null | grep -c '^output_plugin_libraries'),0)
REGRESS_OPTS += --temp-config=$(srcdir)/test/stp-plugins.conf
ISOLATION_OPTS += --temp-config=$(srcdir)/test/stp-plugins.conf
endif

# pg_regress looks for isolation specs under specs/ by default
ISOLATION_OPTS += --inputdir=$(srcdir)/test
