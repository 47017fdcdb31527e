"""DuckDB's cohort query of ../shared/bench/duckdb_view.py, repeated in one
process over the Parquet files that script's views phase wrote, so its
steady-state latency can be compared with fhirlake's in-process one.

Usage: duckdb_cohort_repeat.py OUT_DIR [--runs N] [--threads 2]
Prints JSON: {"patients": n, "first_s": t, "median_s": t, "min_s": t}.
"""
import argparse
import json
import os
import statistics
import time

import duckdb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    con = duckdb.connect()
    con.execute(f"SET threads = {a.threads}")
    con.execute("SET TimeZone = 'UTC'")
    cc = os.path.join(a.out_dir, "condition_coding.parquet")
    ep = os.path.join(a.out_dir, "encounter_period.parquet")
    # The same statement and parameters as duckdb_view.py's cohort phase.
    sql = f"""
        SELECT count(*) FROM (
          SELECT patient_id FROM read_parquet('{cc}') WHERE system = ? AND code = ?
          INTERSECT
          SELECT patient_id FROM read_parquet('{ep}')
          WHERE period_start >= CAST(? AS TIMESTAMPTZ) AND period_start < CAST(? AS TIMESTAMPTZ))"""
    params = ["http://snomed.info/sct", "44054006", "2020-01-01", "2021-01-01"]
    times = []
    patients = None
    for _ in range(a.runs):
        t0 = time.perf_counter()
        patients = con.execute(sql, params).fetchone()[0]
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "patients": patients,
        "first_s": round(times[0], 4),
        "median_s": round(statistics.median(times[1:] or times), 4),
        "min_s": round(min(times), 4),
    }))


if __name__ == "__main__":
    main()
