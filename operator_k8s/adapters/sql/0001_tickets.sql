-- Tickets and their history. Postgres is the system of record; Ticket resources are a projection of it.
CREATE TABLE tickets (
    id              bigserial PRIMARY KEY,
    cluster_uid     text        NOT NULL,
    namespace       text        NOT NULL,
    cluster_name    text        NOT NULL,
    invariant       text        NOT NULL,
    store           text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('pending', 'open', 'acknowledged', 'diagnosed', 'resolved')),
    severity        text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message         text        NOT NULL,
    occurrences     integer     NOT NULL DEFAULT 0,
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    violating_since timestamptz,
    clearing_since  timestamptz,
    opened_at       timestamptz,
    resolved_at     timestamptz,
    hold            boolean     NOT NULL DEFAULT false,
    acknowledged    boolean     NOT NULL DEFAULT false,
    snapshot        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- At most one unresolved ticket per (cluster, invariant, store), even if two operators race.
CREATE UNIQUE INDEX tickets_one_unresolved ON tickets (cluster_uid, invariant, store) WHERE state <> 'resolved';

CREATE TABLE ticket_events (
    id         bigserial PRIMARY KEY,
    ticket_id  bigint      NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL,
    kind       text        NOT NULL,
    from_state text,
    to_state   text,
    actor      text        NOT NULL,
    reason     text        NOT NULL
);
