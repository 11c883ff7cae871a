"""The LLM release flow and its stages: weights → prompt → build → evaluate → sign → register.

One module per stage, each a plain function; ``pipelines.llm.flow`` runs them in order (as
Prefect tasks of one flow run when the Workspace says so) and writes the ledger events.
"""
