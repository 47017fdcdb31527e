-- DBeaver (PostgreSQL driver): the columns of one table (patient).
SELECT c.relname, a.attname, a.attnum, a.atttypid, a.attnotnull, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name
FROM pg_catalog.pg_attribute a
INNER JOIN pg_catalog.pg_class c ON a.attrelid = c.oid
WHERE NOT a.attisdropped AND c.relkind NOT IN ('i', 'I', 'c') AND c.relname = 'patient' AND a.attnum > 0
ORDER BY a.attnum
