"""The tool ``telephony demo --tool`` lets the offline agent call: a Python tool, as a business
would declare one (``[[tools.python]]``), answering from a canned order book."""

from __future__ import annotations

from typing import Any

from telephony.core.function_tools import FunctionTool

ORDERS = {"A-17": {"status": "shipped", "arrives": "Tuesday"}}

LOOKUP_ORDER = FunctionTool(
    "python", "lookup_order", "Find an order by its number",
    {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]},
    "telephony.offline.demo_tools:lookup_order", timeout_s=5.0)


async def lookup_order(call: Any, order: str) -> dict[str, Any]:
    found = ORDERS.get(order)
    return {"order": order, **found} if found else {"error": f"no order {order}"}
