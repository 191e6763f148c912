-- Every SQL statement Scenario Runner sends (the run index, the outbox, the leases, the
-- migration bookkeeping and `sr index prune`); only the migration files themselves are
-- elsewhere (sql/NNNN_name.sql).
--
-- Loaded once by worker.adapters.postgres.queries.load_queries(): each block starts with
-- `-- name: <name>` and runs until the next one. Every block is ONE statement, i.e. one
-- round trip. Placeholders are psycopg's named `%(param)s`; a literal percent sign would
-- have to be written `%%` (none is needed). This file is not a migration (its name does not
-- start with a version number).

-- name: admit_run
-- Insert-or-get in one statement. ON CONFLICT without a target covers both unique keys
-- (run_id and run_equivalence_key). When the row already existed, the second branch returns
-- it (the statement's snapshot predates the INSERT, so the two branches never both return).
WITH ins AS (
    INSERT INTO sr_runs AS r (run_id, run_equivalence_key, intent_fingerprint, tenant_id, namespace,
                              scenario_id, status, reason_code, deadline, next_check_at, intent,
                              evidence_root)
    VALUES (%(run_id)s, %(run_equivalence_key)s, %(intent_fingerprint)s, %(tenant_id)s, %(namespace)s,
            %(scenario_id)s, %(status)s, %(reason_code)s, %(deadline)s, %(next_check_at)s, %(intent)s,
            %(evidence_root)s)
    ON CONFLICT DO NOTHING
    RETURNING r.run_id, r.run_equivalence_key, r.intent_fingerprint, r.tenant_id, r.namespace,
              r.scenario_id, r.status, r.reason_code, r.plan_hash, r.facts_view_hash, r.ledger_seq,
              r.ledger_head_hash, r.lease_epoch, r.deadline, r.next_check_at, r.intent,
              r.evidence_root, r.created_at, r.updated_at
)
SELECT true AS inserted, ins.* FROM ins
UNION ALL
SELECT false AS inserted,
       r.run_id, r.run_equivalence_key, r.intent_fingerprint, r.tenant_id, r.namespace,
       r.scenario_id, r.status, r.reason_code, r.plan_hash, r.facts_view_hash, r.ledger_seq,
       r.ledger_head_hash, r.lease_epoch, r.deadline, r.next_check_at, r.intent,
       r.evidence_root, r.created_at, r.updated_at
  FROM sr_runs AS r
 WHERE (r.run_id = %(run_id)s OR r.run_equivalence_key = %(run_equivalence_key)s)
   AND NOT EXISTS (SELECT 1 FROM ins);

-- name: get_run
SELECT run_id, run_equivalence_key, intent_fingerprint, tenant_id, namespace, scenario_id, status,
       reason_code, plan_hash, facts_view_hash, ledger_seq, ledger_head_hash, lease_epoch, deadline,
       next_check_at, intent, evidence_root, created_at, updated_at
  FROM sr_runs
 WHERE run_id = %(run_id)s;

-- name: list_runs
-- Newest first; every filter is optional (NULL = no filter).
SELECT run_id, run_equivalence_key, intent_fingerprint, tenant_id, namespace, scenario_id, status,
       reason_code, plan_hash, facts_view_hash, ledger_seq, ledger_head_hash, lease_epoch, deadline,
       next_check_at, intent, evidence_root, created_at, updated_at
  FROM sr_runs
 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
   AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s::text)
   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
   AND (%(reason_code)s::text IS NULL OR reason_code = %(reason_code)s::text)
 ORDER BY created_at DESC, run_id
 LIMIT %(limit)s;

-- name: due_for_check
-- WAITING runs whose re-check time or deadline has come, and ADMITTED runs abandoned
-- mid-step (untouched since stale_before), most overdue first.
SELECT run_id, run_equivalence_key, intent_fingerprint, tenant_id, namespace, scenario_id, status,
       reason_code, plan_hash, facts_view_hash, ledger_seq, ledger_head_hash, lease_epoch, deadline,
       next_check_at, intent, evidence_root, created_at, updated_at
  FROM sr_runs
 WHERE (status = 'WAITING'
        AND (next_check_at <= %(now)s::timestamptz OR deadline <= %(now)s::timestamptz))
    OR (status = 'ADMITTED' AND updated_at <= %(stale_before)s::timestamptz)
 ORDER BY COALESCE(LEAST(next_check_at, deadline), updated_at), run_id
 LIMIT %(limit)s;

