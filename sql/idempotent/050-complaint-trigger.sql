-- The complaint trigger: once per INSERT or COPY statement, for every
-- customer with new complaints, grow complaint_count by the number of new
-- rows and rescore the profile with the active churn model, in the
-- inserting transaction. Runs as the owner: the application role may only
-- insert complaints.
CREATE OR REPLACE FUNCTION scoring._on_complaints_inserted()
RETURNS trigger
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
api.on_complaints_inserted(plpy, GD)
$python$;

CREATE OR REPLACE TRIGGER complaints_rescore
    AFTER INSERT ON public.complaints
    REFERENCING NEW TABLE AS new_complaints
    FOR EACH STATEMENT EXECUTE FUNCTION scoring._on_complaints_inserted();
