"""callcenter service."""
