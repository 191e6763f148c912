-- 0001_init: the run index and the publication outbox (contract §5, §6).
--
-- Postgres holds a *rebuildable* index: S3 (plan, ledger, facts views) is the truth.
-- Applied by worker.adapters.postgres.migrate() inside one transaction; never edit this
-- file once released (its sha256 is recorded in sr_schema_migrations): add 0002_... instead.

CREATE TABLE sr_runs (
    run_id              text        PRIMARY KEY
                                    CONSTRAINT sr_runs_run_id_format CHECK (run_id ~ '^[0-9a-f]{32}$'),
    run_equivalence_key text        NOT NULL
                                    CONSTRAINT sr_runs_equivalence_key_uniq UNIQUE
                                    CONSTRAINT sr_runs_equivalence_key_format
                                        CHECK (run_equivalence_key ~ '^[0-9a-f]{64}$'),
    intent_fingerprint  text        NOT NULL
                                    CONSTRAINT sr_runs_fingerprint_format
                                        CHECK (intent_fingerprint ~ '^[0-9a-f]{64}$'),
    tenant_id           text        NOT NULL,
    namespace           text        NOT NULL,
    scenario_id         text        NOT NULL,
    status              text        NOT NULL
                                    CONSTRAINT sr_runs_status_check CHECK (status IN (
                                        'ADMITTED', 'WAITING', 'READY', 'FAILED', 'QUARANTINED', 'REJECTED')),
    reason_code         text,
    plan_hash           text        CONSTRAINT sr_runs_plan_hash_format CHECK (plan_hash ~ '^[0-9a-f]{64}$'),
    facts_view_hash     text        CONSTRAINT sr_runs_facts_view_hash_format
                                        CHECK (facts_view_hash ~ '^[0-9a-f]{64}$'),
    -- Head of the S3 ledger: seq of the newest entry (-1 = no entry yet) and its sha256.
    ledger_seq          integer     NOT NULL DEFAULT -1 CONSTRAINT sr_runs_ledger_seq_range CHECK (ledger_seq >= -1),
    ledger_head_hash    text        CONSTRAINT sr_runs_ledger_head_hash_format
                                        CHECK (ledger_head_hash ~ '^[0-9a-f]{64}$'),
    -- Fencing token: bumped at every lease acquisition; every state-advancing write checks it.
    lease_epoch         bigint      NOT NULL DEFAULT 0 CONSTRAINT sr_runs_lease_epoch_range CHECK (lease_epoch >= 0),
    deadline            timestamptz,
    next_check_at       timestamptz,
    -- The Avro-shaped intent dict (timestamps as epoch millis), for status and rebuild.
    intent              jsonb       NOT NULL CONSTRAINT sr_runs_intent_object CHECK (jsonb_typeof(intent) = 'object'),
    evidence_root       text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sr_runs_ledger_head_consistent CHECK ((ledger_seq = -1) = (ledger_head_hash IS NULL))
);

-- The re-check sweep: WAITING runs whose next check or deadline is due.
CREATE INDEX sr_runs_status_next_check_idx ON sr_runs (status, next_check_at);
CREATE INDEX sr_runs_deadline_idx ON sr_runs (deadline) WHERE deadline IS NOT NULL;
-- `sr runs --tenant T`, newest first.
CREATE INDEX sr_runs_tenant_created_idx ON sr_runs (tenant_id, created_at);
CREATE INDEX sr_runs_created_idx ON sr_runs (created_at);

-- The outbox: the exact bytes of every event SR will ever publish, written in the same
-- statement as the (epoch-checked) index update, produced afterwards, then marked published.
CREATE TABLE sr_publications (
    id              bigserial   PRIMARY KEY,
    run_id          text        NOT NULL REFERENCES sr_runs (run_id),
    -- READY/SUPERSEDE: '<run_id>:<facts_view_hash>:<event_type>';
    -- STATUS:          '<run_id>:status:<ledger_seq>:<status>'.
    pub_key         text        NOT NULL CONSTRAINT sr_publications_pub_key_uniq UNIQUE,
    kind            text        NOT NULL
                                CONSTRAINT sr_publications_kind_check CHECK (kind IN ('READY', 'SUPERSEDE', 'STATUS')),
    facts_view_hash text        CONSTRAINT sr_publications_facts_view_hash_format
                                    CHECK (facts_view_hash ~ '^[0-9a-f]{64}$'),
    event_type      text,
    topic           text        NOT NULL CONSTRAINT sr_publications_topic_nonempty CHECK (topic <> ''),
    msg_key         bytea,
    payload         bytea       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb
                                CONSTRAINT sr_publications_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    kafka_partition integer,
    kafka_offset    bigint,
    CONSTRAINT sr_publications_shape CHECK (
        (kind = 'STATUS'
            AND facts_view_hash IS NULL AND event_type IS NULL
            AND starts_with(pub_key, run_id || ':status:'))
        OR (kind IN ('READY', 'SUPERSEDE')
            AND facts_view_hash IS NOT NULL AND event_type = kind
            AND pub_key = run_id || ':' || facts_view_hash || ':' || event_type)
    ),
    CONSTRAINT sr_publications_published_consistent CHECK (
        published_at IS NOT NULL OR (kafka_partition IS NULL AND kafka_offset IS NULL)
    )
);

-- Exactly one READY / SUPERSEDE per (run_id, facts_view_hash, event_type) (contract §6).
CREATE UNIQUE INDEX sr_publications_fact_uniq
    ON sr_publications (run_id, facts_view_hash, event_type)
    WHERE facts_view_hash IS NOT NULL;
CREATE INDEX sr_publications_run_idx ON sr_publications (run_id, id);
-- The outbox sweep after a crash.
CREATE INDEX sr_publications_unpublished_idx ON sr_publications (id) WHERE published_at IS NULL;
