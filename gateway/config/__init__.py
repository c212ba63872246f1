"""Configuration: the TOML file parsed once into frozen, typed objects; errors name the dotted key.

load.py is the root (Config, load_config); one module per section or shared parser (auth, pipeline,
relay, twoway, routing, redaction, template, threading, http, inbound, webhooks, units, schedule…).
It knows nothing of what runs: stages, SMTP, the store read their settings from it.
May import: gateway.runtime.
"""
