"""The mail provider's side (Mailgun): signed delivery-failure webhooks, the suppression list, outbound
mail over authenticated SMTP, rejection replies, provider metrics and DNS checks for a sending domain.

    webhooks.py       the ASGI app Mailgun calls; signature checks are pure functions
    suppression.py    the Redis-backed list of addresses mail must not go to
    outbound.py       reply_address / message_id / send: what an application needs to send mail
    rejection.py      short replies telling a sender why their message was not handled
    mailgun_stats.py  optional collector polling Mailgun's per-domain stats API
    domain.py         MX / SPF / DKIM / tracking CNAME checks with dnspython
    metrics.py        the provider's Prometheus metrics
    errors.py         ProviderError and its subclasses
"""
