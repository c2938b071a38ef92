-- Back to 0005: modules are compiled from source in every backend.
ALTER TABLE scoring.runtime_modules DROP COLUMN bytecode;
