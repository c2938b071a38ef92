ALTER TABLE scoring.errors DROP COLUMN scorer, DROP COLUMN entity_key;
DROP SCHEMA scoring_scores CASCADE;
DROP SCHEMA scoring_hooks CASCADE;
DROP TABLE scoring.scorer_events;
DROP TABLE scoring.scorer_entities;
