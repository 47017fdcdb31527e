"""Fetches every row of one query from a Postgres-protocol server with
psycopg (text results, the client's default), `runs` times; prints JSON
with the rows and the seconds of each run. The same client for fhirlake's
Postgres front and for a real PostgreSQL server (benches/pg_wire.rs).

usage: pg_fetch.py PORT USER QUERY RUNS
"""

import json
import sys
import time

import psycopg

port, user, query, runs = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
seconds = []
rows = 0
with psycopg.connect(host="127.0.0.1", port=port, user=user, dbname="fhirlake" if user != "postgres" else "postgres", autocommit=True) as conn:
    for _ in range(runs):
        started = time.perf_counter()
        cur = conn.execute(query)
        rows = 0
        while True:
            batch = cur.fetchmany(10000)
            if not batch:
                break
            rows += len(batch)
        seconds.append(time.perf_counter() - started)
print(json.dumps({"rows": rows, "seconds": seconds}))
