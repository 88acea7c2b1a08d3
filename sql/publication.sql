-- The publication walcast streams from, with the default names of
-- config.toml. `walcast setup` does the same from the configured
-- publication name and tables; this file is for applying it by hand.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'walcast') THEN
        CREATE PUBLICATION walcast FOR TABLE public.orders;
    END IF;
END;
$$;
