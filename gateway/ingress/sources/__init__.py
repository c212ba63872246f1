"""Pulled mailboxes (``[[source]]``): one module per kind (imap, pop3, graph) behind ``base.Source``."""
