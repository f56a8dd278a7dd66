-- What Campaign-side queries look up besides the keys: a delivery's log, addresses by
-- state (the quarantine list), and old log rows (--purge-older-than).

CREATE INDEX mta_delivery_log_delivery ON mta_delivery_log (delivery_id);
CREATE INDEX mta_delivery_log_last_event ON mta_delivery_log (last_event_time);
CREATE INDEX mta_address_state ON mta_address (state) WHERE state <> 'valid';
