"""Per message and per address state machines, and the delivery KPIs they add up to."""
