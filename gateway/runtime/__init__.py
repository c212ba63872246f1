"""Process plumbing every room may use: metrics, logging, process titles, the event loop and allocator
settings, rate-limit windows, bounded file reads, the outbound HTTP client, who runs a command.

Nothing here knows about mail or tickets.
May import: nothing of ours.
"""