-- name: run_publications
SELECT id, run_id, pub_key, kind, facts_view_hash, event_type, topic, msg_key, payload, headers,
       created_at, published_at, kafka_partition, kafka_offset
  FROM sr_publications
 WHERE run_id = %(run_id)s
 ORDER BY id;

-- name: publication_by_key
SELECT id, run_id, pub_key, kind, facts_view_hash, event_type, topic, msg_key, payload, headers,
       created_at, published_at, kafka_partition, kafka_offset
  FROM sr_publications
 WHERE pub_key = %(pub_key)s;

-- name: pending_publications
SELECT id, run_id, pub_key, kind, facts_view_hash, event_type, topic, msg_key, payload, headers,
       created_at, published_at, kafka_partition, kafka_offset
  FROM sr_publications
 WHERE run_id = %(run_id)s AND published_at IS NULL
 ORDER BY id;

-- name: unpublished
-- The outbox sweep (re-drive after a crash between "publication row" and "mark published").
SELECT id, run_id, pub_key, kind, facts_view_hash, event_type, topic, msg_key, payload, headers,
       created_at, published_at, kafka_partition, kafka_offset
  FROM sr_publications
 WHERE published_at IS NULL
 ORDER BY id
 LIMIT %(limit)s;

-- name: mark_published
-- Idempotent: the first recorded broker position wins.
UPDATE sr_publications
   SET published_at = COALESCE(published_at, now()),
       kafka_partition = COALESCE(kafka_partition, %(partition)s::integer),
       kafka_offset = COALESCE(kafka_offset, %(offset)s::bigint)
 WHERE pub_key = %(pub_key)s
RETURNING id;

-- name: acquire_lease
-- Try the session-level advisory lock and, only if granted, bump the fencing epoch: one
-- round trip. If the lock was granted but the run row does not exist, the lock is released
-- again in the same statement (`unlocked` is then true).
WITH lock AS MATERIALIZED (
    SELECT pg_try_advisory_lock(%(lock_key)s::bigint) AS granted
), bump AS (
    UPDATE sr_runs
       SET lease_epoch = lease_epoch + 1,
           updated_at = now()
     WHERE run_id = %(run_id)s
       AND (SELECT granted FROM lock)
 RETURNING run_id, run_equivalence_key, intent_fingerprint, tenant_id, namespace, scenario_id, status,
           reason_code, plan_hash, facts_view_hash, ledger_seq, ledger_head_hash, lease_epoch, deadline,
           next_check_at, intent, evidence_root, created_at, updated_at
), undo AS MATERIALIZED (
    SELECT pg_advisory_unlock(%(lock_key)s::bigint) AS unlocked
     WHERE (SELECT granted FROM lock)
       AND NOT EXISTS (SELECT 1 FROM bump)
)
-- The run row comes back with the lease, so the holder needs no second round trip to read it.
SELECT (SELECT granted FROM lock) AS granted,
       (SELECT unlocked FROM undo) AS unlocked,
       bump.*
  FROM (SELECT 1) AS one
  LEFT JOIN bump ON true;

-- name: release_lease
SELECT pg_advisory_unlock(%(lock_key)s::bigint) AS released;

-- name: lease_held
-- Does THIS session still hold the run's advisory lock, and is its epoch still current?
-- A bigint advisory key shows in pg_locks as classid = high 32 bits, objid = low 32 bits,
-- objsubid = 1.
SELECT EXISTS (
           SELECT 1
             FROM pg_locks
            WHERE locktype = 'advisory'
              AND pid = pg_backend_pid()
              AND granted
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND classid = %(classid)s::bigint::oid
              AND objid = %(objid)s::bigint::oid
              AND objsubid = 1
       )
   AND EXISTS (SELECT 1 FROM sr_runs WHERE run_id = %(run_id)s AND lease_epoch = %(epoch)s::bigint)
       AS held;

-- name: touch_head
-- Epoch-checked: move the ledger head without changing the status (e.g. a TRIGGER entry).
UPDATE sr_runs
   SET ledger_seq = %(ledger_seq)s::integer,
       ledger_head_hash = %(ledger_head_hash)s::text,
       updated_at = now()
 WHERE run_id = %(run_id)s
   AND lease_epoch = %(epoch)s::bigint
RETURNING lease_epoch;

