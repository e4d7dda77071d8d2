#!/bin/sh
# Run once by the postgres image, when the data directory is first initialised
# (/docker-entrypoint-initdb.d): the two login roles the service connects as through PgBouncer, with the
# passwords compose.yaml hands in. Their grants and session defaults are `orders-api roles`' (shared/roles.py),
# which compose's `migrate` service runs after every migration. To change a password later:
# ALTER ROLE ... PASSWORD (changing the variable alone changes nothing once the volume exists).
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v read_password="$ORDERS_API_READ_PASSWORD" -v write_password="$ORDERS_API_WRITE_PASSWORD" <<'SQL'
CREATE ROLE orders_api_read LOGIN PASSWORD :'read_password';
CREATE ROLE orders_api_write LOGIN PASSWORD :'write_password';
SQL
