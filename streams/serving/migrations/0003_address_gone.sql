-- Retired addresses, remembered so that a late record of an address's old life (its
-- version at or below its tombstone's) does not bring the row back. Written in the same
-- transaction as the delete; dropped when a higher version (the address reborn) is
-- written, by a tombstone without a version, and by --purge-older-than.

CREATE TABLE mta_address_gone (
    address    text PRIMARY KEY,
    version    bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX mta_address_gone_deleted ON mta_address_gone (deleted_at);
