"""Outbound mail: notifications (templates, threading, acknowledgements, agent replies), the hooks the
pipeline calls after a delivery (notify_hook, agent_notify, SLA), and the worker that sends the relay
queue (gateway/store/relay_queue.py) through the smarthosts, DKIM-signed.
May import: gateway.config, gateway.pipeline.stages, gateway.runtime, gateway.store.
"""
