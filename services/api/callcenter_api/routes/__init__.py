"""HTTP routes of the api, one module per resource; each is thin and calls the shared core."""
