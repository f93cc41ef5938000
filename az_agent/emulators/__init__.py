"""Stand-ins for the systems az-agent drives, faithful enough to test against and to demo.

They ship with the project (the local two-zone stack and the failover drill run them), so they
live in the package; the agent itself never imports them.
"""
