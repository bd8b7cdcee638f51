-- A ticket keeps its MonitoredCluster's labels as they were when it was first recorded (domain.tickets,
-- ``cluster_labels``): notification routes with a clusterSelector match them (domain.receivers). They are written
-- with the ticket's insert, in the same transaction as its first transition, and never updated: every notice of one
-- ticket, and its Alertmanager alert, is routed alike, whatever a restart, another replica or a relabelling does
-- meanwhile. Tickets recorded before this migration have none ('{}'), as an unlabelled cluster: a selector that only
-- excludes (NotIn, DoesNotExist) matches them, one that requires a label does not.
ALTER TABLE tickets ADD COLUMN cluster_labels jsonb NOT NULL DEFAULT '{}'::jsonb;

-- sync_cluster_cas as in 0006, its insert writing cluster_labels.
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
                                     flap_changes, cluster_labels)
                VALUES (p_cluster_uid, t ->> 'namespace', t ->> 'cluster_name', t ->> 'invariant', t ->> 'store',
                        t ->> 'state', t ->> 'severity', t ->> 'message', (t ->> 'occurrences')::int,
                        (t ->> 'first_seen')::timestamptz, (t ->> 'last_seen')::timestamptz,
                        (t ->> 'violating_since')::timestamptz, (t ->> 'clearing_since')::timestamptz,
                        (t ->> 'opened_at')::timestamptz, (t ->> 'resolved_at')::timestamptz,
                        (t ->> 'hold')::boolean, (t ->> 'acknowledged')::boolean, t ->> 'note', t -> 'snapshot', 1,
                        COALESCE((t ->> 'flapping')::boolean, false),
                        ARRAY(SELECT jsonb_array_elements_text(COALESCE(t -> 'flap_changes', '[]'::jsonb)))::timestamptz[],
                        COALESCE(t -> 'cluster_labels', '{}'::jsonb))
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
