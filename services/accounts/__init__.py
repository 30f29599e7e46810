"""The payer-account service (个人账户): personal accounts, family mutual-aid bindings, limits, the ledger."""
