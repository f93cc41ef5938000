"""Everything that talks to the outside world; imports nothing of ours but its own base types."""
