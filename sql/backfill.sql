-- The progress of `walcast backfill`, one row per slot and table: where the
-- next chunk starts (the text form of the last key read), how far the run
-- got, and when it finished. The CLI creates it on first use; it is updated
-- in the same transaction as each chunk's high watermark, so a run killed
-- at any moment resumes exactly after the last chunk in the WAL.
CREATE SCHEMA IF NOT EXISTS walcast;
CREATE TABLE IF NOT EXISTS walcast.backfill (
    slot        text        NOT NULL,
    table_name  text        NOT NULL,
    run_id      text        NOT NULL,
    filter      text        NOT NULL DEFAULT '',
    last_key    text[],
    chunks      bigint      NOT NULL DEFAULT 0,
    rows_read   bigint      NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (slot, table_name)
);
