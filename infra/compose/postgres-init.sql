-- Run once by the postgres:15 image, as the superuser, when its data volume is empty
-- (/docker-entrypoint-initdb.d). The same roles and databases as infra/local/stack.sh.
-- Funnel's own tables are not created here: the compose service `migrate` applies the
-- migrations of sql/ as the owner before the services start.
CREATE ROLE funnel LOGIN CREATEDB PASSWORD 'funnel';
CREATE DATABASE funnel OWNER funnel;

-- Least privilege (docs/security.md): the group roles the migrations grant to, and a LOGIN
-- role in each for the services and for an analyst (bound to tenants in
-- funnel_analyst_tenants). Change the passwords for anything but a laptop.
CREATE ROLE funnel_api NOLOGIN;
CREATE ROLE funnel_processor NOLOGIN;
CREATE ROLE funnel_analyst NOLOGIN;
CREATE ROLE funnel_ingest_svc LOGIN PASSWORD 'funnel-ingest' IN ROLE funnel_api;
CREATE ROLE funnel_processor_svc LOGIN PASSWORD 'funnel-processor' IN ROLE funnel_processor;
CREATE ROLE funnel_analyst_default LOGIN PASSWORD 'funnel-analyst' IN ROLE funnel_analyst;

-- Apicurio Registry's storage; the registry creates its tables on first start.
CREATE ROLE apicurio LOGIN PASSWORD 'apicurio';
CREATE DATABASE apicurio OWNER apicurio;
