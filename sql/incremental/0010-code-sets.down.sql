DROP TABLE scoring_trusted.code_history;
DROP TABLE scoring_trusted.code_modules;
DROP TABLE scoring_trusted.code_sets;
