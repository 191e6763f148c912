-- Operator actions (replay, re-emit, index rebuild...): every attempt is recorded, allowed or
-- refused, so an audit can answer "who re-emitted what, and who was turned away".
CREATE TABLE sr_operator_actions (
    id        bigserial   PRIMARY KEY,
    operator  text        NOT NULL,
    action    text        NOT NULL,
    allowed   boolean     NOT NULL,
    detail    jsonb       NOT NULL DEFAULT '{}'::jsonb
                          CONSTRAINT sr_operator_actions_detail_object CHECK (jsonb_typeof(detail) = 'object'),
    at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX sr_operator_actions_at_idx ON sr_operator_actions (at);
