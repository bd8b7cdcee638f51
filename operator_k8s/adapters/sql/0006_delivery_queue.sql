-- Flapping: a ticket whose invariant changed state too often over its recent checks (domain.tickets, ``flapping``).
-- The moments of its last state changes are kept with it, so every replica and a restart judge alike.
ALTER TABLE tickets ADD COLUMN flapping boolean NOT NULL DEFAULT false;
ALTER TABLE tickets ADD COLUMN flap_changes timestamptz[] NOT NULL DEFAULT '{}';

-- Notifications. The delivery queue: what the people on call are told of a ticket's transitions, written in the same transaction as
-- the transition (a notice per event that carries one), so a crash between the commit and the send loses nothing.
-- A notice is routed to receivers later (one delivery row per receiver); a delivery is claimed with a lease (two
-- replicas never send one row at once), retried with backoff, and ends delivered, dead (with the reason) or
-- suppressed (a maintenance window, a flapping ticket). Deliveries are updated in place on every attempt: a
-- fillfactor below 100 keeps those updates on the same page (HOT), so a dead receiver's retries do not bloat the table,
-- and finished rows are deleted after the retention period.
-- Evidence and diagnosis: what Kubernetes showed about a store when its ticket opened or escalated, the probable
-- causes the rules found in it (domain.diagnosis), and one line of each for the Ticket. The latest gathering only.
CREATE TABLE ticket_evidence (
    ticket_id   bigint      PRIMARY KEY REFERENCES tickets (id) ON DELETE CASCADE,
    gathered_at timestamptz NOT NULL,
    evidence    jsonb       NOT NULL,
    findings    jsonb       NOT NULL,
    summary     text        NOT NULL,
    diagnosis   text
);

CREATE TABLE notices (
    id              bigserial PRIMARY KEY,
    ticket_id       bigint      NOT NULL REFERENCES tickets (id) ON DELETE CASCADE,
    event_id        bigint      NOT NULL REFERENCES ticket_events (id) ON DELETE CASCADE,
    idempotency_key text        NOT NULL UNIQUE,
    at              timestamptz NOT NULL,
    kind            text        NOT NULL,
    body            jsonb       NOT NULL,
    routed_at       timestamptz
);
CREATE INDEX notices_unrouted ON notices (id) WHERE routed_at IS NULL;
CREATE INDEX notices_by_time ON notices (at);
CREATE INDEX notices_by_ticket ON notices (ticket_id, id);

CREATE TABLE deliveries (
    id            bigserial PRIMARY KEY,
    notice_id     bigint      NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    receiver      text        NOT NULL,
    state         text        NOT NULL CHECK (state IN ('pending', 'delivered', 'dead', 'suppressed')),
    attempts      integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    due_at        timestamptz NOT NULL,
    deferred_by   text,
    claimed_by    text,
    claimed_until timestamptz,
    result        text,
    finished_at   timestamptz,
    UNIQUE (notice_id, receiver)
) WITH (fillfactor = 70);
CREATE INDEX deliveries_due ON deliveries (receiver, due_at) WHERE state = 'pending';
CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE state <> 'pending';

-- A receiver that answered 410 Gone is disabled here (for every replica, across restarts) until its URL changes.
CREATE TABLE disabled_receivers (
    receiver    text        NOT NULL,
    url_digest  text        NOT NULL,
    disabled_at timestamptz NOT NULL,
    reason      text        NOT NULL,
    PRIMARY KEY (receiver, url_digest)
);

