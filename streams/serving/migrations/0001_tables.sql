-- The sink's tables, shaped after Adobe Campaign's delivery log (broadLog), address
-- (quarantine) and delivery indicators. Times are timestamptz; version is the record's
-- per-key version (a row is never replaced by a lower one).

CREATE TABLE mta_delivery_log (
    message_id        text PRIMARY KEY,
    delivery_id       text NOT NULL,
    recipient         text,
    status            text NOT NULL,
    failure_type      text,
    failure_reason    text,
    bounce_class      integer,
    rule              text,
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz,
    last_event_time   timestamptz NOT NULL,
    version           bigint NOT NULL
);

CREATE TABLE mta_address (
    address         text PRIMARY KEY,
    state           text NOT NULL,
    error_count     integer NOT NULL DEFAULT 0,
    reason          text,
    last_error_time timestamptz,
    last_event_time timestamptz NOT NULL,
    version         bigint NOT NULL
);

CREATE TABLE mta_delivery_indicators (
    delivery_id        text PRIMARY KEY,
    to_deliver         bigint NOT NULL DEFAULT 0,
    taken_into_account bigint NOT NULL DEFAULT 0,
    sent               bigint NOT NULL DEFAULT 0,
    failed             bigint NOT NULL DEFAULT 0,
    failed_hard        bigint NOT NULL DEFAULT 0,
    failed_soft        bigint NOT NULL DEFAULT 0,
    pending            bigint NOT NULL DEFAULT 0,
    bounces_errors     bigint NOT NULL DEFAULT 0,
    success_pct        double precision NOT NULL DEFAULT 0,
    last_event_time    timestamptz NOT NULL,
    version            bigint NOT NULL
);

-- The next offset to read of every partition the sink has written, committed in the same
-- transaction as the rows it read: a restarted sink resumes here.
CREATE TABLE mta_sink_offsets (
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
