"""cardbridge_cli: the `cardbridge` command-line client (runs in the user's shell process)."""
