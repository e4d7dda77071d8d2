#!/bin/sh
# Run once by the postgres image, when the data directory is first initialised, after the service roles
# (10-orders-api-roles.sh): what a streaming replica needs from this primary (compose.yaml's `replica`
# profile; docs/operating.md, "Adding a read replica"). Nothing when POSTGRES_REPLICATION_PASSWORD is
# unset. PostgreSQL 18's defaults already let a standby stream: wal_level=replica, max_wal_senders=10.
set -eu

if [ -n "${POSTGRES_REPLICATION_PASSWORD:-}" ]; then
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v replication_password="$POSTGRES_REPLICATION_PASSWORD" <<'SQL'
-- May stream the WAL (the whole cluster) and take base backups; no grant on any table.
CREATE ROLE orders_replication WITH REPLICATION LOGIN PASSWORD :'replication_password';
-- The replica's slot: the primary keeps the WAL the replica has not received yet, so a replica that was
-- down resumes instead of needing a new base backup. No WAL is kept until the replica first connects;
-- drop the slot if the replica goes for good (SELECT pg_drop_replication_slot('orders_replica')).
SELECT pg_create_physical_replication_slot('orders_replica');
SQL
    # A replication connection matches only lines naming `replication` in the database column (`all`
    # does not cover it), so the image's own `host all all all` line does not let it in.
    echo "host replication orders_replication all scram-sha-256" >>"$PGDATA/pg_hba.conf"
else
    echo "POSTGRES_REPLICATION_PASSWORD is unset: no replication role (docs/operating.md, Adding a read replica)"
fi
