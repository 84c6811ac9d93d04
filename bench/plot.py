"""PNG plots of the benchmark's results, with Debian's matplotlib.

throughput.png: drain rows/s against stp partitions, one panel per
workload, with V1 and limit as horizontal lines and N x stp1 as the ideal.
freshness.png: p50 / p99 commit-to-visible latency per insert rate.

Usable alone: /usr/bin/python3 bench/plot.py bench/results/latest.json
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def rows_fmt(x, _pos):
    """Axis label of a rows/s figure: 1.2M, 850k."""
    if x >= 1e6:
        return "%.3gM" % (x / 1e6)
    if x >= 1e3:
        return "%.0fk" % (x / 1e3)
    return "%.0f" % x


def throughput_plot(res, out):
    d = res.get("drain")
    if not d:
        return None
    names = list(d)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.2),
                             squeeze=False)
    for ax, wname in zip(axes[0], names):
        recs = d[wname]
        parts = [p for p in res["partitions"]
                 if (recs.get("stp%d" % p) or {}).get("rows_per_s")]
        xmax = max(parts + [2])
        if parts:
            med = [recs["stp%d" % p]["rows_per_s"]["median"] for p in parts]
            lo = [m - recs["stp%d" % p]["rows_per_s"]["min"]
                  for m, p in zip(med, parts)]
            hi = [recs["stp%d" % p]["rows_per_s"]["max"] - m
                  for m, p in zip(med, parts)]
            ax.errorbar(parts, med, yerr=[lo, hi], marker="o", capsize=4,
                        label="stp (median, min-max)")
            if 1 in parts:
                ax.plot([1, xmax], [med[0], med[0] * xmax], ":", color="grey",
                        label="ideal: N x stp1")
        for c, style in (("V1", "--"), ("limit", "-.")):
            s = (recs.get(c) or {}).get("rows_per_s")
            if s:
                ax.axhline(s["median"], linestyle=style,
                           color="C1" if c == "V1" else "C2",
                           label="%s (1 process)" % c)
                ax.axhspan(s["min"], s["max"], alpha=0.12,
                           color="C1" if c == "V1" else "C2")
        ax.set_title(res["workloads"][wname]["title"], fontsize=9)
        ax.set_xlabel("stp partitions")
        ax.set_ylabel("rows/s")
        ax.set_xticks(list(range(1, xmax + 1)))
        ax.set_xlim(0.7, xmax + 0.3)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(rows_fmt))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    title = "Drain throughput, %s rows, batch %s" % (
        format(res["rows"], ","), format(res["batch_size"], ","))
    if not res["stp_ok"]:
        title += " (stp not run)"
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out, "throughput.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "throughput.png"


def freshness_plot(res, out):
    fr = res.get("freshness")
    if not fr:
        return None
    rates = list(fr)
    contenders = sorted({c for r in rates for c in fr[r]})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / max(1, 2 * len(contenders))
    i = 0
    allv = []
    for c in contenders:
        for pct, hatch in (("p50_ms", ""), ("p99_ms", "//")):
            xs, ys = [], []
            for k, rate in enumerate(rates):
                v = (fr[rate].get(c) or {}).get(pct)
                if v is not None:
                    xs.append(k + (i - (2 * len(contenders) - 1) / 2) * width)
                    ys.append(v)
            allv += ys
            bars = ax.bar(xs, ys, width, hatch=hatch,
                          color="C%d" % contenders.index(c),
                          label="%s %s" % (c, pct.split("_")[0]))
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            i += 1
    ax.set_xticks(range(len(rates)))
    ax.set_xticklabels(["%s rows/s" % format(int(r), ",") for r in rates])
    if allv and min(allv) > 0 and max(allv) / min(allv) > 20:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: "%g" % y))
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda y, _p: "%g" % y if str(y)[0] in "125" else ""))
    ax.set_ylabel("commit-to-visible latency, ms")
    ax.set_title("Freshness (%d s per rate)" % res["fresh_secs"])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "freshness.png"), dpi=100)
    plt.close(fig)
    return "freshness.png"


def make_plots(res, out):
    """Write every plot the results allow; return their file names."""
    return [p for p in (throughput_plot(res, out), freshness_plot(res, out))
            if p]


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json"
    with open(src) as f:
        print(make_plots(json.load(f), os.path.dirname(os.path.abspath(src))))
