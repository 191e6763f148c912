-- 0003_engine_requests: the outbox also carries engine requests (contract §8).
--
-- One ENGINE_REQUEST row per engine attempt, keyed '<run_id>:engine:<attempt_id>' (attempt_id
-- 32 lowercase hex); like a STATUS row it names no facts view and no event type. The unique
-- pub_key makes a re-sent request the same row, so its bytes never change.
-- Never edit this file once released: add 0004_... instead.

ALTER TABLE sr_publications DROP CONSTRAINT sr_publications_kind_check;
ALTER TABLE sr_publications ADD CONSTRAINT sr_publications_kind_check
    CHECK (kind IN ('READY', 'SUPERSEDE', 'STATUS', 'ENGINE_REQUEST'));

ALTER TABLE sr_publications DROP CONSTRAINT sr_publications_shape;
ALTER TABLE sr_publications ADD CONSTRAINT sr_publications_shape CHECK (
    (kind = 'STATUS'
        AND facts_view_hash IS NULL AND event_type IS NULL
        AND starts_with(pub_key, run_id || ':status:'))
    OR (kind IN ('READY', 'SUPERSEDE')
        AND facts_view_hash IS NOT NULL AND event_type = kind
        AND pub_key = run_id || ':' || facts_view_hash || ':' || event_type)
    OR (kind = 'ENGINE_REQUEST'
        AND facts_view_hash IS NULL AND event_type IS NULL
        AND pub_key ~ ('^' || run_id || ':engine:[0-9a-f]{32}$'))
);
