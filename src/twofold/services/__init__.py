"""Use cases. Each opens its own units of work (transactions); web and CLI only call these."""
