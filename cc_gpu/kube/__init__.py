"""The only code that talks to the Kubernetes API server, and the API-server double that speaks its wire format."""
