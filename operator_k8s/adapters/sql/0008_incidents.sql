-- One incident per fault (domain.incidents): a ticket that another ticket's cause explains — PD's low-space count
-- under the store's diskUsage ticket, PD's disconnected count under its storesReady ticket — names that ticket as its
-- cause, and its notifications are carried by the cause's. The stores a cluster-level PD ticket counts (read from
-- PD's series when its evidence is gathered) are kept with it, so every cycle can decide the link again, in whatever
-- order the tickets opened. Both are derived facts, written idempotently outside the ticket's version.
ALTER TABLE tickets ADD COLUMN cause_id bigint REFERENCES tickets (id) ON DELETE SET NULL;
ALTER TABLE tickets ADD COLUMN counted_stores jsonb;
