"""The machinery that runs the stages: assemble.py builds them from config, worker.py claims spool
entries and writes outcomes, process.py is the worker process pool, budget.py bounds one message's
cost, spool_ops.py is what release / replay / delete may do (CLI and API alike).
May import: gateway.config, gateway.pipeline.parse, gateway.pipeline.stages, gateway.runtime, gateway.store,
relay.
"""
