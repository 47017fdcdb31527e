#!/usr/bin/env python3
"""DuckDB peer for the export benchmark: the NDJSON (or Parquet) of the
resources in the Patient compartments of a member list, read from the same
warehouse Parquet files fhirlake exports from, written with DuckDB COPY.

Usage: duckdb_export.py WAREHOUSE MEMBERS_FILE OUT_DIR --format ndjson|parquet [--threads N]

WAREHOUSE is a fhirlake warehouse folder (its latest _manifest/v*.json names
the files of each resource table); MEMBERS_FILE has one patient id per line.
Prints one JSON object: rows, bytes written, seconds, peak RSS (MiB).
"""
import argparse, json, os, resource, time
import duckdb

CONTEXT = {"Practitioner", "PractitionerRole", "Organization", "Location", "Medication"}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("warehouse"); ap.add_argument("members"); ap.add_argument("out_dir")
    ap.add_argument("--format", default="ndjson"); ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    manifests = sorted(f for f in os.listdir(os.path.join(a.warehouse, "_manifest")) if f.endswith(".json"))
    snapshot = json.load(open(os.path.join(a.warehouse, "_manifest", manifests[-1])))
    os.makedirs(a.out_dir, exist_ok=True)
    con = duckdb.connect()
    if a.threads: con.execute(f"SET threads = {a.threads}")
    t0 = time.perf_counter()
    con.execute(f"CREATE TABLE members AS SELECT column0 AS id FROM read_csv('{a.members}', header=false, columns={{'column0': 'VARCHAR'}})")
    outputs = []
    for name, entry in sorted(snapshot["tables"].items()):
        if entry["kind"] != "resource" or name in CONTEXT or not entry["files"]:
            continue
        files = [os.path.join(a.warehouse, f["path"]) for f in entry["files"]]
        # A resource in several members' compartments (a Group, an EOB
        # naming two patients) is written once: EXISTS over its patients.
        select = (f"SELECT r.resource FROM read_parquet({files!r}) r WHERE EXISTS "
                  f"(SELECT 1 FROM (SELECT unnest(r.patients) AS p) u JOIN members m ON u.p = m.id)")
        if a.format == "parquet":
            out = os.path.join(a.out_dir, f"{name}.parquet")
            con.execute(f"COPY ({select}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
        else:
            out = os.path.join(a.out_dir, f"{name}.ndjson")
            # One column, no quoting, no escaping: CSV writes each JSON
            # text verbatim as a line (NDJSON lines hold no raw newline).
            con.execute(f"COPY ({select}) TO '{out}' (FORMAT csv, HEADER false, DELIMITER '\x01', QUOTE '', ESCAPE '')")
        outputs.append(out)
    seconds = time.perf_counter() - t0
    rows = 0
    for out in outputs:
        if out.endswith(".parquet"):
            rows += con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
        else:
            with open(out, "rb") as f:
                rows += sum(1 for _ in f)
    written = sum(os.path.getsize(os.path.join(a.out_dir, f)) for f in os.listdir(a.out_dir))
    print(json.dumps({"rows": rows, "bytes": written, "seconds": seconds,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))

if __name__ == "__main__":
    main()