CREATE OR REPLACE FUNCTION sync_cluster_cas(p_cluster_uid text, p_writes jsonb, p_horizon timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    w          jsonb;
    t          jsonb;
    v_id       bigint;
    v_version  bigint;
    v_expected bigint;
    v_event    bigint;
    e          record;
    i          integer := -1;
    conflicts  jsonb := '[]'::jsonb;
    rejected   jsonb := '[]'::jsonb;
BEGIN
    FOR w IN SELECT value FROM jsonb_array_elements(p_writes) LOOP
        i := i + 1;
        t := w -> 'ticket';
        v_expected := (w ->> 'expected')::bigint;
        v_id := NULL;
        BEGIN
            IF v_expected IS NULL THEN
                IF (w ->> 'delete')::boolean THEN
                    CONTINUE;
                END IF;
                INSERT INTO tickets (cluster_uid, namespace, cluster_name, invariant, store, state, severity, message,
                                     occurrences, first_seen, last_seen, violating_since, clearing_since, opened_at,
                                     resolved_at, hold, acknowledged, note, snapshot, version, flapping,
                                     flap_changes)
                VALUES (p_cluster_uid, t ->> 'namespace', t ->> 'cluster_name', t ->> 'invariant', t ->> 'store',
                        t ->> 'state', t ->> 'severity', t ->> 'message', (t ->> 'occurrences')::int,
                        (t ->> 'first_seen')::timestamptz, (t ->> 'last_seen')::timestamptz,
                        (t ->> 'violating_since')::timestamptz, (t ->> 'clearing_since')::timestamptz,
                        (t ->> 'opened_at')::timestamptz, (t ->> 'resolved_at')::timestamptz,
                        (t ->> 'hold')::boolean, (t ->> 'acknowledged')::boolean, t ->> 'note', t -> 'snapshot', 1,
                        COALESCE((t ->> 'flapping')::boolean, false),
                        ARRAY(SELECT jsonb_array_elements_text(COALESCE(t -> 'flap_changes', '[]'::jsonb)))::timestamptz[])
                ON CONFLICT (cluster_uid, invariant, store) WHERE state <> 'resolved' DO NOTHING
                RETURNING id, version INTO v_id, v_version;
            ELSIF (w ->> 'delete')::boolean THEN
                DELETE FROM tickets
                 WHERE id = (t ->> 'id')::bigint AND cluster_uid = p_cluster_uid AND version = v_expected
                       AND state = 'pending'
                RETURNING id INTO v_id;
                IF v_id IS NULL THEN
                    conflicts := conflicts || to_jsonb(i);
                END IF;
                CONTINUE;
            ELSE
                UPDATE tickets SET
                    state = t ->> 'state', severity = t ->> 'severity', message = t ->> 'message',
                    occurrences = (t ->> 'occurrences')::int, last_seen = (t ->> 'last_seen')::timestamptz,
                    violating_since = (t ->> 'violating_since')::timestamptz,
                    clearing_since = (t ->> 'clearing_since')::timestamptz,
                    opened_at = (t ->> 'opened_at')::timestamptz, resolved_at = (t ->> 'resolved_at')::timestamptz,
                    hold = (t ->> 'hold')::boolean, acknowledged = (t ->> 'acknowledged')::boolean,
                    flapping = COALESCE((t ->> 'flapping')::boolean, false),
                    flap_changes = ARRAY(SELECT jsonb_array_elements_text(
                        COALESCE(t -> 'flap_changes', '[]'::jsonb)))::timestamptz[],
                    note = t ->> 'note', snapshot = t -> 'snapshot', version = version + 1, updated_at = now()
                WHERE id = (t ->> 'id')::bigint AND cluster_uid = p_cluster_uid AND version = v_expected
                RETURNING id, version INTO v_id, v_version;
            END IF;
            IF v_id IS NULL THEN
                conflicts := conflicts || to_jsonb(i);
                CONTINUE;
            END IF;
            FOR e IN SELECT value, ordinality FROM jsonb_array_elements(COALESCE(w -> 'events', '[]'::jsonb))
                     WITH ORDINALITY LOOP
                INSERT INTO ticket_events (ticket_id, at, kind, from_state, to_state, actor, reason, ticket_version,
                                           ordinal)
                VALUES (v_id, (e.value ->> 'at')::timestamptz, e.value ->> 'kind', e.value ->> 'from_state',
                        e.value ->> 'to_state', e.value ->> 'actor', e.value ->> 'reason', v_version, e.ordinality)
                ON CONFLICT DO NOTHING
                RETURNING id INTO v_event;
                -- Queued with its event, once: a write sent again after a lost answer inserts neither.
                IF v_event IS NOT NULL AND jsonb_typeof(e.value -> 'notice') = 'object' THEN
                    INSERT INTO notices (ticket_id, event_id, idempotency_key, at, kind, body)
                    VALUES (v_id, v_event, format('tkt_%s_%s_%s', v_id, v_version, e.ordinality),
                            (e.value ->> 'at')::timestamptz, e.value -> 'notice' ->> 'kind', e.value -> 'notice');
                END IF;
            END LOOP;
        EXCEPTION
            WHEN unique_violation THEN
                -- Reviving a resolved ticket while another unresolved one holds the key: the other one wins.
                conflicts := conflicts || to_jsonb(i);
            WHEN data_exception OR integrity_constraint_violation THEN
                -- The closed list of writes that can never succeed (classes 22 and 23, as
                -- ticket_store.DROPPABLE_SQLSTATE_CLASSES): this row is dropped and reported. Anything else
                -- (read-only, a switchover, an admin shutdown, too many connections, a serialization failure) aborts
                -- the whole call, so the writes stay queued in the operator and are sent again.
                rejected := rejected || jsonb_build_array(
                    format('%s/%s: %s (%s)', t ->> 'invariant', t ->> 'store', SQLERRM, SQLSTATE));
        END;
    END LOOP;
    RETURN jsonb_build_object(
        'conflicts', conflicts,
        'rejected', rejected,
        'tickets', (
            -- Each ticket with its evidence's and diagnosis's one line and its last delivery, which the Ticket shows.
            SELECT COALESCE(jsonb_agg(to_jsonb(tk) || jsonb_build_object(
                   'evidence_summary', (SELECT summary FROM ticket_evidence WHERE ticket_id = tk.id),
                   'diagnosis', (SELECT diagnosis FROM ticket_evidence WHERE ticket_id = tk.id),
                   'last_notification', (
                       SELECT format('%s to %s: %s%s at %s', n.kind, d.receiver, d.state,
                                     COALESCE(' (' || left(d.result, 200) || ')', ''),
                                     to_char(COALESCE(d.finished_at, d.created_at) AT TIME ZONE 'UTC',
                                             'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                         FROM notices n JOIN deliveries d ON d.notice_id = n.id
                        WHERE n.ticket_id = tk.id AND d.receiver <> '(no route)'  -- notices.NO_ROUTE: nobody told
                        ORDER BY COALESCE(d.finished_at, d.created_at) DESC, d.id DESC LIMIT 1))
                   ORDER BY tk.id), '[]'::jsonb)
              FROM tickets tk
             WHERE tk.cluster_uid = p_cluster_uid AND (tk.state <> 'resolved' OR tk.resolved_at >= p_horizon)));
END;
$$;
