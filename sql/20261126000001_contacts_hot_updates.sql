-- Every sink upsert sets updated_at, so an index on it made every row update a non-HOT update
-- touching all three indexes of funnel_contacts: about a tenth of the sink's PostgreSQL time
-- (docs/benchmarks.md). Readers of "what changed since" scan the table (a million rows in well
-- under a second) or follow funnel_stage_events by occurred_at. Free space on each page lets
-- updates that change no indexed column stay on their page (HOT).
DROP INDEX IF EXISTS funnel_contacts_updated_at;
ALTER TABLE funnel_contacts SET (fillfactor = 90);
