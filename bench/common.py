"""Shared helpers of the stp benchmark driver.

Connections, pgbench runs, summary statistics and the memory sampler.
The cluster itself is started by bench/run; this module only talks to
it through the PG* environment variables that bench/run exports.
"""

import os
import re
import statistics
import subprocess
import sys
import threading
import time

import psycopg2


def log(msg):
    """Print a progress line to stderr, in the same form as bench/run."""
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def connect(autocommit=True, **settings):
    """Open a connection to the bench database with session settings."""
    conn = psycopg2.connect("")
    conn.autocommit = autocommit
    if settings:
        with conn.cursor() as cur:
            for name, value in settings.items():
                cur.execute("SELECT set_config(%s, %s, false)",
                            (name, str(value)))
    return conn


def q(conn, sql, args=None):
    """Run one statement; return all rows, or None if it returns none."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        if cur.description is None:
            return None
        return cur.fetchall()


def q1(conn, sql, args=None):
    """Run one statement and return the first column of its first row."""
    rows = q(conn, sql, args)
    return rows[0][0] if rows else None


def summary(values):
    """min / median / max of a list of numbers, or None for no numbers."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals),
            "max": max(vals), "n": len(vals), "values": vals}


def percentile(sorted_vals, p):
    """Nearest-rank percentile (p in 0..100) of an already sorted list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1,
                   int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


class Env:
    """What the driver knows about its surroundings (from bench/run)."""

    def __init__(self, args):
        self.pgbin = args.pgbin
        self.scratch = args.scratch
        self.os_user = args.os_user or None
        self.tmpdir = os.path.join(args.scratch, "tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        if self.os_user:
            subprocess.run(["chown", self.os_user, self.tmpdir], check=True)

    def as_pg(self, cmd):
        """Prefix a command so that it runs as the cluster's OS user."""
        if self.os_user:
            return ["runuser", "-u", self.os_user, "--"] + cmd
        return cmd

    def write_script(self, name, text):
        """Write a pgbench script where the cluster's OS user can read it."""
        path = os.path.join(self.tmpdir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        return path

    def pgbench_start(self, script, clients, threads, secs, rate=None,
                      options="-c synchronous_commit=off"):
        """Start pgbench on a custom script; return the Popen object."""
        cmd = [os.path.join(self.pgbin, "pgbench"), "-n", "-f", script,
               "-c", str(clients), "-j", str(threads), "-T", str(secs)]
        if rate:
            cmd += ["-R", str(rate)]
        env = dict(os.environ)
        env["PGOPTIONS"] = options
        return subprocess.Popen(self.as_pg(cmd), env=env,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def pgbench_finish(proc):
    """Wait for pgbench; return dict with tps, failed count and raw output."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("pgbench failed (%d): %s" % (proc.returncode,
                                                        err.strip()[-500:]))
    res = {"output": out}
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)",
                  out)
    res["tps"] = float(m.group(1)) if m else None
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    res["xacts"] = int(m.group(1)) if m else None
    m = re.search(r"number of failed transactions: (\d+)", out)
    res["failed"] = int(m.group(1)) if m else 0
    m = re.search(r"rate limit schedule lag: avg ([0-9.]+)", out)
    res["schedule_lag_ms"] = float(m.group(1)) if m else None
    return res


def read_proc(pid, name):
    """The text of /proc/<pid>/<name>, or None if the process is gone."""
    try:
        with open("/proc/%d/%s" % (pid, name)) as f:
            return f.read()
    except OSError:
        return None


def read_proc_mem(pid):
    """VmHWM, VmRSS and RssAnon (kB) of a process, or None if it is gone."""
    text = read_proc(pid, "status")
    if text is None:
        return None
    out = {}
    for key in ("VmHWM", "VmRSS", "RssAnon"):
        m = re.search(r"^%s:\s+(\d+) kB" % key, text, re.M)
        out[key] = int(m.group(1)) if m else None
    return out


def read_proc_cpu(pid):
    """User plus system CPU time of a process in clock ticks, or None."""
    text = read_proc(pid, "stat")
    if text is None:
        return None
    # The command name, in parentheses, may hold spaces: count after it.
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


class MemSampler(threading.Thread):
    """Sample the memory of a changing set of processes in the background.

    pid_source() returns a dict label -> pid (for stp: partition -> worker
    pid); it is called on every tick, so restarted workers are seen too.
    The kernel keeps VmHWM (peak RSS) itself; RssAnon, the private memory
    a process allocated, has no kernel peak and is sampled.  The CPU time
    of each process is sampled too: a process seen in the first sample
    (take it before the measured work starts) counts from then, one seen
    later from its start.
    """

    def __init__(self, pid_source, interval=0.05):
        super().__init__(daemon=True)
        self.pid_source = pid_source
        self.interval = interval
        self.peaks = {}          # label -> {"VmHWM": kB, "RssAnon": kB}
        self.cpu = {}            # (label, pid) -> [ticks at first, last]
        self._first = True
        self._halt = threading.Event()
        self.error = None

    def sample(self):
        """Take one sample of every process; keep per-label peaks."""
        for label, pid in self.pid_source().items():
            if not pid:
                continue
            mem = read_proc_mem(pid)
            if mem is None:
                continue
            peak = self.peaks.setdefault(label, {"VmHWM": 0, "RssAnon": 0})
            for key in ("VmHWM", "RssAnon"):
                if mem.get(key) is not None:
                    peak[key] = max(peak[key], mem[key])
            ticks = read_proc_cpu(pid)
            if ticks is not None:
                seen = self.cpu.setdefault(
                    (label, pid), [ticks if self._first else 0, ticks])
                seen[1] = ticks
        self._first = False

    def cpu_secs(self):
        """CPU seconds of every sampled process since it was first seen
        (or started), summed."""
        return sum(last - first for first, last in self.cpu.values()) / \
            float(os.sysconf("SC_CLK_TCK"))

    def run(self):
        try:
            while not self._halt.is_set():
                self.sample()
                self._halt.wait(self.interval)
        except Exception as e:          # keep the benchmark going
            self.error = e

    def stop(self):
        """Take a last sample, then stop the thread."""
        self._halt.set()
        self.join()
        try:
            self.sample()
        except Exception as e:
            self.error = e
        return self.peaks
