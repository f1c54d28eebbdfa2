"""Microsoft Graph mailboxes: delta-query polling with immutable ids (client), the watcher, the delta
link kept in Redis (state)."""
