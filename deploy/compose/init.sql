-- Demo tokens for docker compose. Runs once, when the database volume is
-- first created (docker-entrypoint-initdb.d).
--
-- The table is the one `tollgate check` and `tollgate token ...` create
-- (docs/configuration.md); `tollgate check` in the `tollgate-check` service then adds the
-- trigger that announces changes to running gateways.
--
-- DEMO ONLY: these secrets are public. Store the SHA-256 of a secret, never
-- the secret: `printf %s SECRET | sha256sum`, or use `tollgate token create`.
--   demo-admin    demo-admin-secret    scope:all
--   demo-agent    demo-agent-secret    scope:agent-ui
--   demo-grafana  demo-grafana-secret  scope:grafana-plugin, read-only

CREATE TABLE IF NOT EXISTS tollgate_tokens (
    id            text PRIMARY KEY,
    sha256        text UNIQUE NOT NULL,
    scopes        text NOT NULL,
    read_only     boolean NOT NULL DEFAULT false,
    expires_at    timestamptz,
    allowed_ips   text,
    rate_requests integer,
    rate_per_ms   integer,
    rate_burst    integer,
    disabled      boolean NOT NULL DEFAULT false,
    description   text,
    created_at    timestamptz,
    updated_at    timestamptz,
    last_used_at  timestamptz
);

INSERT INTO tollgate_tokens (id, sha256, scopes, read_only, description, created_at, updated_at) VALUES
  ('demo-admin',   'bba62272949dc8ca1b1782eeceeb864e0e7a036a6abf18d29966e4518312aff4', 'scope:all',            false, 'Demo administrator',      now(), now()),
  ('demo-agent',   'a6424480817444c0d3c09b6518a047faec454c41f8fd778504998ffdfbf37262', 'scope:agent-ui',       false, 'Demo agent dashboard',    now(), now()),
  ('demo-grafana', '2e2e86069b8f6d9a668e8561249ae72bbca1647888965f5f9e18edcac0b4e141', 'scope:grafana-plugin', true,  'Demo Grafana datasource', now(), now())
ON CONFLICT (id) DO NOTHING;
