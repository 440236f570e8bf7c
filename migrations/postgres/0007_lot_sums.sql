-- Each lot's ledger sums up to a checkpoint (settings key 'ledger_checkpoint': the last ledger id
-- summed). Start-up adds the ledger rows after it to these instead of summing the whole ledger;
-- the ledger stays the audit trail. Written by the single-node server's committer between its
-- batches (never in cluster mode), so no ledger row commits below a checkpoint after it.
CREATE TABLE lot_sums (
    store_id   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    lot_id     BIGINT NOT NULL,
    expires_at BIGINT,
    on_hand    BIGINT NOT NULL,
    reserved   BIGINT NOT NULL,
    PRIMARY KEY (store_id, sku, lot_id)
);
