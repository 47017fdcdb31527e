-- What drivers ask first: the server version and the current schema.
SELECT version(), current_schema(), current_database()
