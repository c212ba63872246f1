"""The stages: one small class per decision (identity, bounces, automatic mail, spam, senders,
attachments, HTML, threading, commands, routing, the ticket itself) and the pure helpers they use.

core.py holds what a stage is (Inbound, Context, Verdict) and the mandatory stages.
May import: gateway.auth, gateway.config, gateway.pipeline.parse, gateway.runtime, gateway.store.
"""
