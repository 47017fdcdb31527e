"""Real Postgres clients against `fhirlake serve --pg-addr`, for the
integration tests (tests/it/postgres.rs): psycopg (extended protocol,
typed parameters, binary results, streaming) and SQLAlchemy's inspector.
Each command prints one JSON object; the Rust test checks it.

usage: clients.py COMMAND PORT [ARGS...]
"""

import json
import pathlib
import sys
import time

import psycopg


def connect(port, user="analyst", password=None, **kwargs):
    return psycopg.connect(
        host="127.0.0.1", port=port, user=user, password=password, dbname="fhirlake", connect_timeout=10, **kwargs
    )


def error_of(e):
    return {"sqlstate": getattr(e, "sqlstate", None), "message": str(e).strip()}


def queries(port):
    out = {}
    with connect(port, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SELECT id, gender FROM patient WHERE gender = %s ORDER BY id", ("female",))
        out["female_ids"] = [row[0] for row in cur.fetchall()]
        cur.execute("SELECT count(*) FROM patient WHERE birth_date > %s", ("1990-01-01",))
        out["born_after_1990"] = cur.fetchone()[0]
        cur.execute("SELECT %s::bigint + 1, %s::double precision * 2, NOT %s::boolean", (41, 1.25, True))
        out["typed"] = list(cur.fetchone())
        # Binary results: lists and timestamps keep their types.
        cur.execute("SELECT patients, loaded_at FROM fhir.observation LIMIT 1", binary=True)
        patients, loaded_at = cur.fetchone()
        out["binary"] = {"patients_is_list": isinstance(patients, list), "loaded_at_year": loaded_at.year}
        # A large result read as it arrives (psycopg's single-row mode).
        streamed = 0
        for _ in cur.stream("SELECT id FROM observation"):
            streamed += 1
        out["observations_streamed"] = streamed
        big = 0
        for _ in cur.stream("SELECT value FROM generate_series(1, 250000)"):
            big += 1
        out["series_streamed"] = big
        # The same statement prepared once, run with several parameters.
        counts = []
        for gender in ("female", "male", "other"):
            cur.execute("SELECT count(*) FROM patient WHERE gender = %s", (gender,), prepare=True)
            counts.append(cur.fetchone()[0])
        out["prepared_counts"] = counts
        # cohort() with its filter as a bound parameter (planned at Bind).
        cur.execute("SELECT count(*) FROM condition c JOIN cohort(%s) p ON c.patient_id = p.id", ("Patient?gender=female",))
        out["cohort_join"] = cur.fetchone()[0]
        try:
            cur.execute("SELECT count(*) FROM cohort(%s)", ("Patient?gender=female') UNION SELECT 'x' --",))
            out["cohort_injection"] = cur.fetchone()[0]
        except psycopg.Error as e:
            out["cohort_injection"] = error_of(e)
        # A client-side statement_timeout cancels a long query.
        cur.execute("SET statement_timeout = 300")
        try:
            cur.execute("SELECT count(*) FROM generate_series(1, 20000000000)")
            out["timeout"] = "ran to the end"
        except psycopg.Error as e:
            out["timeout"] = error_of(e)
        cur.execute("SET statement_timeout = 0")
        # Refusals keep the connection usable.
        refused = {}
        for sql in (
            "INSERT INTO patient (id) VALUES ('x')",
            "CREATE TABLE t AS SELECT 1",
            "COPY (SELECT 1) TO '/tmp/fhirlake-pg-copy.csv'",
            "SET datafusion.execution.batch_size = 1",
            "SELECT * FROM no_such_table",
        ):
            try:
                cur.execute(sql)
                refused[sql] = "accepted"
            except psycopg.Error as e:
                refused[sql] = error_of(e)
        out["refused"] = refused
        cur.execute("SELECT 1")
        out["after_refusals"] = cur.fetchone()[0]
    # Settings are per connection.
    with connect(port, autocommit=True) as a, connect(port, autocommit=True) as b:
        a.execute("SET application_name = 'first'")
        a.execute("SET search_path = fhir")
        out["settings"] = {
            "a_application_name": a.execute("SHOW application_name").fetchone()[0],
            "b_application_name": b.execute("SHOW application_name").fetchone()[0],
            "a_patient_columns": [d.name for d in a.execute("SELECT * FROM patient LIMIT 0").description],
            "b_patient_columns": [d.name for d in b.execute("SELECT * FROM patient LIMIT 0").description],
        }
    # Transactions as drivers open them (psycopg's default).
    with connect(port) as conn:
        out["in_transaction"] = conn.execute("SELECT count(*) FROM patient").fetchone()[0]
        conn.commit()
    return out


def cancel(port):
    """Cancels a long result from another thread while reading it."""
    import threading

    with connect(port, autocommit=True) as conn:
        cur = conn.cursor()
        read = 0
        outcome = "ran to the end"
        try:
            for _ in cur.stream("SELECT value FROM generate_series(1, 2000000000)"):
                read += 1
                if read == 1000:
                    threading.Thread(target=conn.cancel_safe).start()
        except psycopg.Error as e:
            outcome = error_of(e)
        after = conn.execute("SELECT 1").fetchone()[0]
    return {"read": read, "outcome": outcome, "after": after}


def memory(port):
    with connect(port, autocommit=True) as conn:
        try:
            conn.execute("SELECT array_agg(value) FROM generate_series(1, 30000000)").fetchone()
            return {"result": "ran to the end"}
        except psycopg.Error as e:
            return {"result": error_of(e)}


def disconnect(port):
    """Starts a long result, reads a little, and goes away without a word."""
    import os

    conn = connect(port, autocommit=True)
    cur = conn.cursor()
    read = 0
    closed_at = None
    try:
        for _ in cur.stream("SELECT value FROM generate_series(1, 2000000000)"):
            read += 1
            if read == 1000:
                # Close the socket under psycopg: no Terminate, no cancel
                # request (leaving the loop would make psycopg read the rest).
                os.close(conn.pgconn.socket)
                closed_at = time.time()
    except psycopg.Error:
        pass
    return {"read": read, "closed_at": closed_at}


def login(port, user, password, sql):
    try:
        with connect(port, user=user, password=password, autocommit=True) as conn:
            rows = conn.execute(sql).fetchall()
            return {"rows": [list(r) for r in rows]}
    except psycopg.Error as e:
        return {"error": error_of(e)}


def inspect(port, queries_dir):
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"postgresql+psycopg://analyst@127.0.0.1:{port}/fhirlake")
    inspector = sqlalchemy.inspect(engine)
    out = {
        "schemas": inspector.get_schema_names(),
        "tables": inspector.get_table_names(),
        "fhir_tables": inspector.get_table_names(schema="fhir"),
        "has_condition": inspector.has_table("condition"),
    }
    with engine.connect() as conn:
        out["pandas_like_read"] = conn.execute(sqlalchemy.text("SELECT count(*) FROM patient")).scalar()
    # The catalog queries other tools send (committed files, one query per
    # file): each must run and return rows.
    tools = {}
    with connect(port, autocommit=True) as conn:
        for path in sorted(pathlib.Path(queries_dir).glob("*.sql")):
            sql = path.read_text()
            try:
                rows = conn.execute(sql).fetchall()
                tools[path.name] = {"rows": len(rows), "text": json.dumps([list(map(str, r)) for r in rows])[:20000]}
            except psycopg.Error as e:
                tools[path.name] = {"error": error_of(e)}
    out["tool_queries"] = tools
    return out


def main():
    command, port, *rest = sys.argv[1:]
    port = int(port)
    result = {
        "queries": lambda: queries(port),
        "memory": lambda: memory(port),
        "cancel": lambda: cancel(port),
        "disconnect": lambda: disconnect(port),
        "login": lambda: login(port, *rest),
        "inspect": lambda: inspect(port, *rest),
    }[command]()
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
