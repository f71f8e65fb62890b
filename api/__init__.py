"""The HTTP API: thin routes over the workflow client and the database."""
