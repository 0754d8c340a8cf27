"""What the operator dashboard shows, prepared as plain data: the fleet (`fleet.fleet`), one
tenant (`tenant.tenant_page`), a live canary's decision explained (`canary.panel`), and the
preview of an action's resulting split (`preview`). The pages only display these.

Every function here only reads, takes no lock, and issues a fixed number of statements whatever
the number of tenants, versions or audit events (a test counts them).
"""
