"""SQL side of callcenter."""
