"""The parser: raw bytes -> the immutable ParsedMessage every stage reads (MIME, very large MIME,
charsets, HTML bounds). Pure functions of the bytes, so they can run in a worker process.

May import: gateway.auth (the one From reader shared with DMARC).
"""
