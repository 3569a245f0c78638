-- Once, as a PostgreSQL superuser, for every host sharing the database:
--   psql -h db.example.internal -U postgres -v role=paynotify -v db=paynotify \
--        -v password="$(cat /etc/paynotify/credentials/db_password)" -f postgres-setup.sql
\set ON_ERROR_STOP on
CREATE ROLE :"role" LOGIN PASSWORD :'password' CONNECTION LIMIT 64;
CREATE DATABASE :"db" TEMPLATE template0 ENCODING 'UTF8';
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
\connect :"db"
REVOKE ALL ON SCHEMA public FROM PUBLIC;
-- The hosts create and migrate their tables in this schema (the URL's ?schema=paynotify).
CREATE SCHEMA paynotify AUTHORIZATION :"role";
