"""After acceptance: a spooled message becomes exactly one outcome (ticket, article, suppressed, quarantined).

parse/ reads the bytes once into an immutable model; stages/ are the named decisions, each reading that
model and its typed policy from gateway.config; runner/ claims spool entries, runs the stages in
worker processes under a budget and writes the result in one store transaction.
May import: what its three sub-packages declare.
"""
