-- v7: SLA tracking: when an agent first answered publicly, and the escalation level reached per target.
ALTER TABLE tickets ADD COLUMN first_response_at REAL;
ALTER TABLE tickets ADD COLUMN sla_first_level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tickets ADD COLUMN sla_resolution_level INTEGER NOT NULL DEFAULT 0;
