-- Rule sets per tenant, with versions unique across tenants, so `rule_set_version` alone names
-- the rules that classified an event. A tenant without a rule set of its own is classified
-- with the `default` tenant's active set (and its events record that set's version).
CREATE SEQUENCE funnel_rule_set_versions OWNED BY funnel_rule_sets.version;
SELECT setval('funnel_rule_set_versions', (SELECT COALESCE(max(version), 0) + 1 FROM funnel_rule_sets), false);
ALTER TABLE funnel_rule_sets ALTER COLUMN version SET DEFAULT nextval('funnel_rule_set_versions');
ALTER TABLE funnel_rule_sets ADD CONSTRAINT funnel_rule_sets_version_unique UNIQUE (version);

-- The active set of every tenant that has one: its highest version.
CREATE VIEW funnel_active_rule_sets AS
SELECT DISTINCT ON (tenant) tenant, version, rules, created_at, created_by
  FROM funnel_rule_sets
 ORDER BY tenant, version DESC;
