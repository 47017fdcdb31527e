-- Metabase field sync (information_schema, as its Postgres driver describes a table).
SELECT c.column_name AS name, c.data_type AS database_type, c.ordinal_position - 1 AS database_position, c.table_schema AS table_schema, c.table_name AS table_name
FROM information_schema.columns c
WHERE c.table_schema NOT IN ('information_schema', 'pg_catalog') AND c.table_name = 'patient'
ORDER BY c.table_schema, c.table_name, c.ordinal_position
