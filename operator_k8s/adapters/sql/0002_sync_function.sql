-- One round trip per cycle: sync_cluster applies a cycle's writes in one transaction and returns the cluster's
-- current tickets. Also: history lookups by ticket, recently resolved lookups by cluster.
CREATE INDEX ticket_events_by_ticket ON ticket_events (ticket_id, at);
CREATE INDEX tickets_by_cluster_resolved ON tickets (cluster_uid, resolved_at);

CREATE FUNCTION sync_cluster(p_cluster_uid text, p_writes jsonb, p_horizon timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    w     jsonb;
    t     jsonb;
    v_id  bigint;
    e     jsonb;
BEGIN
    FOR w IN SELECT value FROM jsonb_array_elements(p_writes) LOOP
        t := w -> 'ticket';
        v_id := (t ->> 'id')::bigint;
        IF v_id IS NULL THEN
            -- A ticket decided while its row id was unknown (new, or written while Postgres was down).
            SELECT id INTO v_id FROM tickets
             WHERE cluster_uid = p_cluster_uid AND invariant = t ->> 'invariant' AND store = t ->> 'store'
               AND state <> 'resolved'
             FOR UPDATE;
        END IF;
        IF (w ->> 'delete')::boolean THEN
            IF v_id IS NOT NULL THEN
                DELETE FROM tickets WHERE id = v_id AND state = 'pending';
            END IF;
            CONTINUE;
        END IF;
        IF v_id IS NULL THEN
            INSERT INTO tickets AS old (cluster_uid, namespace, cluster_name, invariant, store, state, severity, message,
                                        occurrences, first_seen, last_seen, violating_since, clearing_since, opened_at,
                                        resolved_at, hold, acknowledged, snapshot)
            VALUES (p_cluster_uid, t ->> 'namespace', t ->> 'cluster_name', t ->> 'invariant', t ->> 'store',
                    t ->> 'state', t ->> 'severity', t ->> 'message', (t ->> 'occurrences')::int,
                    (t ->> 'first_seen')::timestamptz, (t ->> 'last_seen')::timestamptz,
                    (t ->> 'violating_since')::timestamptz, (t ->> 'clearing_since')::timestamptz,
                    (t ->> 'opened_at')::timestamptz, (t ->> 'resolved_at')::timestamptz,
                    (t ->> 'hold')::boolean, (t ->> 'acknowledged')::boolean, t -> 'snapshot')
            ON CONFLICT (cluster_uid, invariant, store) WHERE state <> 'resolved' DO UPDATE SET
                state = EXCLUDED.state, severity = EXCLUDED.severity, message = EXCLUDED.message,
                occurrences = GREATEST(old.occurrences, EXCLUDED.occurrences),
                last_seen = GREATEST(old.last_seen, EXCLUDED.last_seen),
                violating_since = EXCLUDED.violating_since, clearing_since = EXCLUDED.clearing_since,
                opened_at = COALESCE(old.opened_at, EXCLUDED.opened_at), resolved_at = EXCLUDED.resolved_at,
                snapshot = EXCLUDED.snapshot, updated_at = now()
            RETURNING id INTO v_id;
        ELSE
            BEGIN
                UPDATE tickets SET
                    state = t ->> 'state', severity = t ->> 'severity', message = t ->> 'message',
                    occurrences = (t ->> 'occurrences')::int, last_seen = (t ->> 'last_seen')::timestamptz,
                    violating_since = (t ->> 'violating_since')::timestamptz,
                    clearing_since = (t ->> 'clearing_since')::timestamptz,
                    opened_at = (t ->> 'opened_at')::timestamptz, resolved_at = (t ->> 'resolved_at')::timestamptz,
                    hold = (t ->> 'hold')::boolean, acknowledged = (t ->> 'acknowledged')::boolean,
                    snapshot = t -> 'snapshot', updated_at = now()
                WHERE id = v_id;
            EXCEPTION WHEN unique_violation THEN
                -- Reviving a resolved ticket while another unresolved one holds the key: the other one wins.
                CONTINUE;
            END;
        END IF;
        FOR e IN SELECT value FROM jsonb_array_elements(COALESCE(w -> 'events', '[]'::jsonb)) LOOP
            INSERT INTO ticket_events (ticket_id, at, kind, from_state, to_state, actor, reason)
            VALUES (v_id, (e ->> 'at')::timestamptz, e ->> 'kind', e ->> 'from_state', e ->> 'to_state',
                    e ->> 'actor', e ->> 'reason');
        END LOOP;
    END LOOP;
    RETURN (
        SELECT COALESCE(jsonb_agg(to_jsonb(tk) ORDER BY tk.id), '[]'::jsonb)
          FROM tickets tk
         WHERE tk.cluster_uid = p_cluster_uid AND (tk.state <> 'resolved' OR tk.resolved_at >= p_horizon)
    );
END;
$$;
