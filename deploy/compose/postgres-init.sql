-- The databases az-agent backs up, with a little content so a failover has something to move.
CREATE DATABASE configdb;
CREATE DATABASE orchestratordb;
\connect configdb
CREATE TABLE dashboards (id serial PRIMARY KEY, title text NOT NULL,
                         created timestamptz NOT NULL DEFAULT now());
INSERT INTO dashboards (title) SELECT 'dashboard ' || g FROM generate_series(1, 50) g;
