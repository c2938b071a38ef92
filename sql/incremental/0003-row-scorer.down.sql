-- Back to 0002: the functions 0002 did not have go (0002's own are restored after this).
DROP EVENT TRIGGER IF EXISTS scoring_profiles_altered;
DROP FUNCTION scoring._profiles_altered();
DROP FUNCTION scoring._install_generated_scoring(bigint);
DROP FUNCTION scoring._score_profile(bigint, bigint, text, double precision[], bigint[], boolean[], text[]);
