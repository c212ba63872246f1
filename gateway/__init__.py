"""ticketmx: mail in (SMTP, HTTP posts) -> durable spool -> pipeline -> tickets -> notifications, webhooks, API.

The rooms, in the order a message meets them: smtpd.py + smtp/ and ingress/ take mail in; auth/ decides
who sent it; spool.py commits it before anyone is told "accepted"; pipeline/ (parse/, stages/, runner/)
turns it into a ticket in store/; relay/ (top level), webhooks/ and http/ tell people. config/ and
runtime/ are underneath everything. At this top: app.py (the service), cli.py, contacts_cli.py.
May import: everything (nothing imports this top but __main__).
"""
