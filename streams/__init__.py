"""Everything that touches events: schema, ingest and
dead-lettering, tiers, training-set queries, replay."""
