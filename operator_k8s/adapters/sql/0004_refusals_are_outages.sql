-- A write is dropped only when it can never succeed: 0003 caught every error per row, so a Postgres refusing writes
-- because of its state (read-only during a switchover, a standby behind the DSN, an admin shutdown) had every write
-- reported as rejected and dropped, human edits included. Now only data and constraint errors are caught per row;
-- any other error aborts the call and the operator keeps the writes for the next attempt.
CREATE OR REPLACE FUNCTION sync_cluster_cas(p_cluster_uid text, p_writes jsonb, p_horizon timestamptz) RETURNS jsonb
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
            SELECT COALESCE(jsonb_agg(to_jsonb(tk) ORDER BY tk.id), '[]'::jsonb)
              FROM tickets tk
             WHERE tk.cluster_uid = p_cluster_uid AND (tk.state <> 'resolved' OR tk.resolved_at >= p_horizon)));
END;
$$;
