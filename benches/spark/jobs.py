"""Jobs of the Spark shuffle benchmark (`make bench-spark`, benches/spark/bench.py).

A job does not know which shuffle it runs on: spark-submit decides. Each writes one JSON file:
its answer (deterministic, integers only, so the built-in shuffle and Sluice can be compared
byte for byte) and its timings, from Spark's own REST API: per step (one job group) the wall
time and, per stage, the duration, tasks and shuffle bytes written and read.

    spark-submit benches/spark/jobs.py --job heavy --rows 20000000 --out result.json
    spark-submit benches/spark/jobs.py --job small --stages 20 --out result.json

heavy: rows of ~90 bytes (an id, a key, an amount, a 64-character payload), `repartition(200)`,
       a `groupBy` over a tenth as many keys, then a global sort of the groups: three shuffles
       of the whole data set. (Adaptive coalescing is off in both runs so a sort's partitions,
       and so the answer's order digest, do not depend on the sizes a shuffle reports.)
small: many short stages: a small aggregation at a time, each its own shuffle, the pattern of
       an iterative or BI-style job where per-stage overhead dominates.
"""

import argparse
import json
import time
import urllib.request

from pyspark.sql import SparkSession
from pyspark.sql import functions as F


def stages_of(spark, group):
    """The stages of every job of a job group, from the driver's REST API."""
    sc = spark.sparkContext
    base = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}"

    def get(path):
        with urllib.request.urlopen(base + path, timeout=30) as answer:
            return json.load(answer)

    stage_ids = set()
    for job in get("/jobs"):
        if job.get("jobGroup") == group:
            stage_ids.update(job["stageIds"])
    stages = []
    for stage in get("/stages?status=complete"):
        if stage["stageId"] not in stage_ids:
            continue
        stages.append(
            {
                "id": stage["stageId"],
                "name": stage["name"],
                "tasks": stage["numTasks"],
                # Submission to completion, as the UI shows it.
                "secs": round(
                    (parse_time(stage["completionTime"]) - parse_time(stage["submissionTime"])),
                    3,
                ),
                "shuffle_write_bytes": stage["shuffleWriteBytes"],
                "shuffle_read_bytes": stage["shuffleReadBytes"],
            }
        )
    return sorted(stages, key=lambda s: s["id"])


def parse_time(text):
    # "2026-11-30T04:01:02.345GMT"
    return time.mktime(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:23]) / 1000


def heavy(spark, args, step):
    rows = args.rows
    keys = max(rows // 10, 1)
    events = spark.range(0, rows, 1, numPartitions=8).select(
        F.col("id"),
        F.pmod(F.xxhash64("id"), F.lit(keys)).alias("key"),
        F.pmod(F.xxhash64("id", F.lit("amount")), F.lit(10_000)).alias("cents"),
        # 64 characters that differ from row to row and do not compress away.
        F.concat(*(F.hex(F.xxhash64("id", F.lit(i))) for i in range(4))).alias("payload"),
    )
    with step("repartition + groupBy"):
        groups = (
            events.repartition(200)
            .groupBy("key")
            .agg(
                F.count("*").alias("n"),
                F.sum("cents").alias("cents"),
                F.max("payload").alias("top"),
            )
        )
        groups.cache()
        # Order-independent digest: 64-bit sums wrap the same way in any order.
        grouped = groups.select(
            F.count("*").alias("groups"),
            F.sum("n").alias("rows"),
            F.sum(F.xxhash64("key", "n", "cents", "top")).alias("digest"),
        ).collect()[0]
    with step("global sort"):
        # The position of each group after the sort goes into the digest, so a wrong order shows.
        ordered = (
            groups.orderBy(F.col("n").desc(), F.col("top"), F.col("key"))
            .select(F.xxhash64(F.monotonically_increasing_id(), "key").alias("h"))
            .select(F.sum("h").alias("order_digest"), F.count("*").alias("rows"))
            .collect()[0]
        )
        groups.unpersist()
    return {
        "rows": rows,
        "groups": grouped["groups"],
        "grouped_rows": grouped["rows"],
        "group_digest": grouped["digest"],
        "sorted_rows": ordered["rows"],
        "order_digest": ordered["order_digest"],
    }


def small(spark, args, step):
    base = spark.range(0, 200_000, 1, numPartitions=4).select(
        F.col("id"),
        F.pmod(F.xxhash64("id"), F.lit(1000)).alias("key"),
    )
    base.cache().count()
    answers = []
    with step("small stages"):
        for i in range(args.stages):
            row = (
                base.groupBy((F.col("key") + i) % 97)
                .agg(F.count("*").alias("n"), F.sum("id").alias("s"))
                .select(F.sum(F.xxhash64("n", "s")).alias("d"), F.count("*").alias("g"))
                .collect()[0]
            )
            answers.append([row["g"], row["d"]])
    return {"stages": args.stages, "answers": answers}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=["heavy", "small"], required=True)
    parser.add_argument("--rows", type=int, default=20_000_000, help="rows of the heavy job")
    parser.add_argument("--stages", type=int, default=20, help="stages of the small job")
    parser.add_argument("--out", required=True, help="where to write answer and timings (JSON)")
    args = parser.parse_args()

    spark = SparkSession.builder.appName(f"sluice-bench-{args.job}").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    steps = []

    class Step:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            spark.sparkContext.setJobGroup(self.name, self.name)
            self.started = time.monotonic()

        def __exit__(self, *exc):
            if exc[0] is None:
                steps.append({"name": self.name, "secs": round(time.monotonic() - self.started, 3)})

    started = time.monotonic()
    answer = (heavy if args.job == "heavy" else small)(spark, args, Step)
    total = round(time.monotonic() - started, 3)
    for s in steps:
        s["stages"] = stages_of(spark, s["name"])
    result = {
        "job": args.job,
        "shuffle": spark.conf.get("spark.shuffle.manager", "sort"),
        "answer": answer,
        "secs": total,
        "steps": steps,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    spark.stop()


if __name__ == "__main__":
    main()
