-- 0004_revocation_and_roles: REVOKED facts in the outbox, and the database role of every
-- operator action (contract §10, §11).
--
-- A REVOKED fact is keyed like READY / SUPERSEDE ('<run_id>:<facts_view_hash>:REVOKED'): one
-- row per revoked facts view, so a re-sent revocation is the same row and the same bytes.
-- sr_operator_actions.db_role is the Postgres role (session_user) that wrote the row: the
-- operator name is self-declared, the role is what the database authenticated. Rows written
-- before this migration have NULL (unknown).
-- Never edit this file once released: add 0005_... instead.

ALTER TABLE sr_publications DROP CONSTRAINT sr_publications_kind_check;
ALTER TABLE sr_publications ADD CONSTRAINT sr_publications_kind_check
    CHECK (kind IN ('READY', 'SUPERSEDE', 'REVOKED', 'STATUS', 'ENGINE_REQUEST'));

ALTER TABLE sr_publications DROP CONSTRAINT sr_publications_shape;
ALTER TABLE sr_publications ADD CONSTRAINT sr_publications_shape CHECK (
    (kind = 'STATUS'
        AND facts_view_hash IS NULL AND event_type IS NULL
        AND starts_with(pub_key, run_id || ':status:'))
    OR (kind IN ('READY', 'SUPERSEDE', 'REVOKED')
        AND facts_view_hash IS NOT NULL AND event_type = kind
        AND pub_key = run_id || ':' || facts_view_hash || ':' || event_type)
    OR (kind = 'ENGINE_REQUEST'
        AND facts_view_hash IS NULL AND event_type IS NULL
        AND pub_key ~ ('^' || run_id || ':engine:[0-9a-f]{32}$'))
);

ALTER TABLE sr_operator_actions ADD COLUMN db_role text;
ALTER TABLE sr_operator_actions ALTER COLUMN db_role SET DEFAULT session_user;
