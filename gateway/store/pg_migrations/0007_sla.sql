-- v7: SLA tracking (see gateway/store/migrations/0007_sla.sql).
ALTER TABLE tickets ADD COLUMN first_response_at DOUBLE PRECISION;
ALTER TABLE tickets ADD COLUMN sla_first_level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tickets ADD COLUMN sla_resolution_level INTEGER NOT NULL DEFAULT 0;
