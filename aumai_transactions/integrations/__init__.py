"""Adapters for agent frameworks, each an optional extra the core never imports.

``aumai_transactions.integrations.pydantic_ai`` (extra ``pydantic-ai``) and
``aumai_transactions.integrations.openai_agents`` (extra ``openai-agents``) turn the
actions of an :class:`~aumai_transactions.Actions` registry into tools whose every call
is a step of the open transaction in scope. Import the one you use; importing this
package imports neither framework.
"""
