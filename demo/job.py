"""Sluice demo job: a word count, a join and a Python RDD aggregation over generated data.

The job does not know which shuffle it runs on: spark-submit decides (demo/run.sh runs it once
with Spark's own shuffle and once through Sluice). Its answer is deterministic, integers only
(no floating-point sums whose value depends on the order rows arrive in), and written as
canonical JSON to --out, so two runs can be compared byte for byte.

    spark-submit demo/job.py --rows 3000000 --out answer.json
"""

import argparse
import hashlib
import json
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

USERS = 200_000
COUNTRIES = 40


def digest(lines):
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000, help="events to generate")
    parser.add_argument("--out", required=True, help="where to write the answer (JSON)")
    args = parser.parse_args()

    spark = (
        SparkSession.builder.appName("sluice-demo")
        # Shuffle both sides of the join instead of broadcasting the smaller one.
        .config("spark.sql.autoBroadcastJoinThreshold", "-1")
        .getOrCreate()
    )
    started = time.monotonic()

    # Events: a word from a skewed vocabulary (small word numbers are far more frequent),
    # a user, an amount in cents. xxhash64 is part of Spark SQL: the same on every run. The
    # expressions are SQL text because pyspark's own pmod() only exists from Spark 3.4 on, and
    # the demo runs on every supported line (demo/lines.sh).
    events = spark.range(0, args.rows, 1, numPartitions=8).select(
        F.col("id"),
        F.expr(
            "concat('w', pmod(xxhash64(id), pmod(xxhash64(id, 'spread'), 50000) + 1))"
        ).alias("word"),
        F.expr(f"pmod(xxhash64(id, 'user'), {USERS})").alias("user"),
        F.expr("pmod(xxhash64(id, 'amount'), 10000)").alias("cents"),
    )
    users = spark.range(0, USERS, 1, numPartitions=4).select(
        F.col("id").alias("user"),
        F.concat(F.lit("c"), F.col("id") % COUNTRIES).alias("country"),
        (F.col("id") % 3).alias("tier"),
    )

    # 1. Word count (a hash-partitioned shuffle with map-side partial aggregation).
    steps = {}
    mark = time.monotonic()

    def step(name):
        nonlocal mark
        now = time.monotonic()
        steps[name] = round(now - mark, 1)
        mark = now

    words = events.groupBy("word").agg(F.count("*").alias("n"), F.sum("cents").alias("cents"))
    word_rows = sorted(f"{r.word},{r.n},{r.cents}" for r in words.collect())
    top = (
        words.orderBy(F.col("n").desc(), F.col("word"))  # a range-partitioned shuffle
        .limit(10)
        .collect()
    )
    step("word count")

    # 2. A sort-merge join of every event with its user, then an aggregation per country and
    #    tier: three more shuffles (both join sides, the aggregation).
    by_country = (
        events.join(users, "user")
        .groupBy("country", "tier")
        .agg(
            F.count("*").alias("events"),
            F.sum("cents").alias("cents"),
            F.countDistinct("word").alias("words"),
        )
        .orderBy("country", "tier")
        .collect()
    )
    step("join")

    # 3. A Python RDD shuffle (pickled records through the JVM shuffle) over a tenth of the events.
    prefixes = (
        events.where(F.col("id") % 10 == 0)
        .select("word")
        .rdd.map(lambda r: (r.word[:3], 1))
        .reduceByKey(lambda a, b: a + b, numPartitions=16)
        .collect()
    )
    step("rdd")

    answer = {
        "rows": args.rows,
        "distinct_words": len(word_rows),
        "word_count_sha256": digest(word_rows),
        "top_words": [[r.word, r.n, r.cents] for r in top],
        "by_country_tier": [[r.country, r.tier, r.events, r.cents, r.words] for r in by_country],
        "rdd_prefix_counts": sorted([k, v] for k, v in prefixes),
    }
    text = json.dumps(answer, sort_keys=True, indent=1) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    elapsed = time.monotonic() - started
    shuffle = spark.conf.get("spark.shuffle.manager", "sort (built-in)")
    print(f"shuffle manager: {shuffle}")
    print(f"answer sha256: {hashlib.sha256(text.encode()).hexdigest()} ({args.out})")
    print(f"job time: {elapsed:.1f}s {steps}")
    spark.stop()


if __name__ == "__main__":
    main()
