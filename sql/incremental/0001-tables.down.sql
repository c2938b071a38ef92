DROP TABLE public.complaints;
DROP TABLE public.customer_profiles;
DROP SCHEMA scoring CASCADE;
