"""The SQL front: PREDICT grammar (sqlglot dialect extensions) and tree rewrites."""