-- name: advance_run
-- contract §6 "index row (epoch-checked) -> publication row" as ONE atomic statement:
--  * `upd` updates the run only if the caller's epoch is current (a fenced writer matches
--    no row, so `ins` inserts nothing either);
--  * `ins` inserts the publications, ON CONFLICT (pub_key) DO NOTHING;
--  * `pubs` returns the stored rows: the ones inserted now plus the ones that already
--    existed (the statement's snapshot does not see `ins`), so a re-drive gets the ORIGINAL
--    payload bytes.
-- The result has at least one row; `updated_run_id` is NULL when the epoch check failed.
-- plan_hash / facts_view_hash: NULL keeps the stored value (they are never cleared).
WITH upd AS (
    UPDATE sr_runs
       SET status = %(status)s::text,
           reason_code = %(reason_code)s::text,
           plan_hash = COALESCE(%(plan_hash)s::text, plan_hash),
           facts_view_hash = COALESCE(%(facts_view_hash)s::text, facts_view_hash),
           ledger_seq = %(ledger_seq)s::integer,
           ledger_head_hash = %(ledger_head_hash)s::text,
           next_check_at = %(next_check_at)s::timestamptz,
           updated_at = now()
     WHERE run_id = %(run_id)s
       AND lease_epoch = %(epoch)s::bigint
 RETURNING run_id
), new_pub AS (
    SELECT *
      FROM unnest(%(pub_keys)s::text[], %(kinds)s::text[], %(fv_hashes)s::text[], %(event_types)s::text[],
                  %(topics)s::text[], %(msg_keys)s::bytea[], %(payloads)s::bytea[], %(headers)s::jsonb[])
           AS p(pub_key, kind, facts_view_hash, event_type, topic, msg_key, payload, headers)
), ins AS (
    INSERT INTO sr_publications (run_id, pub_key, kind, facts_view_hash, event_type, topic, msg_key,
                                 payload, headers)
    SELECT upd.run_id, p.pub_key, p.kind, p.facts_view_hash, p.event_type, p.topic, p.msg_key,
           p.payload, p.headers
      FROM upd CROSS JOIN new_pub AS p
    ON CONFLICT (pub_key) DO NOTHING
    RETURNING id, run_id, pub_key, kind, facts_view_hash, event_type, topic, msg_key, payload, headers,
              created_at, published_at, kafka_partition, kafka_offset
), pubs AS (
    SELECT * FROM ins
    UNION ALL
    SELECT e.id, e.run_id, e.pub_key, e.kind, e.facts_view_hash, e.event_type, e.topic, e.msg_key,
           e.payload, e.headers, e.created_at, e.published_at, e.kafka_partition, e.kafka_offset
      FROM sr_publications AS e
     WHERE e.pub_key IN (SELECT pub_key FROM new_pub)
       AND EXISTS (SELECT 1 FROM upd)
)
SELECT u.run_id AS updated_run_id, pubs.*
  FROM (SELECT 1) AS one
  LEFT JOIN upd AS u ON true
  LEFT JOIN pubs ON true
 ORDER BY pubs.id;

-- name: count_by_status
-- Runs per status, for the sr_runs_by_status gauge (one scan, one round trip).
SELECT status, count(*)::bigint AS n
  FROM sr_runs
 GROUP BY status;

-- name: outbox_stats
-- The outbox gauges (sr_outbox_backlog, sr_outbox_oldest_age_seconds): unpublished rows and
-- the age of the oldest, both by the database's clock (no worker clock skew), one round trip.
-- The partial index sr_publications_unpublished_idx keeps it cheap however large the
-- published history grows; an empty outbox yields (0, 0).
SELECT count(*)::bigint AS backlog,
       COALESCE(GREATEST(EXTRACT(EPOCH FROM now() - min(created_at)), 0), 0)::double precision
           AS oldest_age_seconds
  FROM sr_publications
 WHERE published_at IS NULL;

-- name: ping
-- Readiness probe: the server answers and the session works.
SELECT 1 AS ok;

-- name: record_operator_action
INSERT INTO sr_operator_actions (operator, action, allowed, detail)
VALUES (%(operator)s, %(action)s, %(allowed)s, %(detail)s);

-- name: operator_actions
SELECT id, operator, db_role, action, allowed, detail, at
  FROM sr_operator_actions
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: restore_run
-- `sr index rebuild`: upsert a run row derived from its S3 ledger. The epoch never moves
-- backwards, so fencing keeps working across a rebuild.
INSERT INTO sr_runs AS r (run_id, run_equivalence_key, intent_fingerprint, tenant_id, namespace,
                          scenario_id, status, reason_code, plan_hash, facts_view_hash, ledger_seq,
                          ledger_head_hash, lease_epoch, deadline, next_check_at, intent, evidence_root)
VALUES (%(run_id)s, %(run_equivalence_key)s, %(intent_fingerprint)s, %(tenant_id)s, %(namespace)s,
        %(scenario_id)s, %(status)s, %(reason_code)s, %(plan_hash)s, %(facts_view_hash)s, %(ledger_seq)s,
        %(ledger_head_hash)s, %(lease_epoch)s, %(deadline)s, %(next_check_at)s, %(intent)s, %(evidence_root)s)
ON CONFLICT (run_id) DO UPDATE
   SET status = EXCLUDED.status,
       reason_code = EXCLUDED.reason_code,
       plan_hash = EXCLUDED.plan_hash,
       facts_view_hash = EXCLUDED.facts_view_hash,
       ledger_seq = EXCLUDED.ledger_seq,
       ledger_head_hash = EXCLUDED.ledger_head_hash,
       lease_epoch = GREATEST(r.lease_epoch, EXCLUDED.lease_epoch),
       deadline = EXCLUDED.deadline,
       next_check_at = EXCLUDED.next_check_at,
       updated_at = now();

-- name: restore_publication
INSERT INTO sr_publications (run_id, pub_key, kind, facts_view_hash, event_type, topic, msg_key, payload,
                             headers, published_at)
VALUES (%(run_id)s, %(pub_key)s, %(kind)s, %(facts_view_hash)s, %(event_type)s, %(topic)s, %(msg_key)s,
        %(payload)s, %(headers)s, CASE WHEN %(published)s THEN now() END)
ON CONFLICT (pub_key) DO NOTHING;

-- name: migration_lock
-- Serialises concurrent migrators; a transaction-level lock, released at commit/rollback.
SELECT pg_advisory_xact_lock(%(key)s::bigint);

-- name: migration_bootstrap
CREATE TABLE IF NOT EXISTS sr_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_applied
SELECT name, checksum FROM sr_schema_migrations WHERE version = %(version)s;

-- name: migration_record
INSERT INTO sr_schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: prune_cutoff
-- `sr index prune`: rows published before this time (the database's clock) may go.
SELECT now() - make_interval(secs => %(older_than_s)s::double precision) AS cutoff;

-- name: prune_count
-- `sr index prune --dry-run`: what prune_delete would delete, by kind. Outbox rows no code
-- path needs again: published READY/SUPERSEDE/REVOKED rows of a facts view that is no longer the
-- run's current one, and published STATUS rows of runs in a final status. The FROM/WHERE
-- part must stay the same as prune_delete's (a unit test compares them).
SELECT p.kind, count(*)::bigint AS n,
       now() - make_interval(secs => %(older_than_s)s::double precision) AS cutoff
  FROM sr_publications AS p
  JOIN sr_runs AS r ON r.run_id = p.run_id
 WHERE p.published_at IS NOT NULL
   AND p.published_at < now() - make_interval(secs => %(older_than_s)s::double precision)
   AND (
         (p.kind IN ('READY', 'SUPERSEDE', 'REVOKED') AND p.facts_view_hash IS DISTINCT FROM r.facts_view_hash)
      OR (p.kind = 'STATUS' AND r.status IN ('READY', 'FAILED', 'QUARANTINED', 'REJECTED'))
   )
 GROUP BY p.kind;

-- name: prune_delete
-- `sr index prune`: delete one batch (its own transaction) of the rows prune_count counts;
-- rows locked by someone else are skipped and left for the next prune.
WITH doomed AS (
    SELECT p.id
      FROM sr_publications AS p
      JOIN sr_runs AS r ON r.run_id = p.run_id
     WHERE p.published_at IS NOT NULL
       AND p.published_at < now() - make_interval(secs => %(older_than_s)s::double precision)
       AND (
             (p.kind IN ('READY', 'SUPERSEDE', 'REVOKED') AND p.facts_view_hash IS DISTINCT FROM r.facts_view_hash)
          OR (p.kind = 'STATUS' AND r.status IN ('READY', 'FAILED', 'QUARANTINED', 'REJECTED'))
       )
     ORDER BY p.id
     LIMIT %(limit)s
       FOR UPDATE OF p SKIP LOCKED
)
DELETE FROM sr_publications AS d
 USING doomed
 WHERE d.id = doomed.id
RETURNING d.kind;
