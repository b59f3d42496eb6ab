"""The Spark shuffle benchmark: Spark's built-in shuffle against Sluice, in one invocation.

Starts a local Sluice cluster (`sluice local`), then runs each job of benches/spark/jobs.py
once per round on each shuffle, alternating which goes first from round to round so that
neither always runs on a warmer machine. Every run is a fresh spark-submit in `local[2]`.
Prints, per job, the medians over the rounds of the total and of every step and stage, with the
ratio Sluice / built-in (below 1.0: Sluice is faster), and checks every run's answer is the
same. The last stdout line is a JSON summary. Exits non-zero on any differing answer or failed
run.

    python3 benches/spark/bench.py --sluice target/release/sluice \
        --jar client-jvm/spark-3.5/target/sluice-spark-3.5_2.12-0.1.0.jar

Normally started by benches/spark/run.sh (`make bench-spark`), which builds and installs what
this needs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(f"[bench-spark] {message}", file=sys.stderr, flush=True)


def start_cluster(args, work):
    data = tempfile.mkdtemp(prefix="sluice-bench-spark.")
    logfile = open(os.path.join(work, "sluice.log"), "w")
    proc = subprocess.Popen(
        [args.sluice, "local", "--workers", str(args.workers), "--data-dir", data],
        stdout=subprocess.PIPE,
        stderr=logfile,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit(f"sluice local exited before it was ready; see {logfile.name}")
    ready = json.loads(line)
    return proc, ready["master"], data


def spark_submit(args, job, shuffle, master, out, logpath):
    cmd = [
        args.spark_submit,
        "--master", "local[2]",
        "--driver-memory", args.driver_memory,
        "--conf", "spark.ui.port=0",
        "--conf", "spark.sql.shuffle.partitions=200",
        # Reproducible partitions for the sort's order digest (see jobs.py).
        "--conf", "spark.sql.adaptive.coalescePartitions.enabled=false",
    ]
    if shuffle == "sluice":
        cmd += [
            "--jars", args.jar,
            "--conf", "spark.shuffle.manager=org.apache.spark.shuffle.sluice.SluiceShuffleManager",
            "--conf",
            "spark.shuffle.sort.io.plugin.class=org.apache.spark.shuffle.sluice.SluiceShuffleDataIO",
            "--conf", f"spark.sluice.master.endpoints={master}",
        ]
    for conf in args.conf:
        cmd += ["--conf", conf]
    cmd += [
        os.path.join(HERE, "jobs.py"),
        "--job", job,
        "--rows", str(args.rows),
        "--stages", str(args.stages),
        "--out", out,
    ]
    started = time.monotonic()
    with open(logpath, "w") as logfile:
        status = subprocess.call(cmd, stdout=logfile, stderr=subprocess.STDOUT)
    wall = time.monotonic() - started
    if status != 0:
        with open(logpath) as f:
            tail = f.readlines()[-30:]
        sys.stderr.write("".join(tail))
        raise SystemExit(f"the {shuffle} run of {job} failed ({status}); log: {logpath}")
    with open(out) as f:
        result = json.load(f)
    result["wall_secs"] = round(wall, 3)
    return result


def median(values):
    return statistics.median(values) if values else 0.0


def ratio(sluice, builtin):
    return round(sluice / builtin, 3) if builtin > 0 else None


def summarize(job, runs):
    """Medians per shuffle of the total, each step and each stage (stages by position)."""
    by = {shuffle: [r for r in runs if r["shuffle_name"] == shuffle] for shuffle in SHUFFLES}
    summary = {"job": job, "rounds": len(by["builtin"]), "steps": []}
    for shuffle in SHUFFLES:
        summary[f"{shuffle}_secs"] = median([r["secs"] for r in by[shuffle]])
        summary[f"{shuffle}_runs"] = [r["secs"] for r in by[shuffle]]
    summary["ratio"] = ratio(summary["sluice_secs"], summary["builtin_secs"])
    for i, step in enumerate(by["builtin"][0]["steps"]):
        entry = {"name": step["name"], "stages": []}
        for shuffle in SHUFFLES:
            entry[f"{shuffle}_secs"] = median([r["steps"][i]["secs"] for r in by[shuffle]])
        entry["ratio"] = ratio(entry["sluice_secs"], entry["builtin_secs"])
        stage_count = min(len(r["steps"][i]["stages"]) for r in runs)
        for k in range(stage_count):
            stage = {"tasks": step["stages"][k]["tasks"]}
            for shuffle in SHUFFLES:
                stage[f"{shuffle}_secs"] = median(
                    [r["steps"][i]["stages"][k]["secs"] for r in by[shuffle]]
                )
                first = by[shuffle][0]["steps"][i]["stages"][k]
                stage[f"{shuffle}_shuffle_read_bytes"] = first["shuffle_read_bytes"]
                stage[f"{shuffle}_shuffle_write_bytes"] = first["shuffle_write_bytes"]
            stage["ratio"] = ratio(stage["sluice_secs"], stage["builtin_secs"])
            entry["stages"].append(stage)
        summary["steps"].append(entry)
    return summary


def print_summary(s):
    print(f"\n{s['job']}: {s['rounds']} rounds, medians (built-in | sluice | sluice/built-in)")
    print(f"  {'total':<22} {s['builtin_secs']:8.2f}s | {s['sluice_secs']:8.2f}s | {s['ratio']}")
    for step in s["steps"]:
        print(
            f"  {step['name']:<22} {step['builtin_secs']:8.2f}s | {step['sluice_secs']:8.2f}s"
            f" | {step['ratio']}"
        )
        if len(step["stages"]) > 12:
            continue  # many short stages: the step line says it
        for k, stage in enumerate(step["stages"]):
            print(
                f"    stage {k + 1:<2} {stage['tasks']:>4} tasks  {stage['builtin_secs']:7.2f}s"
                f" | {stage['sluice_secs']:7.2f}s | {stage['ratio']}"
                f"  (shuffle read {stage['builtin_shuffle_read_bytes'] / 1e6:.0f} MB,"
                f" write {stage['builtin_shuffle_write_bytes'] / 1e6:.0f} MB)"
            )


SHUFFLES = ["builtin", "sluice"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", required=True, help="the sluice binary (release build)")
    parser.add_argument("--jar", required=True, help="the Sluice Spark client jar")
    parser.add_argument("--spark-submit", default="spark-submit")
    parser.add_argument("--jobs", default="heavy,small", help="comma-separated: heavy, small")
    parser.add_argument("--rows", type=int, default=20_000_000, help="rows of the heavy job")
    parser.add_argument("--stages", type=int, default=20, help="stages of the small job")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers of the Sluice cluster")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--conf", action="append", default=[], help="more --conf for both runs")
    parser.add_argument("--work", default="target/bench-spark", help="logs and results")
    args = parser.parse_args()

    jobs = [j for j in args.jobs.split(",") if j]
    for job in jobs:
        if job not in ("heavy", "small"):
            raise SystemExit(f"unknown job {job!r}: heavy or small")
    os.makedirs(args.work, exist_ok=True)
    proc, master, data = start_cluster(args, args.work)
    log(f"sluice local: master {master}, {args.workers} workers (log {args.work}/sluice.log)")
    summaries = []
    failed = []
    try:
        for job in jobs:
            runs = []
            for round_ in range(args.rounds):
                order = SHUFFLES if round_ % 2 == 0 else list(reversed(SHUFFLES))
                for shuffle in order:
                    name = f"{job}-{shuffle}-{round_ + 1}"
                    out = os.path.join(args.work, f"{name}.json")
                    result = spark_submit(
                        args, job, shuffle, master, out, os.path.join(args.work, f"{name}.log")
                    )
                    result["shuffle_name"] = shuffle
                    runs.append(result)
                    log(f"{name}: {result['secs']:.2f}s job, {result['wall_secs']:.2f}s wall")
            answers = {json.dumps(r["answer"], sort_keys=True) for r in runs}
            if len(answers) != 1:
                failed.append(job)
                log(f"{job}: ANSWERS DIFFER across runs: see {args.work}/{job}-*.json")
            summary = summarize(job, runs)
            summary["answers_equal"] = len(answers) == 1
            summary["answer"] = runs[0]["answer"] if job == "heavy" else len(runs[0]["answer"]["answers"])
            summaries.append(summary)
            print_summary(summary)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.call(["rm", "-rf", data])
    print(json.dumps({"bench_spark": summaries, "rows": args.rows, "rounds": args.rounds}))
    if failed:
        raise SystemExit(f"answers differ: {', '.join(failed)}")
    print("answers identical on both shuffles in every round", file=sys.stderr)


if __name__ == "__main__":
    main()
