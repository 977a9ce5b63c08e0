"""`/admin`: the operator's API, behind the admin token (never a tenant key)."""
