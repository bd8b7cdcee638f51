-- Postgres as the arbiter between writers: every row carries a version, and every write is a compare-and-set on
-- the version it was decided from. Human intent (hold, acknowledged, note) lives here too.
ALTER TABLE tickets ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE tickets ADD COLUMN note text;
-- An event is keyed by the ticket version its write produced and its place in that write: a retried write can
-- never append its history twice.
ALTER TABLE ticket_events ADD COLUMN ticket_version bigint;
ALTER TABLE ticket_events ADD COLUMN ordinal integer;
CREATE UNIQUE INDEX ticket_events_once ON ticket_events (ticket_id, ticket_version, ordinal)
    WHERE ticket_version IS NOT NULL;

DROP FUNCTION sync_cluster(text, jsonb, timestamptz);

-- Each write: {"expected": <version or null for a new ticket>, "delete": bool, "ticket": {...}, "events": [...]}.
-- A write whose expected version is no longer current is a conflict; a write Postgres refuses (bad value, constraint)
-- is rejected with its reason. Neither stops the writes after it. Returns {"tickets", "conflicts" (the positions of the
-- writes that lost), "rejected"}.
CREATE FUNCTION sync_cluster_cas(p_cluster_uid text, p_writes jsonb, p_horizon timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    w          jsonb;
    t          jsonb;
    v_id       bigint;
    v_version  bigint;
    v_expected bigint;
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
                                     resolved_at, hold, acknowledged, note, snapshot, version)
                VALUES (p_cluster_uid, t ->> 'namespace', t ->> 'cluster_name', t ->> 'invariant', t ->> 'store',
                        t ->> 'state', t ->> 'severity', t ->> 'message', (t ->> 'occurrences')::int,
                        (t ->> 'first_seen')::timestamptz, (t ->> 'last_seen')::timestamptz,
                        (t ->> 'violating_since')::timestamptz, (t ->> 'clearing_since')::timestamptz,
                        (t ->> 'opened_at')::timestamptz, (t ->> 'resolved_at')::timestamptz,
                        (t ->> 'hold')::boolean, (t ->> 'acknowledged')::boolean, t ->> 'note', t -> 'snapshot', 1)
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
                ON CONFLICT DO NOTHING;
            END LOOP;
        EXCEPTION
            WHEN unique_violation THEN
                -- Reviving a resolved ticket while another unresolved one holds the key: the other one wins.
                conflicts := conflicts || to_jsonb(i);
            WHEN OTHERS THEN
                rejected := rejected || jsonb_build_array(
                    format('%s/%s: %s (%s)', t ->> 'invariant', t ->> 'store', SQLERRM, SQLSTATE));
        END;
    END LOOP;
    RETURN jsonb_build_object(
        'conflicts', conflicts,
        'rejected', rejected,
        'tickets', (
            SELECT COALESCE(jsonb_agg(to_jsonb(tk) ORDER BY tk.id), '[]'::jsonb)
              FROM tickets tk
             WHERE tk.cluster_uid = p_cluster_uid AND (tk.state <> 'resolved' OR tk.resolved_at >= p_horizon)));
END;
$$;
