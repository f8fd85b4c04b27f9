-- Run once by the postgres:15 image, as the superuser, when its data volume is empty
-- (/docker-entrypoint-initdb.d). The same roles and databases as infra/local/stack.sh.
-- Funnel's own tables are not created here: the services apply the migrations in sql/.
CREATE ROLE funnel LOGIN CREATEDB PASSWORD 'funnel';
CREATE DATABASE funnel OWNER funnel;

-- Apicurio Registry's storage; the registry creates its tables on first start.
CREATE ROLE apicurio LOGIN PASSWORD 'apicurio';
CREATE DATABASE apicurio OWNER apicurio;
